"""Every config in configs/ trains for 2 iterations and evaluates, so that none of them rots.

Each one runs through ``train_net.py``'s ``main`` on a tiny embedded dataset (64 px images),
with command-line overrides for the dataset, the size and the iteration count only; everything
else (model, backbone depth, anchors, schedule, evaluator) is the config's own.
"""
import os
import shutil
import tempfile
import unittest

import torch

from .common import (
    CONFIG_DIR,
    all_configs,
    lazy_tiny_overrides,
    run_train_net,
    tiny_shapes,
    yacs_tiny_overrides,
)


class TestEveryConfigRuns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.mkdtemp(prefix="rf_configs_")
        cls.data = tiny_shapes(os.path.join(cls._tmp, "data"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls._tmp, ignore_errors=True)

    def test_configs_are_found(self):
        names = {os.path.relpath(p, CONFIG_DIR) for p in all_configs()}
        for expected in (
            "Embedded/retinanet_R18_FPN_shapes.yaml",
            "Embedded/retinanet_R18_FPN_shapes.py",
            "COCO/retinanet_R50_FPN_1x.yaml",
            "COCO/retinanet_R101_FPN_1x.py",
        ):
            self.assertIn(expected, names)

    def _run(self, config_file: str) -> None:
        rel = os.path.relpath(config_file, CONFIG_DIR)
        output_dir = os.path.join(self._tmp, "out", rel.replace(os.sep, "_"))
        overrides = (lazy_tiny_overrides if rel.endswith(".py") else yacs_tiny_overrides)(
            self.data, output_dir
        )
        results = run_train_net(["--config-file", config_file, *overrides])
        # Trained 2 iterations, wrote the final checkpoint and the predictions figure, evaluated.
        final = torch.load(
            os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False
        )
        self.assertEqual(final["iteration"], 1)
        self.assertTrue(os.path.isfile(os.path.join(output_dir, "predictions.png")))
        self.assertIn("bbox", results)
        self.assertIn("AP", results["bbox"])


def _add_config_tests():
    for path in all_configs():
        rel = os.path.relpath(path, CONFIG_DIR)
        name = "test_" + rel.replace(os.sep, "__").replace("-", "_").replace(".", "_")
        setattr(TestEveryConfigRuns, name, lambda self, p=path: self._run(p))


_add_config_tests()


if __name__ == "__main__":
    unittest.main()


class TestYacsAndLazyFormsAgree(unittest.TestCase):
    """Each config that exists in both forms builds the same model (same parameters and
    buffers, same anchors, classes and input normalisation)."""

    def _models(self, stem):
        from detectron2.config import LazyConfig, get_cfg, instantiate

        from retinafocal import add_retinafocal_config
        from retinafocal.config_overrides import merge_yacs_file
        from retinafocal.engine import Trainer

        cfg = get_cfg()
        add_retinafocal_config(cfg)
        merge_yacs_file(cfg, os.path.join(CONFIG_DIR, stem + ".yaml"))
        cfg.MODEL.DEVICE = "cpu"
        lazy = LazyConfig.load(os.path.join(CONFIG_DIR, stem + ".py"))
        return Trainer.build_model(cfg), instantiate(lazy.model)

    def _assert_same(self, a, b):
        a_sd, b_sd = a.state_dict(), b.state_dict()
        self.assertEqual(sorted(a_sd), sorted(b_sd))
        for k in a_sd:
            self.assertEqual(a_sd[k].shape, b_sd[k].shape, k)
        self.assertEqual(type(a), type(b))
        self.assertEqual(a.num_classes, b.num_classes)
        self.assertEqual(a.head_in_features, b.head_in_features)
        self.assertEqual(a.memory_format, b.memory_format)
        torch.testing.assert_close(a.pixel_mean, b.pixel_mean)
        torch.testing.assert_close(a.pixel_std, b.pixel_std)
        for cell_a, cell_b in zip(a.anchor_generator.cell_anchors, b.anchor_generator.cell_anchors):
            torch.testing.assert_close(cell_a, cell_b)

    def test_embedded(self):
        yacs_model, lazy_model = self._models("Embedded/retinanet_R18_FPN_shapes")
        self._assert_same(yacs_model, lazy_model)
        self.assertEqual(yacs_model.memory_format, "NCHW")  # the layout it was measured with

    def test_coco_r101_3x(self):
        yacs_model, lazy_model = self._models("COCO/retinanet_R101_FPN_3x")
        self._assert_same(yacs_model, lazy_model)
        self.assertEqual(yacs_model.memory_format, "NHWC")  # Base-RetinaNet.yaml
