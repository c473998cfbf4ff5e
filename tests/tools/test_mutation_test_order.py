"""tools/mutation_test_order.py: in mutmut's clean run and its mutants' runs, pytest runs the
given tests fastest first by mutmut's measured durations; other runs keep the given order."""
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
STATS = {"duration_by_test": DURATIONS}
GIVEN = ["test_a.py::test_untimed", "test_a.py::test_slow", "test_a.py::test_mid",
         "test_a.py::test_fast"]  # fmt: skip
GIVEN_ORDER = ["untimed", "slow", "mid", "fast"]


class TestPieces(unittest.TestCase):
    def test_only_the_clean_run_and_mutant_runs_are_sorted(self):
        self.assertTrue(order.sorts_tests({"MUTANT_UNDER_TEST": MUTANT}))
        self.assertTrue(order.sorts_tests({"MUTANT_UNDER_TEST": ""}))
        for phase in ("stats", "fail", "list_all_tests", "mutant_generation"):
            self.assertFalse(order.sorts_tests({"MUTANT_UNDER_TEST": phase}), phase)
        self.assertFalse(order.sorts_tests({}))

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
    """Real pytest sessions given the tests in no useful order, as mutmut's fork server does."""

    def run_pytest(self, mutant_under_test: str, stats: str = json.dumps(STATS), rc: int = 0):
        """The order the tests ran in; ``stats`` is the text of mutmut-stats.json ("": none)."""
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "pytest.ini").write_text("[pytest]\n")  # no ini file above tmp is read
            Path(tmp, "test_a.py").write_text(TEST_FILE)
            if stats:
                Path(tmp, order.STATS_FILE).write_text(stats)
            log = Path(tmp, "order.log")
            log.write_text("")
            env = dict(os.environ, MUTANT_UNDER_TEST=mutant_under_test, ORDER_LOG=str(log))
            # the plugin is imported as tools.mutation_test_order, as mutmut's workers do
            env["PYTHONPATH"] = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir=.",
                   "-p", "tools.mutation_test_order", *GIVEN]  # fmt: skip
            done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            self.output = done.stdout + done.stderr
            self.assertEqual(done.returncode, rc, self.output)
            return log.read_text().split()

    def test_mutant_and_clean_runs_go_fastest_first(self):
        for mutant_under_test in (MUTANT, ""):
            with self.subTest(MUTANT_UNDER_TEST=mutant_under_test):
                ran = self.run_pytest(mutant_under_test)
                self.assertEqual(ran, ["fast", "mid", "slow", "untimed"])

    def test_other_runs_and_runs_without_stats_keep_the_given_order(self):
        self.assertEqual(self.run_pytest("stats"), GIVEN_ORDER)
        self.assertEqual(self.run_pytest("fail"), GIVEN_ORDER)
        self.assertEqual(self.run_pytest(MUTANT, stats=""), GIVEN_ORDER)

    def test_malformed_stats_stop_the_clean_run_but_no_mutant_counts_as_killed(self):
        self.assertEqual(self.run_pytest("", stats="{not json", rc=3), [])
        self.assertIn(f"{order.STATS_FILE}: no readable 'duration_by_test'", self.output)
        self.assertEqual(self.run_pytest(MUTANT, stats="{not json"), GIVEN_ORDER)


if __name__ == "__main__":
    unittest.main()
