"""Figure 4's loss analysis: sample extraction, CDF, half-loss fraction, and the whole tool on a
tiny model whose logits are set by hand, so every expected number follows from the formula."""
import json
import math
import os
import shutil
import tempfile
import unittest

import numpy as np
import torch

import retinafocal  # noqa: F401  (compat first)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from retinafocal import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides
from paper import analyze_loss
from paper.loss_analysis import (
    focal_losses,
    fraction_carrying,
    normalized_loss_cdf,
    signed_logits,
)

from .common import EMBEDDED_CONFIG, TINY_SIZE, one_class_coco

#: The hand-set class biases: class "a" (0) at logit 0, class "b" (1) at logit -2.
BIASES = (0.0, -2.0)


def _fl(x_t: float, gamma: float) -> float:
    """-(1 - p)^gamma log p with p = sigmoid(x_t), by hand."""
    p = 1.0 / (1.0 + math.exp(-x_t))
    return -((1.0 - p) ** gamma) * math.log(p)


class TestSignedLogits(unittest.TestCase):
    def test_hand_case(self):
        logits = torch.tensor([[[1.0, -2.0, 3.0], [0.5, -0.5, 4.0], [9.0, 9.0, 9.0],
                                [-1.0, 2.0, -3.0]]])  # (1, 4, 3)  # fmt: skip
        labels = torch.tensor([[2, 3, -1, 0]])  # class 2, background, ignored, class 0
        pos, neg = signed_logits(logits, labels, 3)
        self.assertEqual(pos.tolist(), [3.0, -1.0])
        self.assertEqual(neg.tolist(), [-0.5, 0.5, -4.0])

    def test_no_foreground_and_no_background(self):
        pos, neg = signed_logits(torch.zeros(2, 5, 4), torch.full((2, 5), -1), 4)
        self.assertEqual((pos.numel(), neg.numel()), (0, 0))

    def test_bad_shapes_and_labels(self):
        with self.assertRaisesRegex(ValueError, "labels must be in"):
            signed_logits(torch.zeros(1, 2, 3), torch.tensor([[0, 4]]), 3)
        with self.assertRaisesRegex(ValueError, r"\(N, R, K=3\)"):
            signed_logits(torch.zeros(1, 2, 2), torch.tensor([[0, 1]]), 3)


class TestCdfAndFraction(unittest.TestCase):
    def test_fraction_carrying_half(self):
        self.assertEqual(fraction_carrying(torch.tensor([1.0, 4.0, 1.0, 1.0, 1.0])), 0.2)
        self.assertEqual(fraction_carrying(torch.tensor([1.0, 1.0, 1.0, 1.0])), 0.5)
        # Three equal losses: one carries 1/3 < 1/2, two carry 2/3.
        self.assertAlmostEqual(fraction_carrying(torch.tensor([2.0, 2.0, 2.0])), 2 / 3)
        self.assertEqual(fraction_carrying(torch.tensor([5.0, 0.0, 0.0, 0.0]), share=1.0), 0.25)

    def test_fraction_of_nothing_is_nan(self):
        self.assertTrue(math.isnan(fraction_carrying(torch.tensor([]))))
        self.assertTrue(math.isnan(fraction_carrying(torch.zeros(3))))
        with self.assertRaises(ValueError):
            fraction_carrying(torch.ones(3), share=0.0)

    def test_cdf_hand_case(self):
        # Losses 3 and 1: the lower half of the samples carries 1/4 of the loss.
        x, y = normalized_loss_cdf(torch.tensor([3.0, 1.0]), points=5)
        np.testing.assert_allclose(x, [0, 0.25, 0.5, 0.75, 1.0])
        np.testing.assert_allclose(y, [0, 0.125, 0.25, 0.625, 1.0])

    def test_cdf_of_zero_loss(self):
        _, y = normalized_loss_cdf(torch.zeros(4), points=3)
        np.testing.assert_array_equal(y, [0, 0, 0])

    def test_focal_losses_match_the_formula(self):
        x = torch.tensor([-3.0, 0.0, 2.0, 8.0])
        for gamma in (0.0, 0.5, 2.0):
            expected = [_fl(float(v), gamma) for v in x]
            np.testing.assert_allclose(focal_losses(x, gamma).numpy(), expected, rtol=1e-9)


