"""tools/mutation_test_order.py: inside a mutmut worker, pytest runs the given tests fastest first
by mutmut's measured durations; in every other run it keeps the order it was given."""
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path
from types import SimpleNamespace

from .common import REPO, load_script

order = load_script("mutation_test_order")
MUTANT = "retinafocal.losses._terms.x\u01c1FocalTerms\u01c1__call____mutmut_12"

TEST_FILE = """
import os


def _ran(name):
    with open(os.environ["ORDER_LOG"], "a") as f:
        f.write(name + "\\n")


def test_slow():
    _ran("slow")


def test_fast():
    _ran("fast")


def test_mid():
    _ran("mid")


def test_untimed():
    _ran("untimed")
"""
DURATIONS = {"test_a.py::test_slow": 2.0, "test_a.py::test_fast": 0.01, "test_a.py::test_mid": 0.5}
GIVEN = ["test_a.py::test_untimed", "test_a.py::test_slow", "test_a.py::test_mid",
         "test_a.py::test_fast"]  # fmt: skip


class TestPieces(unittest.TestCase):
    def test_only_a_mutant_name_counts_as_a_mutant_run(self):
        self.assertTrue(order.under_mutant({"MUTANT_UNDER_TEST": MUTANT}))
        for phase in ("", "stats", "fail", "list_all_tests", "mutant_generation"):
            self.assertFalse(order.under_mutant({"MUTANT_UNDER_TEST": phase}), phase)
        self.assertFalse(order.under_mutant({}))

    def test_sorted_by_duration_untimed_last_and_ties_keep_their_order(self):
        items = [SimpleNamespace(nodeid=n) for n in ["u1", "b", "a1", "u2", "c", "a2"]]
        durations = {"a1": 0.1, "a2": 0.1, "b": 0.5, "c": 3.0}
        got = [i.nodeid for i in order.fastest_first(items, durations)]
        self.assertEqual(got, ["a1", "a2", "b", "c", "u1", "u2"])
        self.assertEqual(order.fastest_first([], durations), [])

    def test_stats_file_absent_read_and_malformed(self):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            self.assertEqual(order.load_durations(root), {})
            stats = root / order.STATS_FILE
            stats.write_text(json.dumps({"duration_by_test": {"t.py::a": 1, "t.py::b": 0.25}}))
            self.assertEqual(order.load_durations(root), {"t.py::a": 1.0, "t.py::b": 0.25})
            no_mapping = [{"tests": {}}, {"duration_by_test": []}]
            for text in ["{not json"] + [json.dumps(m) for m in no_mapping]:
                stats.write_text(text)
                with self.assertRaises(ValueError) as caught:
                    order.load_durations(root)
                self.assertIn(str(stats), str(caught.exception))

    def test_make_mutation_loads_the_plugin(self):
        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            args = tomllib.load(f)["tool"]["mutmut"]["pytest_add_cli_args"]
        pairs = list(zip(args, args[1:]))
        self.assertIn(("-p", "tools.mutation_test_order"), pairs)


class TestInPytest(unittest.TestCase):
    """A real pytest session given the tests slowest-first-ish, as mutmut's fork server does."""

    def run_pytest(self, mutant_under_test: str, stats: bool = True):
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "pytest.ini").write_text("[pytest]\n")  # no ini file above tmp is read
            Path(tmp, "test_a.py").write_text(TEST_FILE)
            if stats:
                Path(tmp, order.STATS_FILE).write_text(json.dumps({"duration_by_test": DURATIONS}))
            log = Path(tmp, "order.log")
            env = dict(os.environ, MUTANT_UNDER_TEST=mutant_under_test, ORDER_LOG=str(log))
            # the plugin is imported as tools.mutation_test_order, as mutmut's workers do
            env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir=.",
                   "-p", "tools.mutation_test_order", *GIVEN]  # fmt: skip
            done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            return log.read_text().split()

    def test_a_mutant_run_goes_fastest_first(self):
        self.assertEqual(self.run_pytest(MUTANT), ["fast", "mid", "slow", "untimed"])

    def test_other_runs_keep_the_given_order(self):
        given = ["untimed", "slow", "mid", "fast"]
        self.assertEqual(self.run_pytest("stats"), given)
        self.assertEqual(self.run_pytest(""), given)
        self.assertEqual(self.run_pytest(MUTANT, stats=False), given)


if __name__ == "__main__":
    unittest.main()
