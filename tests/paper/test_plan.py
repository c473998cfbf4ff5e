"""The --plan time estimate: hand-computed run costs, and the make paper grid's total."""
import unittest

import retinafocal  # noqa: F401  (compat first)
from paper.grid import Grid, Level, Row, RunSpec
from paper.plan import PLAN_FIXED_S, estimate_seconds, plan_text, run_seconds
from paper.runner import LaunchOptions
from paper.table1 import build_grid

from .common import TRAIN_NET


class TestRunSeconds(unittest.TestCase):
    def test_hand_computed_costs(self):
        # 10 s start-up + 250 x 0.4 s + 2 evaluations x 200 images x 0.03 s.
        table1 = RunSpec("a", "c.yaml", max_iter=250)
        self.assertAlmostEqual(run_seconds(table1, 200), 10 + 100 + 12)
        # 80 classes: 0.4 + 75 x 0.0027 = 0.6025 s/iter; 2 x 500 images.
        s80 = RunSpec("b", "c.yaml", ("MODEL.RETINANET.NUM_CLASSES", "80"), max_iter=600)
        self.assertAlmostEqual(run_seconds(s80, 500), 10 + 600 * 0.6025 + 30)
        # Fewer classes than the recipe's are not cheaper per iteration.
        s2 = RunSpec("c", "c.yaml", ("MODEL.RETINANET.NUM_CLASSES", "2"), max_iter=100)
        self.assertAlmostEqual(run_seconds(s2, 0), 10 + 40)
        # An evaluation-only run: start-up and one evaluation.
        evaluation = RunSpec("d", "c.yaml", eval_of="a")
        self.assertAlmostEqual(run_seconds(evaluation, 200), 10 + 6)

    def test_sweep_runs_are_costed_on_the_sweep_validation_set(self):
        runs = [RunSpec("t", "c.yaml", max_iter=100), RunSpec("s", "c.yaml", max_iter=100)]
        grid = Grid("g", runs, [Row("sweep", "s", "x", {"level": "l"})],
                    levels=[Level("l", "l", measure_run="s")])
        # Both 10 + 40 s of training; "t" on 200 images, "s" (a sweep row's run) on 500.
        self.assertAlmostEqual(estimate_seconds(grid), PLAN_FIXED_S + (50 + 12) + (50 + 30))


class TestMakePaperPlan(unittest.TestCase):
    def test_make_paper_grid(self):
        grid = build_grid("shapes")
        sweep = [s for s in grid.runs if s.name.split("_")[0] in ("s5", "s20", "s80")]
        self.assertEqual(len(sweep), 8)  # the 5-class level is cut (shapes-full has it)
        self.assertEqual(sum(not s.eval_only for s in grid.runs), 12)
        # 3 x s20 (304.3 s) + 5 x s80 (401.5 s) + 4 x 122 s + 4 x 16 s + 120 s.
        expected = 3 * (10 + 600 * (0.4 + 15 * 0.0027) + 30) + 5 * 401.5
        expected += 4 * 122 + 4 * 16 + PLAN_FIXED_S
        self.assertAlmostEqual(estimate_seconds(grid), expected)
        launch = LaunchOptions(train_net=TRAIN_NET, threads=2)
        text = plan_text(grid, launch)
        self.assertIn("16 runs (12 training, of which 8 in the imbalance sweep; 4 "
                      f"evaluation-only). Estimate on 2 idle CPU cores: "
                      f"{-(-expected // 60):.0f} min", text)  # fmt: skip
        self.assertIn("s80_fl_g2_a0p5: focal loss, gamma 2, alpha 0.5", text)


if __name__ == "__main__":
    unittest.main()
