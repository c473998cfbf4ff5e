"""The ablation grids: structure, shared runs, and every run's overrides valid for its config."""
import os
import unittest

import retinafocal  # noqa: F401  (compat first)
from detectron2.config import get_cfg

from paper.grid import SECTIONS, Grid, Level, Row, RunSpec, anchor_sizes, run_name
from paper.sweep import CE_ALPHAS, EXTRA_GAMMAS, FL_ALPHAS, SWEEP_MAX_ITER
from paper.table1 import build_grid
from retinafocal import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides

from .common import REPO_ROOT


def _merged(spec: RunSpec):
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, os.path.join(REPO_ROOT, spec.config_file))
    merge_yacs_overrides(cfg, list(spec.opts) + ["SEED", str(spec.seed)])
    return cfg


class TestHelpers(unittest.TestCase):
    def test_anchor_sizes(self):
        self.assertEqual(anchor_sizes([12], 1), [[12.0]])
        sizes = anchor_sizes([12, 24], 2)
        self.assertAlmostEqual(sizes[0][1], 12 * 2**0.5)
        self.assertAlmostEqual(sizes[1][1], 24 * 2**0.5)
        three = anchor_sizes([32], 3)[0]
        self.assertAlmostEqual(three[2] / three[0], 2 ** (2 / 3))
        with self.assertRaises(ValueError):
            anchor_sizes([32], 0)

    def test_run_name(self):
        self.assertEqual(run_name("fl", g=2.0, a=0.25), "fl_g2_a0p25")
        self.assertEqual(run_name("ce", a=0.999), "ce_a0p999")

    def test_fingerprint_follows_the_settings(self):
        a = RunSpec("x", "c.yaml", ("SOLVER.MAX_ITER", "10"), max_iter=10)
        self.assertEqual(a.fingerprint(), RunSpec("x", "c.yaml", ("SOLVER.MAX_ITER", "10"),
                                                  max_iter=10, description="other").fingerprint())
        self.assertNotEqual(a.fingerprint(), RunSpec("x", "c.yaml", ("SOLVER.MAX_ITER", "11"),
                                                      max_iter=10).fingerprint())
        self.assertNotEqual(a.fingerprint(), RunSpec("x", "c.yaml", ("SOLVER.MAX_ITER", "10"),
                                                     max_iter=10, seed=1).fingerprint())

    def test_invalid_grids(self):
        run = RunSpec("a", "c.yaml")
        with self.assertRaisesRegex(ValueError, "unknown run 'b'"):
            Grid("g", [run], [Row("1a", "b", "x")])
        with self.assertRaisesRegex(ValueError, "unknown section"):
            Grid("g", [run], [Row("9z", "a", "x")])
        with self.assertRaisesRegex(ValueError, "duplicate"):
            Grid("g", [run, run], [])
        with self.assertRaisesRegex(ValueError, "not a training run listed before"):
            Grid("g", [RunSpec("e", "c.yaml", eval_of="a"), run], [])
        with self.assertRaisesRegex(ValueError, "KEY VALUE"):
            RunSpec("a", "c.yaml", ("ONLY_A_KEY",))
        with self.assertRaisesRegex(ValueError, "unknown grid"):
            build_grid("imagenet")


