"""Inference's per-level step on hand-made logits: which (anchor, class) pairs pass the score
threshold, how many are kept, and the boxes they decode to."""

import math
import unittest

import torch

import retinafocal  # noqa: F401
from detectron2.modeling import build_model

from .common import small_retinanet_cfg


def model_with(thresh: float, topk: int):
    """A 3-class FocalRetinaNet whose inference keeps the top ``topk`` above ``thresh``."""
    model = build_model(small_retinanet_cfg(num_classes=3)).eval()
    for name in ("test_score_thresh", "test_topk_candidates"):
        assert hasattr(model, name), name
    model.test_score_thresh, model.test_topk_candidates = thresh, topk
    return model


ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0], [5.0, 5.0, 9.0, 25.0]])
# Deltas that move every anchor, so that an anchor paired with another's deltas shows.
DELTAS = torch.tensor([[0.1, -0.2, 0.0, 0.3], [-0.3, 0.1, 0.2, -0.1], [0.2, 0.2, -0.4, 0.1]])


class TestDecodeLevel(unittest.TestCase):
    def decode(self, model, logits):
        return model._decode_level(ANCHORS, logits, DELTAS)

    def expected_boxes(self, model, anchor_idxs):
        idx = torch.tensor(anchor_idxs)
        return model.box2box_transform.apply_deltas(DELTAS[idx], ANCHORS[idx])

    def test_pairs_above_the_threshold_by_score(self):
        """Threshold 0.5: logit 0 scores exactly 0.5 and is out (scores must exceed it); a logit
        just above 0, inside the pre-filter's float margin, is in."""
        model = model_with(0.5, 10)
        logits = torch.tensor([[-5.0, 0.0, 2.0], [5e-5, -1.0, -3.0], [-2.0, 4.0, 1.0]])
        boxes, scores, classes = self.decode(model, logits)
        # Flat indices 7 (4.0), 2 (2.0), 8 (1.0), 3 (5e-5): anchor = idx // 3, class = idx % 3.
        self.assertEqual(classes.dtype, torch.int64)
        self.assertEqual(classes.tolist(), [1, 2, 2, 0])
        torch.testing.assert_close(scores, torch.tensor([4.0, 2.0, 1.0, 5e-5]).sigmoid())
        torch.testing.assert_close(boxes, self.expected_boxes(model, [2, 0, 2, 1]))

    def test_top_k_keeps_the_highest(self):
        model = model_with(0.5, 2)
        logits = torch.tensor([[-5.0, 0.0, 2.0], [3.0, -1.0, -3.0], [-2.0, 4.0, 1.0]])
        boxes, scores, classes = self.decode(model, logits)
        self.assertEqual(classes.tolist(), [1, 0])
        torch.testing.assert_close(scores, torch.tensor([4.0, 3.0]).sigmoid())
        torch.testing.assert_close(boxes, self.expected_boxes(model, [2, 1]))

    def test_threshold_zero_keeps_every_pair(self):
        """Scores are never 0 for finite logits, so threshold 0 keeps all Ri x K pairs."""
        model = model_with(0.0, 100)
        logits = torch.tensor([[-30.0, 0.0, 2.0], [3.0, -1.0, -3.0], [-2.0, 4.0, 1.0]])
        boxes, scores, classes = self.decode(model, logits)
        order = logits.reshape(-1).argsort(descending=True)
        self.assertEqual(classes.tolist(), (order % 3).tolist())
        torch.testing.assert_close(scores, logits.reshape(-1)[order].sigmoid())
        torch.testing.assert_close(boxes, self.expected_boxes(model, (order // 3).tolist()))

    def test_threshold_one_keeps_nothing(self):
        """No sigmoid exceeds 1 (and logit(1) is infinite, not a division by zero)."""
        model = model_with(1.0, 100)
        boxes, scores, classes = self.decode(model, torch.full((3, 3), 50.0))
        self.assertEqual((boxes.shape, scores.shape, classes.shape), ((0, 4), (0,), (0,)))

    def test_default_threshold_margin(self):
        """At the default 0.05, a logit 5e-5 above logit(0.05) scores above 0.05 and is kept."""
        model = model_with(0.05, 100)
        x = math.log(0.05 / 0.95) + 5e-5
        logits = torch.tensor([[x, -10.0, -10.0], [-10.0] * 3, [-10.0] * 3])
        boxes, scores, classes = self.decode(model, logits)
        self.assertEqual(classes.tolist(), [0])
        torch.testing.assert_close(boxes, self.expected_boxes(model, [0]))


if __name__ == "__main__":
    unittest.main()
