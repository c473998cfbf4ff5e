"""FocalRetinaNet.label_anchors on hand-computed cases: which anchors are positives (and of which
class), background (label K) or ignored (-1), and which box each positive regresses to."""
import unittest

import torch

import retinafocal  # noqa: F401  (compat first)
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from .common import small_retinanet_cfg

K = 3  # classes; label K = background

# IoU with GT 0 = [0, 0, 10, 10] (class 2) or GT 1 = [100, 100, 120, 120] (class 0):
ANCHORS = torch.tensor(
    [
        [0, 0, 10, 10],  # 0: IoU 1.00 with GT 0 -> class 2
        [0, 0, 10, 12],  # 1: IoU 0.83 with GT 0 -> class 2
        [0, 0, 10, 22],  # 2: IoU 0.45 with GT 0 -> ignored (between 0.4 and 0.5)
        [20, 20, 30, 30],  # 3: no overlap -> background
        [100, 100, 120, 126],  # 4: IoU 0.77 with GT 1 -> class 0
        [100, 100, 120, 160],  # 5: IoU 0.33 with GT 1, below 0.4 -> background
        [40, 40, 50, 75],  # 6: IoU 0.29 with GT 2 of the second image (its best anchor)
    ],
    dtype=torch.float32,
)


def instances(boxes, classes):
    inst = Instances((200, 200))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


class TestLabelAnchors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cfg = small_retinanet_cfg(num_classes=K)
        torch.manual_seed(0)
        cls.model = build_model(cls.cfg)

    def label(self, gt_instances, anchors=ANCHORS, model=None):
        # Two "levels", as the model sees them: the labels run over their concatenation.
        levels = [Boxes(anchors[:4]), Boxes(anchors[4:])]
        return (model or self.model).label_anchors(levels, gt_instances)

    def test_positive_background_and_ignored(self):
        image = instances([[0, 0, 10, 10], [100, 100, 120, 120]], [2, 0])
        (labels,), (boxes,) = self.label([image])
        self.assertEqual(labels.dtype, torch.int64)
        self.assertEqual(labels.tolist(), [2, 2, -1, K, 0, K, K])
        self.assertTrue(torch.equal(boxes[:2], torch.tensor([[0.0, 0, 10, 10]] * 2)))
        self.assertTrue(torch.equal(boxes[4], torch.tensor([100.0, 100, 120, 120])))

    def test_low_quality_match_keeps_every_object(self):
        """GT 2's best anchor (IoU 0.29) is made positive: MODEL.RETINAFOCAL.
        ALLOW_LOW_QUALITY_MATCHES is on by default, as in detectron2."""
        self.assertTrue(self.cfg.MODEL.RETINAFOCAL.ALLOW_LOW_QUALITY_MATCHES)
        image = instances([[40, 40, 50, 50]], [1])
        (labels,), (boxes,) = self.label([image])
        self.assertEqual(labels.tolist(), [K, K, K, K, K, K, 1])
        self.assertTrue(torch.equal(boxes[6], torch.tensor([40.0, 40, 50, 50])))

    def test_each_image_labelled_on_its_own(self):
        first = instances([[0, 0, 10, 10], [100, 100, 120, 120]], [2, 0])
        second = instances([[40, 40, 50, 50]], [1])
        empty = instances([], [])
        labels, boxes = self.label([first, empty, second])
        self.assertEqual([lab.tolist() for lab in labels], [
            [2, 2, -1, K, 0, K, K],
            [K] * 7,
            [K, K, K, K, K, K, 1],
        ])  # fmt: skip
        self.assertEqual([tuple(b.shape) for b in boxes], [(7, 4)] * 3)

    def test_image_without_objects_is_all_background(self):
        (labels,), (boxes,) = self.label([instances([], [])])
        self.assertEqual(labels.tolist(), [K] * 7)
        self.assertEqual(labels.dtype, torch.int64)
        self.assertTrue(torch.equal(boxes, torch.zeros(7, 4)))

    def test_ignored_label_of_the_matcher_is_kept_without_objects(self):
        """A matcher whose lowest IoU interval is "ignored" (IOU_LABELS [-1, 0, 1]) ignores every
        anchor of an image without objects: they must not become background."""
        cfg = small_retinanet_cfg(num_classes=K)
        cfg.MODEL.RETINANET.IOU_LABELS = [-1, 0, 1]
        model = build_model(cfg)
        (labels,), _ = self.label([instances([], [])], model=model)
        self.assertEqual(labels.tolist(), [-1] * 7)
        (labels,), _ = self.label([instances([[0, 0, 10, 10]], [1])], model=model)
        self.assertEqual(labels.tolist(), [1, 1, K, -1, -1, -1, -1])  # 0.45: background


if __name__ == "__main__":
    unittest.main()
