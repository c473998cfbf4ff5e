"""``--eval-only`` with the final checkpoint reproduces the evaluation printed after training."""
import math
import os
import unittest

import retinafocal  # noqa: F401  (compat first, before detectron2)
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.evaluation import DatasetEvaluator

from retinafocal.config_overrides import apply_lazy_overrides
from retinafocal.engine import (
    build_evaluator,
    build_lazy_model,
    lazy_test,
    register_lazy_datasets,
)

from .common import (
    CONFIG_DIR,
    TinyShapesFixture,
    lazy_tiny_overrides,
    run_train_net,
    yacs_tiny_overrides,
)


def _same_results(test, a, b):
    test.assertEqual(sorted(a["bbox"]), sorted(b["bbox"]))
    for k, v in a["bbox"].items():
        w = b["bbox"][k]
        test.assertTrue(v == w or (math.isnan(v) and math.isnan(w)), f"{k}: {v} != {w}")


class TestEvalOnly(TinyShapesFixture, unittest.TestCase):
    tmp_prefix = "rf_evalonly_"

    def test_yacs(self):
        config = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")
        out = os.path.join(self._tmp, "yacs")
        # Keep every detection of the barely trained model, so that AP is a number.
        opts = yacs_tiny_overrides(self.data, out) + ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]
        trained = run_train_net(["--config-file", config, *opts])
        self.assertFalse(math.isnan(trained["bbox"]["AP"]))
        weights = ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")]
        evaluated = run_train_net(["--config-file", config, "--eval-only", *opts, *weights])
        _same_results(self, trained, evaluated)

    def test_lazy(self):
        config = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")
        out = os.path.join(self._tmp, "lazy")
        opts = lazy_tiny_overrides(self.data, out) + ["model.test_score_thresh=0.0"]
        trained = run_train_net(["--config-file", config, *opts])
        self.assertFalse(math.isnan(trained["bbox"]["AP"]))
        weights = [f"train.init_checkpoint='{os.path.join(out, 'model_final.pth')}'"]
        evaluated = run_train_net(["--config-file", config, "--eval-only", *opts, *weights])
        _same_results(self, trained, evaluated)



class _CountImages(DatasetEvaluator):
    """Counts the images it is given: ``{"counted": {"images": n}}``."""

    def reset(self):
        self.images = 0

    def process(self, inputs, outputs):
        self.images += len(inputs)

    def evaluate(self):
        return {"counted": {"images": self.images}}


class TestLazyEvaluatorList(TinyShapesFixture, unittest.TestCase):
    tmp_prefix = "rf_evallist_"

    def test_a_list_of_evaluators(self):
        # detectron2's inference_on_dataset takes a list; instantiate makes it a ListConfig.
        config = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")
        out = os.path.join(self._tmp, "lazy")
        cfg = apply_lazy_overrides(LazyConfig.load(config), lazy_tiny_overrides(self.data, out))
        coco = L(build_evaluator)(dataset_name=self.data["val"][0], output_dir=out)
        cfg.dataloader.evaluator = [coco, L(_CountImages)()]
        register_lazy_datasets(cfg)
        results = lazy_test(cfg, build_lazy_model(cfg))
        self.assertEqual(results["counted"], {"images": self.num_val})
        self.assertIn("AP", results["bbox"])
        self.assertEqual(results["inference"]["images"], self.num_val)


if __name__ == "__main__":
    unittest.main()
