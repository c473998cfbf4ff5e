"""tools/mutation_report.py: equivalent mutants are recognised by function and change (not by
mutmut's number), stale entries are reported, and the score counts what it says."""
import os
import tempfile
import unittest

from .common import REPO, load_script

report = load_script("mutation_report")
SEP = "\u01c1"  # mutmut's class separator in mutant names


def mutant(key, code, removed=(), added=(), path="retinafocal/losses/ohem.py"):
    return report.Mutant(key, path, code, tuple(removed), tuple(added))


class TestMutationReport(unittest.TestCase):
    def test_function_names_from_mutmut_keys(self):
        self.assertEqual(mutant("retinafocal.losses.ohem.x_ohem_select__mutmut_12", 0).function,
                         "retinafocal.losses.ohem.ohem_select")  # fmt: skip
        key = f"retinafocal.losses.ohem.x{SEP}OHEMLoss{SEP}select__mutmut_3"
        self.assertEqual(mutant(key, 0).function, "retinafocal.losses.ohem.OHEMLoss.select")

    def test_statuses(self):
        codes = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", -24: "timeout",
                 None: "not checked", -11: "other (exit -11)"}  # fmt: skip
        for code, status in codes.items():
            self.assertEqual(mutant("m.x_f__mutmut_1", code).status, status, code)

    def test_equivalents_match_by_function_and_change_only(self):
        entry = report.Equivalent("retinafocal.losses.ohem.ohem_select", ("m = min(n, 8 * k)",),
                                  ("m = min(n, 9 * k)",), "only the speed changes")  # fmt: skip
        same = mutant("retinafocal.losses.ohem.x_ohem_select__mutmut_40", 0,
                      ["m = min(n, 8 * k)"], ["m = min(n, 9 * k)"])  # fmt: skip
        other_change = mutant("retinafocal.losses.ohem.x_ohem_select__mutmut_41", 0,
                              ["m = min(n, 8 * k)"], ["m = min(n, 8 / k)"])  # fmt: skip
        other_function = mutant("retinafocal.losses.ohem.x__top__mutmut_2", 0,
                                ["m = min(n, 8 * k)"], ["m = min(n, 9 * k)"])  # fmt: skip
        killed = mutant("retinafocal.losses.ohem.x_ohem_select__mutmut_7", 1,
                        ["m = min(n, 8 * k)"], ["m = min(n, 9 * k)"])  # fmt: skip
        mutants = [same, other_change, other_function, killed]
        matched = report.match_equivalents(mutants, [entry])
        self.assertEqual(list(matched), [same.key])
        rows = report.score_rows(mutants, matched)
        name, counts, score = rows[-1]
        self.assertEqual(name, "total")
        self.assertEqual((counts["equivalent"], counts["survived"], counts["killed"]), (1, 2, 1))
        self.assertAlmostEqual(score, 1 / 3)

    def test_checked_in_list_is_well_formed(self):
        entries = report.load_equivalents()
        for e in entries:
            self.assertTrue(e.function.startswith("retinafocal."), e.function)
            self.assertTrue(e.reason and e.reason != "TODO", e.function)
            self.assertTrue(e.removed or e.added, e.function)
        keys = [(e.function, e.removed, e.added) for e in entries]
        self.assertEqual(len(keys), len(set(keys)), "an entry is listed twice")

    def test_malformed_entry_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "eq.toml")
            with open(path, "w") as f:
                f.write('[[equivalent]]\nfunction = "f"\nremoved = []\nadded = []\n')
            with self.assertRaisesRegex(ValueError, r"eq.toml: entry 1 lacks \['reason'\]"):
                report.load_equivalents(path)

    def test_unmutated_functions_are_the_decorated_ones(self):
        names = dict(report.unmutated_functions(["retinafocal/modeling/retinanet.py"]))
        self.assertIn("retinafocal.modeling.retinanet.FocalRetinaNet.__init__", names)
        self.assertNotIn("retinafocal.modeling.retinanet.FocalRetinaNet.from_config", names)
        self.assertNotIn("retinafocal.modeling.retinanet.FocalRetinaNet.losses", names)

    def test_scope_comes_from_pyproject_globs(self):
        files = report.mutated_files(["retinafocal/losses/*", "retinafocal/checkpoint.py"], REPO)
        self.assertIn("retinafocal/losses/ohem.py", files)
        self.assertIn("retinafocal/checkpoint.py", files)
        self.assertNotIn("retinafocal/compat.py", files)


if __name__ == "__main__":
    unittest.main()
