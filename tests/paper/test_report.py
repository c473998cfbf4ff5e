"""The claims and the report writer: on fake results of the shapes grid (every claim decided by
the numbers given), and end to end on a two-run grid of 2-iteration train_net.py runs."""
import math
import os
import shutil
import tempfile
import time
import unittest

import retinafocal  # noqa: F401  (compat first)
from paper.claims import CLEAR_MARGIN_AP, ReportInputs, evaluate_claims, kendall_tau
from paper.imbalance import ImbalanceStats
from paper.report import write_report
from paper.reproduce import reproduce
from paper.results import RunResult, load_results
from paper.runner import LaunchOptions
from paper.table1 import build_grid

from .common import REPO_ROOT, TRAIN_NET, tiny_shapes, two_run_grid


def _analysis(neg_fraction_by_gamma):
    gammas = list(neg_fraction_by_gamma)
    return {
        "gammas": [float(g) for g in gammas], "num_images": 3, "num_positives": 10,
        "num_negatives": 1000, "num_negatives_total": 1000, "negatives_sampled": False,
        "dataset": "fake_val",
        "half_loss_fraction": {"positives": {g: 0.4 for g in gammas},
                               "negatives": dict(neg_fraction_by_gamma)},
    }  # fmt: skip


def _fake_results(grid, ap_of, diverged=(), mid_ap_of=None):
    """Results of every run of ``grid``: AP ``ap_of(name)`` at the end, ``mid_ap_of(name)``
    (default: the same) after 75% of the iterations."""
    results = {}
    for spec in grid.runs:
        ap = ap_of(spec.name)
        mid = ap if mid_ap_of is None else mid_ap_of(spec.name)
        r = RunResult(name=spec.name, fingerprint=spec.fingerprint(), ap=ap, ap50=ap + 15,
                      ap75=ap - 2, max_iter=spec.max_iter, iterations=spec.max_iter,
                      s_per_iter=0.5, wall_seconds=150.0, inference_ms=20.0,
                      loss_history=[[19, 3.0, 2.0], [39, 1.0, 0.6]],
                      evaluations=[[round(0.75 * spec.max_iter), mid], [spec.max_iter, ap]],
                      raw_first_loss=5.0, raw_max_loss=6.0, raw_max_loss_iter=3)  # fmt: skip
        if spec.name in diverged:
            r.diverged, r.nan_iter, r.ap = True, 12, math.nan
        if spec.eval_of:
            size = int(spec.name.rsplit("test", 1)[1])
            r.inference_ms = size / 10.0
        results[spec.name] = r
    return results


class TestKendallTau(unittest.TestCase):
    def test_hand_cases(self):
        self.assertEqual(kendall_tau([1, 2, 3], [10, 20, 30]), 1.0)
        self.assertEqual(kendall_tau([1, 2, 3], [3, 2, 1]), -1.0)
        self.assertAlmostEqual(kendall_tau([1, 2, 3], [1, 3, 2]), 1 / 3)
        self.assertTrue(math.isnan(kendall_tau([1], [1])))
        with self.assertRaises(ValueError):
            kendall_tau([1, 2], [1])


