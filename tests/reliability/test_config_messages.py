"""Config overrides, as a user meets them: the exact messages, which keys are suggested, which
overrides are ignored or refused, and the parser used when hydra is not installed."""
import sys
import unittest
from unittest import mock

from omegaconf import OmegaConf

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import CfgNode, get_cfg
from retinafocal.config import add_retinafocal_config
from retinafocal.config_overrides import (
    ConfigKeyError,
    ConfigTypeError,
    apply_lazy_overrides,
    merge_yacs_file,
    merge_yacs_overrides,
    suggest_keys,
)

KEYS = ["SOLVER.BASE_LR", "SOLVER.MAX_ITER", "MODEL.RETINANET.FOCAL_LOSS_GAMMA",
        "TEST.EVAL_PERIOD", "INPUT.FORMAT"]  # fmt: skip


def yacs_cfg() -> CfgNode:
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    cfg.SMALL = CfgNode({f"K{i}": i for i in range(5)})  # a group of 5 keys
    cfg.LARGE = CfgNode({f"K{i}": i for i in range(6)})  # a group of 6 keys
    return cfg


def lazy_cfg():
    return OmegaConf.create({
        "train": {"max_iter": 100, "output_dir": "out", "amp": {"on": False, "opt": 1}},
        "model": {"num_classes": "${dataloader.num_classes}", "weights": "???"},
        "dataloader": {"num_classes": 5, "augs": [{"size": 3}]},
        "large": {f"k{i}": i for i in range(6)},
    })  # fmt: skip


class TestSuggestKeys(unittest.TestCase):
    """Scores: difflib ratio of the full paths, or 0.95 x the ratio of the last components when
    that is >= 0.8; keys scoring >= 0.6 are suggested, best first, at most 3."""

    def test_full_path_similarity(self):
        # "solver.lr" vs "solver.base_lr": ratio 0.78 (last components only 0.44).
        keys = KEYS + ["SOLVER.BASE_LRX", "SOLVER.BASE_LRY", "SOLVER.BASE_LR_END"]
        self.assertEqual(suggest_keys("SOLVER.LR", keys),
                         ["SOLVER.BASE_LR", "SOLVER.BASE_LRX", "SOLVER.BASE_LRY"])  # fmt: skip
        self.assertEqual(len(suggest_keys("SOLVER.LR", keys, n=4)), 4)

    def test_last_component_under_any_prefix(self):
        # Full paths are far apart (ratio < 0.6); the last components are equal.
        self.assertEqual(suggest_keys("AAAA.BBBB.BASE_LR", KEYS), ["SOLVER.BASE_LR"])
        self.assertEqual(suggest_keys("LOSS.NAME", ["MODEL.RETINAFOCAL.LOSS.NAME"]),
                         ["MODEL.RETINAFOCAL.LOSS.NAME"])  # fmt: skip

    def test_thresholds_are_inclusive(self):
        # "form" vs "format": last-component ratio exactly 0.8, so 0.95 x 0.8 = 0.76 counts.
        self.assertEqual(suggest_keys("XXXX.FORM", KEYS), ["INPUT.FORMAT"])
        # "ab.cd" vs "ab.xy": full ratio exactly 0.6.
        self.assertEqual(suggest_keys("AB.CD", ["AB.XY"]), ["AB.XY"])

    def test_weak_last_component_similarity_suggests_nothing(self):
        # "iter" vs "max_iter": ratio 0.67, below 0.8: not a suggestion (the full paths are
        # not close either).
        self.assertEqual(suggest_keys("ITER", KEYS), [])
        self.assertEqual(suggest_keys("LOSS_GAMMA", KEYS), [])

    def test_exact_path_ranks_above_equal_last_component(self):
        # "solver.max_iter": full ratio 0.97; "test.max_iters": last component equal, 0.95.
        self.assertEqual(suggest_keys("SOLVER.MAX_ITERS", ["TEST.MAX_ITERS", "SOLVER.MAX_ITER"]),
                         ["SOLVER.MAX_ITER", "TEST.MAX_ITERS"])  # fmt: skip


