"""LazyConfig overrides (``key=value``, ``+key=value``), as a user meets them: valid ones match
detectron2's, a rejected one leaves the config unchanged, with the exact messages, with and
without hydra."""
import sys
import unittest
from unittest import mock

from omegaconf import OmegaConf

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import LazyConfig
from retinafocal.config_overrides import ConfigKeyError, ConfigTypeError, apply_lazy_overrides


def lazy_cfg():
    return OmegaConf.create(
        {
            "train": {"max_iter": 100, "base_lr": 0.01, "output_dir": "out", "amp": {"on": False},
                      "init_checkpoint": None, "steps": [10, 20]},
            "model": {"num_classes": "${dataloader.num_classes}", "weights": "???"},
            "dataloader": {"num_classes": 5, "augs": [{"size": 3}]},
        }
    )


def small_lazy_cfg():
    return OmegaConf.create({
        "train": {"max_iter": 100, "output_dir": "out", "amp": {"on": False, "opt": 1}},
        "model": {"num_classes": "${dataloader.num_classes}", "weights": "???"},
        "dataloader": {"num_classes": 5, "augs": [{"size": 3}]},
        "large": {f"k{i}": i for i in range(6)},
    })  # fmt: skip


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

    def test_explicit_add_creates_missing_groups_as_detectron2_does(self):
        # e.g. datasets.coco_json for a config that has no datasets group (detectron2's own).
        opts = ["+datasets.coco_json=[[a,b.json,c]]", "+train.sched.warmup.iters=5"]
        ours, reference = lazy_cfg(), lazy_cfg()
        apply_lazy_overrides(ours, opts)
        LazyConfig.apply_overrides(reference, opts)
        self.assertEqual(OmegaConf.to_container(ours), OmegaConf.to_container(reference))
        self.assertEqual(ours.datasets.coco_json, [["a", "b.json", "c"]])
        self.assertEqual(ours.train.sched.warmup.iters, 5)
        apply_lazy_overrides(ours, ["+seed=3"])
        for key in ("train.max_iter.a.b", "seed.a.b"):  # a value on the way, deep or on top
            with self.assertRaisesRegex(ConfigTypeError, f"'{key}': its parent is not a config"):
                apply_lazy_overrides(ours, [f"+{key}=3"])

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


class TestLazyMessages(unittest.TestCase):
    def test_every_problem_reported_once_each(self):
        cfg = small_lazy_cfg()
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
            apply_lazy_overrides(small_lazy_cfg(), ["train.output_dir=5", "train.max_iter=x"])
        self.assertEqual(str(ctx.exception), (
            "Config key 'train.output_dir' expects type str (its value is 'out'), but got int 5 "
            "(override 'train.output_dir=5'). To pass it as text, quote it.\n"
            "Config key 'train.max_iter' expects type int (its value is 100), but got str 'x' "
            "(override 'train.max_iter=x')."
        ))  # fmt: skip

    def test_list_indices(self):
        for key in ("dataloader.augs.1.size", "train.0"):
            with self.subTest(key=key), self.assertRaises(ConfigKeyError):
                apply_lazy_overrides(small_lazy_cfg(), [f"{key}=3"])

    def test_a_misspelt_key_in_a_list_item_suggests_the_items_keys(self):
        with self.assertRaises(ConfigKeyError) as ctx:
            apply_lazy_overrides(small_lazy_cfg(), ["dataloader.augs.0.sise=5"])
        self.assertEqual(str(ctx.exception), (
            "Unknown config key 'dataloader.augs.0.sise' (override 'dataloader.augs.0.sise=5'). "
            "Did you mean: dataloader.augs.0.size, dataloader.augs.0, dataloader.augs? To add a "
            "new key, write '+dataloader.augs.0.sise=5'."
        ))  # fmt: skip

    def test_missing_and_interpolated_values_take_any_type(self):
        cfg = small_lazy_cfg()
        apply_lazy_overrides(cfg, ["model.weights=5", "model.num_classes=many"])
        self.assertEqual((cfg.model.weights, cfg.model.num_classes), (5, "many"))

    def test_top_level_add_and_group_merge(self):
        cfg = small_lazy_cfg()
        apply_lazy_overrides(cfg, ["+seed=3", "train.amp={on:true}"])
        self.assertEqual(cfg.seed, 3)
        self.assertEqual(OmegaConf.to_container(cfg.train.amp), {"on": True, "opt": 1})

    def test_deletion_refused(self):
        with self.assertRaises(ValueError) as ctx:
            apply_lazy_overrides(small_lazy_cfg(), ["~train.max_iter"])
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
        cfg = small_lazy_cfg()
        apply_lazy_overrides(cfg, ["train.max_iter=5", "train.output_dir=a=b", "+train.seed=3",
                                   "dataloader.augs.0.size=7", "model.weights=w.pth"])  # fmt: skip
        self.assertEqual((cfg.train.max_iter, cfg.train.output_dir, cfg.train.seed),
                         (5, "a=b", 3))  # fmt: skip
        self.assertEqual((cfg.dataloader.augs[0].size, cfg.model.weights), (7, "w.pth"))
        with self.assertRaises(ConfigKeyError):
            apply_lazy_overrides(cfg, ["train.seedx=1"])

    def test_an_added_key_keeps_every_letter(self):
        """Only the leading + marks an addition; the name behind it stays whole."""
        cfg = small_lazy_cfg()
        apply_lazy_overrides(cfg, ["+X_OFFSET=2"])
        self.assertEqual(cfg.X_OFFSET, 2)
        self.assertNotIn("_OFFSET", cfg)

    def test_not_key_value(self):
        with self.assertRaises(ValueError) as ctx:
            apply_lazy_overrides(small_lazy_cfg(), ["train.max_iter"])
        message = "Config override 'train.max_iter' is not of the form key=value."
        self.assertEqual(str(ctx.exception), message)


if __name__ == "__main__":
    unittest.main()