class TestShapesGrid(unittest.TestCase):
    def setUp(self):
        self.grid = build_grid("shapes", max_iter=40)

    def test_every_section_has_rows(self):
        for section in SECTIONS:
            self.assertTrue(self.grid.rows_of(section), section)

    def test_focal_loss_run_is_shared(self):
        fl = self.grid.loss_analysis_run
        self.assertEqual(fl, "fl_g2_a0p25")
        sections = {row.section for row in self.grid.rows if row.run == fl}
        self.assertEqual(sections, set(SECTIONS) - {"1a", "sweep"})  # 1a is CE only

    def test_subsets_and_paper_rows(self):
        alphas = [r.params["alpha"] for r in self.grid.rows_of("1a")]
        self.assertEqual(alphas, [0.5, 0.75])
        self.assertTrue(all(r.paper is not None for s in ("1a", "1b", "1c", "1d", "1e")
                            for r in self.grid.rows_of(s)))  # fmt: skip
        gammas = {r.params["gamma"] for r in self.grid.rows_of("1b")}
        self.assertEqual(gammas, {0.0, 2.0})
        # make paper keeps the FL run's rows of 1c and 1d; their other runs are cut.
        anchors = {(r.params["scales"], r.params["ratios"]) for r in self.grid.rows_of("1c")}
        self.assertEqual(anchors, {(3, 3)})
        methods = [r.params["method"] for r in self.grid.rows_of("1d")]
        self.assertEqual(methods, ["FL"])
        # The rows cut for the sweep's time say so, and are in shapes-full.
        for section in ("1a", "1b", "1c", "1d"):
            self.assertRegex(self.grid.notes[section], r"(?i)cut to make room for", section)
        cut = {"ce_a0p25", "ce_a0p99", "fl_g2_a0p5", "fl_g0p5_a0p5", "fl_g1_a0p25",
               "fl_g5_a0p25", "ohem_b128_r0_n0p5", "ohem_b512_r0_n0p5", "ohem_b128_r3_n0p5",
               "fl_anchors_s1_r1"}  # fmt: skip
        self.assertFalse(cut & {spec.name for spec in self.grid.runs})
        full = {spec.name for spec in build_grid("shapes-full", max_iter=40).runs}
        self.assertLessEqual(cut, full)
        sizes = [r.params["size"] for r in self.grid.rows_of("1e")]
        self.assertEqual(sizes, [64, 80, 96, 112, 128])

    def test_every_training_run_builds_its_model(self):
        """The overrides fit the recipe (e.g. one anchor size list per head level)."""
        from detectron2.modeling import build_model

        for spec in self.grid.runs:
            if spec.eval_only:
                continue
            with self.subTest(run=spec.name):
                cfg = _merged(spec)
                cfg.MODEL.DEVICE = "cpu"
                model = build_model(cfg)
                anchors = model.anchor_generator.num_cell_anchors
                self.assertEqual(len(anchors), len(cfg.MODEL.RETINANET.IN_FEATURES))

    def test_recipe_facts_are_read_from_the_config(self):
        # 128 px on P3-P5 (strides 8, 16, 32): (16^2 + 8^2 + 4^2) positions x 9 anchors.
        self.assertRegex(self.grid.notes["init"], r"COCO: 3024 anchors x 5 classes")
        self.assertRegex(self.grid.notes["1d"], r" 4\.2% and 17% of an image's 3024 anchors")
        self.assertIn("(12, 24, 48 px)", self.grid.notes["1c"])
        self.assertIn("instead of the recipe's 1000", self.grid.schedule)
        # Warm-up keeps the recipe's share: 100 of 1000 iterations -> 4 of 40.
        self.assertEqual(_merged(self.grid.run("fl_g2_a0p25")).SOLVER.WARMUP_ITERS, 4)

    def test_full_grid_has_every_paper_row(self):
        full = build_grid("shapes-full", max_iter=40)
        self.assertEqual(len(full.rows_of("1a")), 7)
        self.assertEqual(len(full.rows_of("1c")), 7)
        self.assertEqual(len(full.rows_of("1d")), 10)

    def test_overrides_reach_the_config(self):
        for spec in self.grid.runs:
            with self.subTest(run=spec.name):
                cfg = _merged(spec)
                self.assertEqual(cfg.MODEL.META_ARCHITECTURE, "FocalRetinaNet")
                sweep = spec.name.split("_")[0] in ("s5", "s20", "s80")
                max_iter = SWEEP_MAX_ITER if sweep else 40
                self.assertEqual(cfg.SOLVER.MAX_ITER, max_iter)
                self.assertEqual(spec.max_iter, 0 if spec.eval_only else max_iter)
                # Every training run is also evaluated after 75% of its iterations.
                if not spec.eval_only:
                    self.assertEqual(cfg.TEST.EVAL_PERIOD, round(0.75 * max_iter))
                self.assertEqual(cfg.SEED, 0)
        cfg = _merged(self.grid.run("ce_a0p5_noprior"))
        self.assertEqual(cfg.MODEL.RETINANET.PRIOR_PROB, 0.5)
        self.assertEqual(cfg.MODEL.RETINAFOCAL.LOSS.NAME, "BalancedCELoss")
        # The CE runs set only what BalancedCELoss reads (gamma is 0 by construction).
        for spec in self.grid.runs:
            if spec.name.startswith("ce"):
                self.assertNotIn("MODEL.RETINANET.FOCAL_LOSS_GAMMA", spec.opts[::2], spec.name)
        full = build_grid("shapes-full", max_iter=40)  # make paper cuts these two runs
        cfg = _merged(full.run("fl_anchors_s1_r1"))
        self.assertEqual(cfg.MODEL.ANCHOR_GENERATOR.SIZES, [[12.0], [24.0], [48.0]])
        self.assertEqual(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS, [[1.0]])
        cfg = _merged(full.run("ohem_b128_r3_n0p5"))
        self.assertEqual(cfg.MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE, 128)
        self.assertEqual(cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO, 3.0)
        test64 = self.grid.run("fl_g2_a0p25_test64")
        self.assertEqual(test64.eval_of, "fl_g2_a0p25")
        self.assertEqual(_merged(test64).INPUT.MIN_SIZE_TEST, 64)


