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