class TestAnalyzeLossTool(unittest.TestCase):
    """``python -m paper.analyze_loss`` on a checkpoint whose classification logits are the
    constants BIASES at every anchor, on images whose objects are all of class 0:

    * positives all have x_t = 0: equal losses, a straight CDF, half the loss in half of them;
    * a background anchor gives one negative at x_t = 0 (class 0) and one at x_t = +2 (class 1),
      so half the negatives carry l1 = FL(2) each and half l0 = FL(0), and the CDF at 1/2 is
      l1 / (l0 + l1).
    """

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="rf_analyze_loss_")
        cls.dataset = one_class_coco(os.path.join(cls.tmp, "data"), num_images=2)
        cls.opts = [
            "MODEL.META_ARCHITECTURE", "FocalRetinaNet",
            "MODEL.RETINANET.NUM_CLASSES", "2",
            "MODEL.DEVICE", "cpu",
            "DATASETS.COCO_JSON", repr([cls.dataset]),
            "DATASETS.TEST", repr((cls.dataset[0],)),
            "INPUT.MIN_SIZE_TEST", str(TINY_SIZE),
            "INPUT.MAX_SIZE_TEST", str(TINY_SIZE),
        ]  # fmt: skip
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        merge_yacs_file(cfg, EMBEDDED_CONFIG)
        merge_yacs_overrides(cfg, cls.opts)
        model = build_model(cfg)
        head = model.head
        assert hasattr(head, "cls_score"), "the head's last class conv is named cls_score"
        num_anchors = head.cls_score.out_channels // 2
        with torch.no_grad():
            head.cls_score.weight.zero_()
            # Channel a * K + k is anchor a, class k (detectron2's dense layout).
            head.cls_score.bias.copy_(torch.tensor(BIASES * num_anchors))
        DetectionCheckpointer(model, save_dir=cls.tmp).save("hand_set")
        cls.weights = os.path.join(cls.tmp, "hand_set.pth")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_hand_checked_cdf(self):
        out = os.path.join(self.tmp, "out")
        gammas = ["0", "0.5", "2"]
        analysis = analyze_loss.main(
            ["--config-file", EMBEDDED_CONFIG, "--output", out, "--num-images", "2",
             "--gammas", *gammas, "MODEL.WEIGHTS", self.weights] + self.opts  # fmt: skip
        )
        with open(os.path.join(out, "loss_cdf.json")) as f:
            stored = json.load(f)
        self.assertEqual(stored["half_loss_fraction"], analysis["half_loss_fraction"])
        with open(os.path.join(out, "loss_cdf.png"), "rb") as f:
            self.assertEqual(f.read(4), b"\x89PNG")

        num_pos, num_neg = analysis["num_positives"], analysis["num_negatives"]
        self.assertEqual(analysis["num_images"], 2)
        self.assertGreaterEqual(num_pos, 4)  # each of the 4 objects has a matched anchor
        self.assertEqual(num_neg % 2, 0)  # two classes per background anchor
        num_bg = num_neg // 2
        fractions = np.asarray(stored["curves"]["fraction"])
        for g in gammas:
            gamma = float(g)
            with self.subTest(gamma=gamma):
                # Positives: all equal.
                self.assertAlmostEqual(analysis["half_loss_fraction"]["positives"][g],
                                       math.ceil(num_pos / 2) / num_pos)  # fmt: skip
                np.testing.assert_allclose(stored["curves"]["positives"][g], fractions, atol=1e-5)
                # Negatives: num_bg at l0 (the hardest), num_bg at l1.
                l0, l1 = _fl(0.0, gamma), _fl(2.0, gamma)
                top_needed = math.ceil(0.5 * num_bg * (l0 + l1) / l0 - 1e-9)
                self.assertAlmostEqual(analysis["half_loss_fraction"]["negatives"][g],
                                       top_needed / num_neg)  # fmt: skip
                half = stored["curves"]["negatives"][g][len(fractions) // 2]
                self.assertAlmostEqual(half, l1 / (l0 + l1), places=5)
        # Focusing moves the negatives' loss onto the hard half.
        neg = analysis["half_loss_fraction"]["negatives"]
        self.assertLess(neg["2"], neg["0"])

    def test_errors_name_the_problem(self):
        analyze_model = analyze_loss.analyze_model
        with self.assertRaisesRegex(KeyError, "no_such_dataset"):
            analyze_model(EMBEDDED_CONFIG, self.opts + ["MODEL.WEIGHTS", self.weights],
                          dataset="no_such_dataset", num_images=1)  # fmt: skip
        with self.assertRaisesRegex(ValueError, "MODEL.WEIGHTS"):
            analyze_model(EMBEDDED_CONFIG, self.opts, num_images=1)
        with self.assertRaisesRegex(FileNotFoundError, "missing.yaml"):
            analyze_model("missing.yaml", [], num_images=1)


if __name__ == "__main__":
    unittest.main()
