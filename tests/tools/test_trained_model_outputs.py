"""tools/trained_model_outputs.py, which measures the head outputs that the benchmark's realistic
regime imitates: candidates above the score threshold per image, and the outputs' spread."""
import math
import unittest

import torch

import retinafocal  # noqa: F401
from detectron2.modeling import build_model

from ..modeling.common import make_inputs, small_retinanet_cfg
from .common import load_script


class TestTrainedModelOutputs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.script = load_script("trained_model_outputs")

    def test_candidates_are_the_pairs_above_the_threshold(self):
        torch.manual_seed(0)
        model = build_model(small_retinanet_cfg(num_classes=3)).eval()
        score = model.head.cls_score
        with torch.no_grad():
            # Constant logits: class 0 at 0 (score 0.5), classes 1 and 2 at -10 (score 5e-5).
            score.weight.zero_()
            score.bias.copy_(torch.tensor([0.0, -10.0, -10.0]).repeat(score.bias.numel() // 3))
        image = make_inputs(num_images=1, size=(96, 128))[0]
        record = self.script.image_outputs(model, {"image": image["image"]})
        # 96 x 128 (divisible by 32): P3-P7 have 12x16, 6x8, 3x4, 2x2, 1x1 positions, 9 anchors.
        anchors = 9 * (192 + 48 + 12 + 4 + 1)
        self.assertEqual(record["pairs"], 3 * anchors)
        self.assertEqual(record["candidates"], anchors)  # class 0 of every anchor
        self.assertAlmostEqual(record["logit_max"], 0.0)
        self.assertAlmostEqual(record["logit_min"], -10.0)
        # A third at 0, two thirds at -10: variance 1/3 (20/3)^2 + 2/3 (10/3)^2 = 600/27.
        self.assertAlmostEqual(record["logit_std"], math.sqrt(600 / 27), places=2)

    def test_summary_ranges_over_images(self):
        records = [
            {"candidates": c, "objects": o, "pairs": 1000, "logit_mean": -4.0, "logit_std": s,
             "logit_min": -9.0, "logit_max": m, "delta_std": 0.3, "delta_abs_max": 2.0}
            for c, o, s, m in ((100, 2, 0.5, 3.0), (300, 3, 0.7, 4.0), (50, 0, 0.6, 1.0))
        ]
        summary = self.script.summarize_outputs(records)
        self.assertEqual(summary["images"], 3)
        self.assertEqual(summary["candidates_per_image"]["median"], 100)
        self.assertEqual((summary["candidates_per_image"]["min"],
                          summary["candidates_per_image"]["max"]), (50, 300))  # fmt: skip
        # Per object over the images with objects only: 50 and 100.
        self.assertEqual(summary["candidates_per_object"]["median"], 75)
        self.assertAlmostEqual(summary["logit_std"], 0.6)
        self.assertEqual(summary["logit_range"], [-9.0, 4.0])


if __name__ == "__main__":
    unittest.main()