class TestSweep(unittest.TestCase):
    def setUp(self):
        self.grid = build_grid("shapes", max_iter=40, sweep_max_iter=60)

    def test_levels_and_their_runs(self):
        # make paper's grid: the 5-class level is cut for the time budget (shapes-full has it).
        self.assertEqual([(lvl.key, lvl.sections) for lvl in self.grid.levels], [
            ("shapes", ("init", "1a", "1b")), ("sparse-20", ("sweep",)),
            ("sparse-80", ("sweep",))])  # fmt: skip
        self.assertEqual(self.grid.levels[0].measure_run, "fl_g2_a0p25")
        for level, k in zip(self.grid.levels[1:], (20, 80)):
            rows = [r for r in self.grid.rows_of("sweep") if r.params["level"] == level.key]
            losses = sorted((r.params["loss"], r.params["alpha"], r.params["gamma"],
                             r.params["prior"]) for r in rows)  # fmt: skip
            expected = [("CE", 0.5, 0.0, 0.01), ("CE", 0.5, 0.0, 0.5), ("FL", 0.25, 2.0, 0.01)]
            if k == 80:  # the alpha grids only where the claim is decided (shapes-full: all)
                expected += [("CE", a, 0.0, 0.01) for a in CE_ALPHAS if a != 0.5]
                expected += [("FL", a, 2.0, 0.01) for a in FL_ALPHAS if a != 0.25]
            # gamma .5 and 1 only in shapes-full (below)
            self.assertEqual(losses, sorted(expected), level.key)
            for row in rows:
                cfg = _merged(self.grid.run(row.run))
                self.assertEqual(cfg.MODEL.RETINANET.NUM_CLASSES, k)
                self.assertEqual(cfg.DATASETS.TRAIN, (f"shapes_sparse{k}_train",))
                self.assertEqual(cfg.DATASETS.TEST, (f"shapes_sparse{k}_val",))
                self.assertEqual([e[0] for e in cfg.DATASETS.COCO_JSON],
                                 [f"shapes_sparse{k}_train", f"shapes_sparse{k}_val"])
                self.assertTrue(cfg.DATASETS.COCO_JSON[0][1].endswith(f"train_{k}c.json"))
                self.assertEqual((cfg.SOLVER.MAX_ITER, cfg.TEST.EVAL_PERIOD), (60, 45))
                self.assertEqual(cfg.MODEL.RETINANET.PRIOR_PROB, row.params["prior"])
                self.assertEqual(cfg.MODEL.RETINAFOCAL.LOSS.NAME,
                                 "FocalLoss" if row.params["loss"] == "FL" else "BalancedCELoss")
                self.assertEqual(cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, row.params["alpha"])
        self.assertIsNotNone(self.grid.prepare_data)
        self.assertIn("fixed before the runs", self.grid.sweep_schedule)
        self.assertIn("the 20-class grid compares the one alpha of each (CE alpha 0.5, FL alpha "
                      "0.25): their second alphas, 2 runs of about 5 minutes, were cut",
                      self.grid.sweep_schedule)  # fmt: skip
        self.assertIn("labelled two ways: 20 classes (shape x colour), 80 classes",
                      self.grid.sweep_schedule)  # fmt: skip
        self.assertIn("The 5-class labelling was cut", self.grid.sweep_schedule)
        self.assertEqual(len(self.grid.rows_of("sweep")), 3 + 5)
        full = build_grid("shapes-full", max_iter=40, sweep_max_iter=60)
        self.assertEqual([lvl.key for lvl in full.levels],
                         ["shapes", "sparse-5", "sparse-20", "sparse-80"])
        self.assertIn("labelled three ways: 5 classes (shape), 20 classes", full.sweep_schedule)
        self.assertNotIn("labelling was cut", full.sweep_schedule)
        for key in ("sparse-5", "sparse-20", "sparse-80"):
            alphas = sorted((r.params["loss"], r.params["alpha"]) for r in full.rows_of("sweep")
                            if r.params["level"] == key and r.params["gamma"] in (0, 2)
                            and r.params["prior"] == 0.01)  # fmt: skip
            self.assertEqual(alphas, sorted([("CE", a) for a in CE_ALPHAS]
                                            + [("FL", a) for a in FL_ALPHAS]), key)
        self.assertNotIn("were cut", full.sweep_schedule)
        extra = sorted((r.params["gamma"], r.params["alpha"]) for r in full.rows_of("sweep")
                       if r.params["level"] == "sparse-80" and r.params["gamma"] not in (0, 2))
        self.assertEqual(extra, sorted((g, a) for g, a in EXTRA_GAMMAS.items()))
        self.assertIn("gamma 0.5 (alpha 0.5)", full.sweep_schedule)

    def test_no_sweep(self):
        grid = build_grid("shapes", max_iter=40, sweep_max_iter=0)
        self.assertEqual([lvl.key for lvl in grid.levels], ["shapes"])
        self.assertFalse(grid.rows_of("sweep"))
        self.assertIsNone(grid.prepare_data)

    def test_invalid_levels(self):
        run = RunSpec("a", "c.yaml")
        with self.assertRaisesRegex(ValueError, "measures 'b', which is not a training run"):
            Grid("g", [run], [], levels=[Level("x", "x", measure_run="b")])
        with self.assertRaisesRegex(ValueError, "names level 'y'"):
            Grid("g", [run], [Row("sweep", "a", "r", {"level": "y"})],
                 levels=[Level("x", "x", measure_run="a")])  # fmt: skip


class TestCocoGrid(unittest.TestCase):
    def test_configs_exist_and_overrides_apply(self):
        grid = build_grid("coco")
        self.assertEqual(len(grid.rows_of("1a")), 7)
        self.assertEqual(len(grid.rows_of("1d")), 10)
        configs = {spec.config_file for spec in grid.runs}
        for config in configs:
            self.assertTrue(os.path.isfile(os.path.join(REPO_ROOT, config)), config)
        # One run per config is enough to check the keys; the rest share them.
        checked = set()
        for spec in grid.runs:
            if spec.config_file in checked:
                continue
            checked.add(spec.config_file)
            cfg = _merged(spec)
            self.assertEqual(cfg.SOLVER.MAX_ITER, 90000)
        self.assertEqual(_merged(grid.run("fl_g2_a0p25")).INPUT.MIN_SIZE_TEST, 600)
        self.assertEqual(_merged(grid.run("fl_R101_g2_a0p25")).MODEL.RESNETS.DEPTH, 101)


if __name__ == "__main__":
    unittest.main()