class TestYacsMessages(unittest.TestCase):
    def test_unknown_keys_message(self):
        cfg = yacs_cfg()
        with self.assertRaises(ConfigKeyError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.MAX_ITERS", "10", "QQQQ", "1"])
        self.assertEqual(str(ctx.exception).splitlines(), [
            "Unknown config key 'SOLVER.MAX_ITERS' (override 'SOLVER.MAX_ITERS 10'). "
            "Did you mean: SOLVER.MAX_ITER, SOLVER.WARMUP_ITERS, SOLVER.STEPS?",
            "Unknown config key 'QQQQ' (override 'QQQQ 1'). No similar key exists.",
        ])  # fmt: skip

    def test_paths_through_missing_groups_and_values(self):
        for key in ("MODEL.NOSUCH.KEY", "SOLVER.BASE_LR.X.Y", "SOLVER.BASE_LR.X", "NOSUCHKEY"):
            with self.subTest(key=key), self.assertRaises(ConfigKeyError) as ctx:
                merge_yacs_overrides(yacs_cfg(), [key, "1"])
            self.assertIn(f"Unknown config key '{key}' (override '{key} 1').", str(ctx.exception))

    def test_type_error_messages(self):
        cfg = yacs_cfg()
        with self.assertRaises(ConfigTypeError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.MAX_ITER", "1.5", "OUTPUT_DIR", "2024"])
        self.assertEqual(str(ctx.exception).splitlines(), [
            "Config key 'SOLVER.MAX_ITER' expects type int (its value is 40000), but got float "
            "1.5 (override 'SOLVER.MAX_ITER 1.5').",
            "Config key 'OUTPUT_DIR' expects type str (its value is './output'), but got int 2024 "
            "(override 'OUTPUT_DIR 2024'). To pass it as text, quote it.",
        ])  # fmt: skip

    def test_lists_replace_only_lists_and_tuples(self):
        for key, raw in (("INPUT.MIN_SIZE_TRAIN", "5"), ("OUTPUT_DIR", "[1, 2]")):
            with self.subTest(key=key), self.assertRaises(ConfigTypeError):
                merge_yacs_overrides(yacs_cfg(), [key, raw])

    def test_group_messages_list_at_most_five_keys(self):
        cfg = yacs_cfg()
        with self.assertRaises(ConfigTypeError) as ctx:
            merge_yacs_overrides(cfg, ["SMALL", "1", "LARGE", "2", "SOLVER.MAX_ITER", "x"])
        lines = str(ctx.exception).splitlines()
        self.assertEqual(lines[:2], [
            "Config key 'SMALL' is a group of keys (K0, K1, K2, K3, K4); set one of them instead "
            "(override 'SMALL 1').",
            "Config key 'LARGE' is a group of keys (K0, K1, K2, K3, K4, ...); set one of them "
            "instead (override 'LARGE 2').",
        ])  # fmt: skip
        self.assertEqual(len(lines), 3)  # the error after the groups is reported too
        self.assertIn("'SOLVER.MAX_ITER' expects type int", lines[2])

    def test_booleans_from_text(self):
        cfg = yacs_cfg()
        merge_yacs_overrides(cfg, ["DATALOADER.ASPECT_RATIO_GROUPING", "false",
                                   "MODEL.RETINAFOCAL.LOSS.COMPILE", "true"])  # fmt: skip
        self.assertIs(cfg.DATALOADER.ASPECT_RATIO_GROUPING, False)
        self.assertIs(cfg.MODEL.RETINAFOCAL.LOSS.COMPILE, True)
        merge_yacs_overrides(cfg, ["DATALOADER.ASPECT_RATIO_GROUPING", "TRUE"])
        self.assertIs(cfg.DATALOADER.ASPECT_RATIO_GROUPING, True)
        with self.assertRaises(ConfigTypeError):
            merge_yacs_overrides(cfg, ["DATALOADER.ASPECT_RATIO_GROUPING", "yes"])

    def test_deprecated_keys_are_ignored_and_renamed_keys_refused(self):
        cfg = yacs_cfg()
        cfg.register_deprecated_key("SOLVER.OLD_KEY")
        cfg.register_renamed_key("SOLVER.OLD_LR", "SOLVER.BASE_LR")
        merge_yacs_overrides(cfg, ["SOLVER.OLD_KEY", "1", "SOLVER.BASE_LR", "0.5"])
        self.assertEqual(cfg.SOLVER.BASE_LR, 0.5)
        self.assertNotIn("OLD_KEY", cfg.SOLVER)
        with self.assertRaisesRegex(KeyError, "SOLVER.BASE_LR"):
            merge_yacs_overrides(cfg, ["SOLVER.OLD_LR", "0.1"])

    def test_frozen_message(self):
        cfg = yacs_cfg()
        cfg.freeze()
        with self.assertRaises(AttributeError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.BASE_LR", "0.1"])
        self.assertEqual(str(ctx.exception),
                         "The config is frozen; apply overrides before cfg.freeze().")  # fmt: skip


class TestErrorsWithoutMessage(unittest.TestCase):
    def test_key_error_without_message(self):
        self.assertEqual(str(ConfigKeyError()), "")
        self.assertEqual(str(ConfigKeyError("a 'quoted' key")), "a 'quoted' key")

    def test_other_yacs_key_errors_pass_through(self):
        cfg = yacs_cfg()
        for error in (KeyError(), KeyError("something else")):
            with self.subTest(error=error), mock.patch.object(
                CfgNode, "merge_from_file", side_effect=error
            ), self.assertRaises(KeyError) as ctx:
                merge_yacs_file(cfg, "any.yaml")
            self.assertIs(ctx.exception, error)


class TestLazyMessages(unittest.TestCase):
    def test_every_problem_reported_once_each(self):
        cfg = lazy_cfg()
        with self.assertRaises(ConfigKeyError) as ctx:
            apply_lazy_overrides(cfg, ["train.max_iters=1", "+train.max_iter.sub=3",
                                       "large=1", "train.max_iter=x", "qqqq=2"])  # fmt: skip
        self.assertEqual(str(ctx.exception).splitlines(), [
            "Unknown config key 'train.max_iters' (override 'train.max_iters=1'). Did you mean: "
            "train.max_iter? To add a new key, write '+train.max_iters=1'.",
            "Unknown config key 'qqqq' (override 'qqqq=2'). No similar key exists. To add a new "
            "key, write '+qqqq=2'.",
            "Cannot add 'train.max_iter.sub': its parent is not a config (override "
            "'+train.max_iter.sub=3').",
            "Config key 'large' is a group of keys (k0, k1, k2, k3, k4, ...); set one of them "
            "instead (override 'large=1').",
            "Config key 'train.max_iter' expects type int (its value is 100), but got str 'x' "
            "(override 'train.max_iter=x').",
        ])  # fmt: skip

    def test_type_errors_alone(self):
        with self.assertRaises(ConfigTypeError) as ctx:
            apply_lazy_overrides(lazy_cfg(), ["train.output_dir=5", "train.max_iter=x"])
        self.assertEqual(len(str(ctx.exception).splitlines()), 2)
        self.assertIn("'train.output_dir' expects type str", str(ctx.exception))

    def test_list_indices(self):
        for key in ("dataloader.augs.1.size", "train.0"):
            with self.subTest(key=key), self.assertRaises(ConfigKeyError):
                apply_lazy_overrides(lazy_cfg(), [f"{key}=3"])

    def test_missing_and_interpolated_values_take_any_type(self):
        cfg = lazy_cfg()
        apply_lazy_overrides(cfg, ["model.weights=5", "model.num_classes=many"])
        self.assertEqual((cfg.model.weights, cfg.model.num_classes), (5, "many"))

    def test_top_level_add_and_group_merge(self):
        cfg = lazy_cfg()
        apply_lazy_overrides(cfg, ["+seed=3", "train.amp={on:true}"])
        self.assertEqual(cfg.seed, 3)
        self.assertEqual(OmegaConf.to_container(cfg.train.amp), {"on": True, "opt": 1})

    def test_deletion_refused(self):
        with self.assertRaises(ValueError) as ctx:
            apply_lazy_overrides(lazy_cfg(), ["~train.max_iter"])
        self.assertEqual(str(ctx.exception),
                         "Deleting config keys is not supported ('~train.max_iter').")  # fmt: skip


class TestLazyWithoutHydra(unittest.TestCase):
    """Without hydra (current detectron2 does not require it), ``key=value`` with the value read
    as a Python literal, and ``+key=value`` to add a key."""

    def setUp(self):
        parser_module = "hydra.core.override_parser.overrides_parser"
        patcher = mock.patch.dict(sys.modules, {parser_module: None})
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_same_results_as_with_hydra(self):
        cfg = lazy_cfg()
        apply_lazy_overrides(cfg, ["train.max_iter=5", "train.output_dir=a=b", "+train.seed=3",
                                   "dataloader.augs.0.size=7", "model.weights=w.pth"])  # fmt: skip
        self.assertEqual((cfg.train.max_iter, cfg.train.output_dir, cfg.train.seed),
                         (5, "a=b", 3))  # fmt: skip
        self.assertEqual((cfg.dataloader.augs[0].size, cfg.model.weights), (7, "w.pth"))
        with self.assertRaises(ConfigKeyError):
            apply_lazy_overrides(cfg, ["train.seedx=1"])

    def test_not_key_value(self):
        with self.assertRaises(ValueError) as ctx:
            apply_lazy_overrides(lazy_cfg(), ["train.max_iter"])
        message = "Config override 'train.max_iter' is not of the form key=value."
        self.assertEqual(str(ctx.exception), message)


if __name__ == "__main__":
    unittest.main()
