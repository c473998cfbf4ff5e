"""yacs overrides and files, as a user meets them: valid ones match yacs' own merge, unknown keys
suggest the nearest valid ones, wrong types are named, with the exact messages."""
import os
import shutil
import tempfile
import unittest
from typing import List
from unittest import mock

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import CfgNode, get_cfg
from retinafocal.config import add_retinafocal_config
from retinafocal.config_overrides import (
    ConfigKeyError,
    ConfigTypeError,
    merge_yacs_file,
    merge_yacs_overrides,
)


def yacs_cfg() -> CfgNode:
    """The default config with retinafocal's keys, and two groups for the group messages."""
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    cfg.SMALL = CfgNode({f"K{i}": i for i in range(5)})  # a group of 5 keys
    cfg.LARGE = CfgNode({f"K{i}": i for i in range(6)})  # a group of 6 keys
    return cfg


def refusal(test: unittest.TestCase, error: type, opts: List[str]) -> Exception:
    """The ``error`` that merging ``opts`` into a fresh :func:`yacs_cfg` must raise."""
    with test.assertRaises(error) as ctx:
        merge_yacs_overrides(yacs_cfg(), opts)
    return ctx.exception


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
        error = refusal(self, ConfigKeyError, ["SOLVER.MAX_ITERS", "10"])
        self.assertIn("'SOLVER.MAX_ITERS'", str(error))
        self.assertIn("Did you mean: SOLVER.MAX_ITER", str(error))
        self.assertIsInstance(error, KeyError)  # what yacs users catch already

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

    def test_bad_file_is_named_with_the_problem(self):
        for text, error, problem in (
            ("SOLVER:\n  BASE_LR: 0.1\n  MAX_ITERS: 5\n", ConfigKeyError,
             "Did you mean: SOLVER.MAX_ITER"),  # an unknown key
            ("SOLVER:\n  MAX_ITER: fast\n", ConfigTypeError, "SOLVER.MAX_ITER"),  # a wrong type
        ):  # fmt: skip
            path = self.write(text)
            with self.subTest(problem=problem):
                with self.assertRaises(error) as ctx:
                    merge_yacs_file(yacs_cfg(), path)
                self.assertIn(path, str(ctx.exception))
                self.assertIn(problem, str(ctx.exception))

    def test_valid_file_merges(self):
        cfg = yacs_cfg()
        merge_yacs_file(cfg, self.write("SOLVER:\n  MAX_ITER: 5\n"))
        self.assertEqual(cfg.SOLVER.MAX_ITER, 5)


class TestYacsMessages(unittest.TestCase):
    def test_unknown_keys_message(self):
        error = refusal(self, ConfigKeyError, ["SOLVER.MAX_ITERS", "10", "QQQQ", "1"])
        self.assertEqual(str(error).splitlines(), [
            "Unknown config key 'SOLVER.MAX_ITERS' (override 'SOLVER.MAX_ITERS 10'). "
            "Did you mean: SOLVER.MAX_ITER, SOLVER.WARMUP_ITERS, SOLVER.STEPS?",
            "Unknown config key 'QQQQ' (override 'QQQQ 1'). No similar key exists.",
        ])  # fmt: skip

    def test_paths_through_missing_groups_and_values(self):
        for key in ("MODEL.NOSUCH.KEY", "SOLVER.BASE_LR.X.Y", "SOLVER.BASE_LR.X", "NOSUCHKEY"):
            with self.subTest(key=key), self.assertRaises(ConfigKeyError) as ctx:
                merge_yacs_overrides(yacs_cfg(), [key, "1"])
            self.assertIn(f"Unknown config key '{key}' (override '{key} 1').", str(ctx.exception))

    def test_an_index_into_a_list_value_is_unknown(self):
        # A yacs list is one value: its items are no keys, so none of them is suggested.
        cfg = CfgNode({"MODEL": {"PIXEL_MEAN": [103.53, 116.28, 123.675], "PIXEL_STD": [1.0] * 3}})
        with self.assertRaises(ConfigKeyError) as ctx:
            merge_yacs_overrides(cfg, ["MODEL.PIXEL_MEAN.0", "100"])
        self.assertEqual(str(ctx.exception), (
            "Unknown config key 'MODEL.PIXEL_MEAN.0' (override 'MODEL.PIXEL_MEAN.0 100'). "
            "Did you mean: MODEL.PIXEL_MEAN, MODEL.PIXEL_STD?"
        ))  # fmt: skip

    def test_type_error_messages(self):
        error = refusal(self, ConfigTypeError, ["SOLVER.MAX_ITER", "1.5", "OUTPUT_DIR", "2024"])
        self.assertEqual(str(error).splitlines(), [
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
        with self.assertRaises(KeyError) as ctx:
            merge_yacs_overrides(cfg, ["SOLVER.OLD_LR", "0.1"])
        # yacs' own words, not an unknown-key error that would suggest SOLVER.BASE_LR too.
        self.assertEqual(
            ctx.exception.args,
            ("Key SOLVER.OLD_LR was renamed to SOLVER.BASE_LR; please update your config.",),
        )

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


if __name__ == "__main__":
    unittest.main()