class TestReportOnFakeResults(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rf_report_")
        # shapes-full: make paper's grid cuts the OHEM and 1-anchor runs that two claims need.
        self.grid = build_grid("shapes-full", max_iter=100, sweep_max_iter=0)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _inputs(self, results, analysis):
        return ReportInputs(grid=self.grid, results=results, output_dir=self.tmp,
                            runs_dir=os.path.join(self.tmp, "runs"), loss_analysis=analysis,
                            failures={"figure4": "x"} if analysis is None else {})  # fmt: skip

    def test_every_claim_reproduced(self):
        def ap(name):
            if name.startswith("ce_a0p5_noprior"):
                return 0.2
            if name.startswith("fl_g2_a0p25"):
                return 20.0
            if name.startswith("ohem"):
                return 15.0
            if name == "fl_anchors_s1_r1":
                return 14.0
            if name.startswith("ce"):
                return 12.0 + (0.5 if name == "ce_a0p75" else 0.0)
            return 16.0

        results = _fake_results(self.grid, ap)
        nodet = results["ohem_b128_r3_n0p5"]  # nothing above the score threshold: AP 0
        nodet.no_detections, nodet.ap, nodet.ap50, nodet.ap75 = True, 0.0, 0.0, 0.0
        inputs = self._inputs(results, _analysis({"0": 0.3, "0.5": 0.2, "1": 0.1, "2": 0.04}))
        claims = {c.key: c for c in evaluate_claims(inputs)}
        self.assertEqual(set(claims), {"init", "fl_vs_ce", "fl_vs_ohem", "anchors", "figure4"})
        for key, claim in claims.items():
            self.assertIs(claim.holds, True, f"{key}: {claim.ours}")
        self.assertIn("+7.5 AP", claims["fl_vs_ce"].ours)  # 20.0 - 12.5
        self.assertIn("alpha = 0.75", claims["fl_vs_ce"].ours)

        path = write_report(inputs)
        with open(path) as f:
            text = f.read()
        for title in ("Section 5.1", "Table 1a", "Table 1b", "Table 1c", "Table 1d", "Table 1e",
                      "Figure 1", "Figure 4", "## Claims"):  # fmt: skip
            self.assertIn(title, text)
        self.assertNotIn("not reproduced", text)
        # Our numbers next to the paper's, with the citation.
        self.assertIn("| alpha = 0.75 | 12.5 | 27.5 | 10.5 |", text)
        self.assertIn("| 31.1 | 49.4 | 33.0 |", text)
        self.assertIn("Table 1a", text)
        self.assertIn("arXiv:1708.02002", text)
        self.assertIn("fails (AP < 1)", text)  # the no-prior row
        self.assertRegex(text, r"\| 0\.0 \| 0\.0 \| 0\.0 \| [^|]+ \| fails \(no detection above "
                               r"the score threshold\)")  # fmt: skip
        self.assertIn("| 2 | 40% | 4% |", text)  # Figure 4: gamma, positives, negatives
        for png in ("figure1.png", "init_losses.png", "table1e_speed_accuracy.png"):
            self.assertTrue(os.path.isfile(os.path.join(self.tmp, png)), png)
        self.assertIn("Ordering by AP", text)
        with open(os.path.join(self.tmp, "HEADLINE.md")) as f:
            headline = f.read()
        self.assertIn("reproduced", headline)
        self.assertIn("](figure1.png)", headline)
        inputs.headline_dir = os.path.dirname(self.tmp)  # links from the README's directory
        write_report(inputs)
        with open(os.path.join(self.tmp, "HEADLINE.md")) as f:
            self.assertIn(f"]({os.path.basename(self.tmp)}/figure1.png)", f.read())

    def test_claims_that_do_not_reproduce_say_so_with_numbers(self):
        def ap(name):
            if name.startswith("ohem"):
                return 21.0  # OHEM beats FL
            if name == "fl_anchors_s1_r1":
                return 25.0  # 1 anchor beats 9
            if name.startswith("ce"):
                return 19.5  # within the margin of FL
            return 20.0

        results = _fake_results(self.grid, ap)  # no-prior CE trains (19.5 AP)
        inputs = self._inputs(results, _analysis({"0": 0.3, "2": 0.25}))
        claims = {c.key: c for c in evaluate_claims(inputs)}
        for key in ("init", "fl_vs_ce", "fl_vs_ohem", "anchors", "figure4"):
            self.assertIs(claims[key].holds, False, key)
        self.assertIn("+0.5 AP", claims["fl_vs_ce"].ours)
        self.assertLess(0.5, CLEAR_MARGIN_AP)
        self.assertIn("-1.0 AP", claims["fl_vs_ohem"].ours)
        self.assertIn("-5.0 AP", claims["anchors"].ours)
        text = open(write_report(inputs)).read()
        self.assertIn("**not reproduced**", text)
        self.assertIn("first loss 5, largest 6, single iterations", text)

    def test_diverged_and_missing_runs(self):
        results = _fake_results(self.grid, lambda n: 10.0, diverged=("ce_a0p5_noprior",))
        del results["ohem_b128_r3_n0p5"]
        inputs = self._inputs(results, None)
        inputs.failures["ohem_b128_r3_n0p5"] = "exit code 1: boom"
        claims = {c.key: c for c in evaluate_claims(inputs)}
        self.assertIs(claims["init"].holds, True)
        self.assertIn("diverged", claims["init"].ours)
        self.assertNotIn("figure4", claims)
        text = open(write_report(inputs)).read()
        self.assertIn("**diverged** (non-finite loss at iter 12)", text)
        self.assertIn("no result: exit code 1: boom", text)
        self.assertIn("Not computed", text)


class TestSweepReport(unittest.TestCase):
    """The central claims on every level, the convergence rule, the imbalance table and the
    sweep figures, on fake results."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rf_sweep_report_")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.grid = build_grid("shapes", max_iter=100, sweep_max_iter=80)
        terms = {"shapes": (5, 65000), "sparse-20": (20, 21000), "sparse-80": (80, 21000)}
        self.imbalance = {
            key: ImbalanceStats(f"{key}_train", 2000, k, 2000 * 3024, positives, 2000 * 17,
                                4000) for key, (k, positives) in terms.items()
        }  # fmt: skip

    def test_verdicts_per_level_and_flags(self):
        self.assertEqual([lvl.key for lvl in self.grid.levels],
                         ["shapes", "sparse-20", "sparse-80"])  # fmt: skip

        def ap(name):
            table = {"s80_ce_a0p5_noprior": 0.3, "s80_ce_a0p5": 10.0, "s80_ce_a0p75": 12.0,
                     "s80_fl_g2_a0p25": 15.0, "s80_fl_g2_a0p5": 14.0,
                     "s20_fl_g2_a0p25": 10.0, "s20_ce_a0p5": 12.0}
            return table.get(name, 11.0)  # fmt: skip

        def mid_ap(name):
            return 5.0 if name == "s20_fl_g2_a0p25" else ap(name)  # 5 -> 10: not converged

        results = _fake_results(self.grid, ap, mid_ap_of=mid_ap)
        results["s80_ce_a0p5_noprior"].raw_first_loss = 7800.0
        inputs = ReportInputs(grid=self.grid, results=results, output_dir=self.tmp,
                              runs_dir=os.path.join(self.tmp, "runs"), loss_analysis=None,
                              imbalance=self.imbalance)  # fmt: skip
        claims = {(c.key, c.level): c for c in evaluate_claims(inputs)}
        for level in ("shapes", "sparse-20", "sparse-80"):
            self.assertIn(("init", level), claims)
            self.assertIn(("fl_vs_ce", level), claims)
        self.assertIs(claims[("init", "sparse-80")].holds, True)
        self.assertIs(claims[("fl_vs_ce", "sparse-80")].holds, True)
        self.assertIn("+3.0 AP", claims[("fl_vs_ce", "sparse-80")].ours)  # 15 - 12
        self.assertIs(claims[("fl_vs_ce", "sparse-20")].holds, False)
        self.assertIn("-2.0 AP", claims[("fl_vs_ce", "sparse-20")].ours)  # 10 - 12
        self.assertIs(claims[("init", "sparse-20")].holds, False)  # no-prior CE trains (11 AP)
        self.assertEqual(claims[("fl_vs_ce", "sparse-80")].flags, [])
        # The FL run of sparse-20 gained 6 AP in its last quarter: the verdicts that use it say
        # so (the only FL run there, alpha .25).
        flags = claims[("init", "sparse-20")].flags
        self.assertEqual(len(flags), 1)
        self.assertIn("s20_fl_g2_a0p25", flags[0])
        self.assertIn("5.0 -> 10.0", flags[0])

        text = open(write_report(inputs)).read()
        self.assertIn("binary terms per positive", text)
        # (3024 anchors - 17 ignored) x 80 classes / 10.5 positives = 22,910 terms.
        self.assertIn("| sparse-80 | `sparse-80_train` | 2,000 | 3,024 | 80 | 2.00 | 10.50 | "
                      "17.0 | **22,910** |", text)  # fmt: skip
        self.assertIn("first loss 7800, largest 6, single iterations", text)
        self.assertIn("within 1 AP of its AP after 75% of its iterations", text)
        self.assertIn("**no** (5.0 -> 10.0)", text)
        self.assertIn("7800 / 6", text)  # first / largest single-iteration loss
        for png in ("sweep_fl_margin.png", "sweep_noprior_loss.png"):
            self.assertTrue(os.path.isfile(os.path.join(self.tmp, png)), png)
            self.assertIn(f"]({png})", text)
        headline = open(os.path.join(self.tmp, "HEADLINE.md")).read()
        self.assertIn("sparse-80 (22,910)", headline)
        self.assertIn("sweep_fl_margin.png", headline)

    def test_runs_without_a_75_percent_evaluation_are_not_checked(self):
        results = _fake_results(self.grid, lambda n: 11.0)
        for r in results.values():
            r.evaluations = [[r.max_iter, r.ap]]
        inputs = ReportInputs(grid=self.grid, results=results, output_dir=self.tmp,
                              runs_dir=os.path.join(self.tmp, "runs"))  # fmt: skip
        claims = evaluate_claims(inputs)
        self.assertTrue(all("not checked (no evaluation at 75%)" in " ".join(c.flags)
                            for c in claims if c.key == "fl_vs_ce"))  # fmt: skip
        text = open(write_report(inputs)).read()
        self.assertIn("| sparse-80 | not measured |", text)


class TestReportEndToEnd(unittest.TestCase):
    """Two 2-iteration train_net.py runs on a tiny dataset, Figure 4 and the report; then a
    second call that finds both runs done."""

    def test_two_run_grid(self):
        tmp = tempfile.mkdtemp(prefix="rf_paper_e2e_")
        self.addCleanup(shutil.rmtree, tmp, True)
        grid = two_run_grid(tiny_shapes(os.path.join(tmp, "data")), iters=2)
        out = os.path.join(tmp, "report")
        launch = LaunchOptions(train_net=TRAIN_NET, threads=2, cwd=REPO_ROOT)
        first = reproduce(grid, out, launch, loss_num_images=2, command="test")
        self.assertEqual(first["failures"], {})
        for name in ("fl", "ce"):
            r = first["results"][name]
            self.assertEqual(r.iterations, 2)
            self.assertFalse(r.diverged)
            self.assertTrue(all(math.isfinite(h[1]) for h in r.loss_history))
            self.assertTrue(math.isfinite(r.ap), f"{name}: AP {r.ap}")
            self.assertTrue(math.isfinite(r.inference_ms))
        with open(first["report"]) as f:
            text = f.read()
        for title in ("Section 5.1", "Table 1a", "Table 1b", "Figure 1", "Figure 4"):
            self.assertIn(title, text)
        self.assertIn("![Figure 4](figure4_loss_cdf.png)", text)
        self.assertEqual(set(load_results(grid, os.path.join(out, "runs"))), {"fl", "ce"})

        result_file = os.path.join(out, "runs", "fl", "paper_result.json")
        stamp = os.path.getmtime(result_file)
        time.sleep(0.01)
        second = reproduce(grid, out, launch, loss_num_images=2, command="test")
        self.assertEqual(os.path.getmtime(result_file), stamp)  # not run again
        self.assertEqual(second["results"]["fl"].ap, first["results"]["fl"].ap)


if __name__ == "__main__":
    unittest.main()
