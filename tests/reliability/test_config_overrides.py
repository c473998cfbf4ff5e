"""Config overrides: unknown keys suggest the nearest valid ones, wrong types are named."""
import os
import shutil
import tempfile
import unittest

from omegaconf import OmegaConf

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import CfgNode, LazyConfig, get_cfg
from retinafocal.config import add_retinafocal_config
from retinafocal.config_overrides import (
    ConfigKeyError,
    ConfigTypeError,
    apply_lazy_overrides,
    merge_yacs_file,
    merge_yacs_overrides,
    suggest_keys,
)


def yacs_cfg() -> CfgNode:
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    return cfg


def lazy_cfg():
    return OmegaConf.create(
        {
            "train": {"max_iter": 100, "base_lr": 0.01, "output_dir": "out", "amp": {"on": False},
                      "init_checkpoint": None, "steps": [10, 20]},
            "model": {"num_classes": "${dataloader.num_classes}", "weights": "???"},
            "dataloader": {"num_classes": 5, "augs": [{"size": 3}]},
        }
    )


class TestSuggestKeys(unittest.TestCase):
    def test_hand_picked(self):
        keys = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.RETINANET.FOCAL_LOSS_GAMMA"]
        self.assertEqual(suggest_keys("SOLVER.MAX_ITERS", keys)[0], "SOLVER.MAX_ITER")
        self.assertEqual(suggest_keys("BASE_LR", keys), ["SOLVER.BASE_LR"])  # prefix missing
        self.assertEqual(suggest_keys("MODEL.BASE_LR", keys)[0], "SOLVER.BASE_LR")
        self.assertEqual(
            suggest_keys("MODEL.RETINANET.FOCAL_LOSS_GAMA", keys)[0],
            "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        )
        self.assertEqual(suggest_keys("COMPLETELY.UNRELATED", keys), [])


class TestYacsOverrides(unittest.TestCase):
    def test_valid_overrides_match_merge_from_list(self):
        opts = ["SOLVER.BASE_LR", "0.5", "SOLVER.MAX_ITER", "7", "DATASETS.TRAIN", "('a', 'b')",
                "INPUT.MIN_SIZE_TRAIN", "(100, 200)", "DATALOADER.ON_UNREADABLE_IMAGE", "skip",
                "MODEL.RETINAFOCAL.LOSS.COMPILE", "True"]
        ours, reference = yacs_cfg(), yacs_cfg()
        merge_yacs_overrides(ours, opts)
        reference.merge_from_list(opts)
        self.assertEqual(ours, reference)
        self.assertEqual(ours.SOLVER.MAX_ITER, 7)

    def test_unknown_key_suggests_nearest(self):
        cfg = yacs_cfg()
        with self.assertRaises(ConfigKeyError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.MAX_ITERS", "10"])
        message = str(ctx.exception)
        self.assertIn("'SOLVER.MAX_ITERS'", message)
        self.assertIn("Did you mean: SOLVER.MAX_ITER", message)
        self.assertIsInstance(ctx.exception, KeyError)  # what yacs users catch already

    def test_all_problems_reported_at_once_and_nothing_applied(self):
        cfg = yacs_cfg()
        opts = ["SOLVER.BASE_LR", "0.5", "MODEL.RETINAFOCAL.MATCHER_NAMES", "x",
                "DATALOADER.LOG_SKIPPED_PERIOD", "often", "INPUT.FORMATT", "RGB"]
        with self.assertRaises(ConfigKeyError) as ctx:
            merge_yacs_overrides(cfg, opts)
        message = str(ctx.exception)
        self.assertIn("MODEL.RETINAFOCAL.MATCHER_NAME", message)
        self.assertIn("INPUT.FORMAT", message)
        self.assertIn("DATALOADER.LOG_SKIPPED_PERIOD", message)
        self.assertEqual(cfg.SOLVER.BASE_LR, yacs_cfg().SOLVER.BASE_LR)  # all or nothing

    def test_wrong_type_names_key_type_and_value(self):
        cfg = yacs_cfg()
        with self.assertRaises(ConfigTypeError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.MAX_ITER", "1.5"])
        message = str(ctx.exception)
        for part in ("SOLVER.MAX_ITER", "int", "1.5"):
            self.assertIn(part, message)
        self.assertIsInstance(ctx.exception, ValueError)  # yacs raises ValueError for these
        with self.assertRaisesRegex(ConfigTypeError, "group of keys"):
            merge_yacs_overrides(cfg, ["MODEL.RETINANET", "3"])
        with self.assertRaisesRegex(ConfigTypeError, "quote it"):
            merge_yacs_overrides(cfg, ["OUTPUT_DIR", "2024"])

    def test_lenient_coercions(self):
        cfg = yacs_cfg()
        with self.assertRaises(ValueError):
            cfg.clone().merge_from_list(["SOLVER.BASE_LR", "1"])  # yacs rejects an int here
        merge_yacs_overrides(
            cfg, ["SOLVER.BASE_LR", "1", "DATALOADER.ASPECT_RATIO_GROUPING", "false",
                  "INPUT.MIN_SIZE_TRAIN", "[300]"]
        )
        self.assertEqual(cfg.SOLVER.BASE_LR, 1.0)
        self.assertIsInstance(cfg.SOLVER.BASE_LR, float)
        self.assertIs(cfg.DATALOADER.ASPECT_RATIO_GROUPING, False)
        self.assertEqual(cfg.INPUT.MIN_SIZE_TRAIN, (300,))

    def test_odd_length_and_frozen(self):
        with self.assertRaisesRegex(ValueError, "'SOLVER.BASE_LR' has no value"):
            merge_yacs_overrides(yacs_cfg(), ["SOLVER.BASE_LR"])
        cfg = yacs_cfg()
        cfg.freeze()
        with self.assertRaisesRegex(AttributeError, "frozen"):
            merge_yacs_overrides(cfg, ["SOLVER.BASE_LR", "0.1"])

    def test_new_allowed_node_accepts_new_keys(self):
        cfg = yacs_cfg()
        cfg.EXTRA = CfgNode(new_allowed=True)
        merge_yacs_overrides(cfg, ["EXTRA.ANYTHING", "3"])
        self.assertEqual(cfg.EXTRA.ANYTHING, 3)


class TestYacsFile(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_cfg_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

    def write(self, text):
        path = os.path.join(self.root, "c.yaml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_unknown_key_in_file(self):
        path = self.write("SOLVER:\n  BASE_LR: 0.1\n  MAX_ITERS: 5\n")
        with self.assertRaises(ConfigKeyError) as ctx:
            merge_yacs_file(yacs_cfg(), path)
        self.assertIn(path, str(ctx.exception))
        self.assertIn("Did you mean: SOLVER.MAX_ITER", str(ctx.exception))

    def test_wrong_type_in_file(self):
        path = self.write("SOLVER:\n  MAX_ITER: fast\n")
        with self.assertRaises(ConfigTypeError) as ctx:
            merge_yacs_file(yacs_cfg(), path)
        self.assertIn(path, str(ctx.exception))
        self.assertIn("SOLVER.MAX_ITER", str(ctx.exception))

    def test_valid_file_merges(self):
        cfg = yacs_cfg()
        merge_yacs_file(cfg, self.write("SOLVER:\n  MAX_ITER: 5\n"))
        self.assertEqual(cfg.SOLVER.MAX_ITER, 5)


class TestLazyOverrides(unittest.TestCase):
    def test_valid_overrides_match_detectron2(self):
        opts = ["train.max_iter=5", "train.output_dir=elsewhere", "train.amp.on=true",
                "train.steps=[1,2,3]", "dataloader.augs.0.size=7", "train.init_checkpoint=x.pth"]
        ours, reference = lazy_cfg(), lazy_cfg()
        apply_lazy_overrides(ours, opts)
        LazyConfig.apply_overrides(reference, opts)
        self.assertEqual(OmegaConf.to_container(ours), OmegaConf.to_container(reference))

    def test_unknown_key_suggests_and_is_not_created(self):
        cfg = lazy_cfg()
        with self.assertRaises(ConfigKeyError) as ctx:
            apply_lazy_overrides(cfg, ["train.max_iters=10"])
        message = str(ctx.exception)
        self.assertIn("Did you mean: train.max_iter", message)
        self.assertIn("+train.max_iters=10", message)
        self.assertNotIn("max_iters", cfg.train)
        # detectron2's own apply_overrides creates the misspelt key, and nothing changes.
        reference = lazy_cfg()
        LazyConfig.apply_overrides(reference, ["train.max_iters=10"])
        self.assertEqual((reference.train.max_iters, reference.train.max_iter), (10, 100))

    def test_explicit_add(self):
        cfg = lazy_cfg()
        apply_lazy_overrides(cfg, ["+train.seed=3"])
        self.assertEqual(cfg.train.seed, 3)
        with self.assertRaisesRegex(ConfigTypeError, "parent is not a config"):
            apply_lazy_overrides(cfg, ["+train.max_iter.sub=3"])

    def test_wrong_types(self):
        cfg = lazy_cfg()
        with self.assertRaises(ConfigTypeError) as ctx:
            apply_lazy_overrides(cfg, ["train.max_iter=abc", "train.amp.on=3"])
        message = str(ctx.exception)
        self.assertIn("'train.max_iter' expects type int", message)
        self.assertIn("'train.amp.on' expects type bool", message)
        self.assertEqual(cfg.train.max_iter, 100)
        with self.assertRaisesRegex(ConfigTypeError, "group of keys"):
            apply_lazy_overrides(cfg, ["train.amp=1"])

    def test_a_rejected_override_leaves_the_config_unchanged(self):
        """Good overrides around a bad one: the error names the bad one, and none is applied."""
        good = ["train.max_iter=5", "train.steps=[1]", "+train.seed=3"]
        for bad, error in (("train.max_iters=10", ConfigKeyError),
                           ("train.amp.on=3", ConfigTypeError),
                           ("train.amp=1", ConfigTypeError),
                           ("+train.max_iter.sub=3", ConfigTypeError)):  # fmt: skip
            with self.subTest(bad=bad):
                cfg = lazy_cfg()
                with self.assertRaises(error) as ctx:
                    apply_lazy_overrides(cfg, good[:2] + [bad] + good[2:])
                self.assertIn(bad.lstrip("+").split("=")[0], str(ctx.exception))
                self.assertEqual(OmegaConf.to_container(cfg), OmegaConf.to_container(lazy_cfg()))

    def test_an_override_omegaconf_refuses_leaves_the_config_unchanged(self):
        """A struct config refuses a new key only when it is set, after the checks above: the
        good override before it must not stay applied."""
        cfg = lazy_cfg()
        OmegaConf.set_struct(cfg, True)
        with self.assertRaises(Exception):
            apply_lazy_overrides(cfg, ["train.max_iter=5", "dataloader.augs.0.size=9",
                                       "+train.seed=3"])  # fmt: skip
        self.assertEqual(OmegaConf.to_container(cfg), OmegaConf.to_container(lazy_cfg()))
        self.assertTrue(OmegaConf.is_struct(cfg))
        apply_lazy_overrides(cfg, ["train.max_iter=5", "dataloader.augs.0.size=9"])
        self.assertEqual((cfg.train.max_iter, cfg.dataloader.augs[0].size), (5, 9))

    def test_int_for_float_and_untyped_values(self):
        cfg = lazy_cfg()
        apply_lazy_overrides(
            cfg, ["train.base_lr=1", "model.num_classes=9", "model.weights=w.pth",
                  "train.init_checkpoint=7"]
        )
        self.assertEqual(cfg.train.base_lr, 1.0)
        self.assertIsInstance(cfg.train.base_lr, float)
        self.assertEqual((cfg.model.num_classes, cfg.model.weights), (9, "w.pth"))
        self.assertEqual(cfg.train.init_checkpoint, 7)


if __name__ == "__main__":
    unittest.main()
