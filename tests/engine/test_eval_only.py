"""``--eval-only`` with the final checkpoint reproduces the evaluation printed after training."""
import math
import os
import unittest

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


if __name__ == "__main__":
    unittest.main()
