"""Binary terms per positive anchor: counted by hand on a 16-anchor layout through the model's
own anchor generator and matcher, and on a registered dataset through a grid's overrides."""
import json
import math
import os
import tempfile
import unittest

import torch

import retinafocal  # noqa: F401  (compat first)
from paper.imbalance import ImbalanceStats, count_anchor_labels, imbalance_of_config
from paper.imbalance import measure_imbalance

from ..engine.common import embedded_yacs_cfg
from .common import EMBEDDED_CONFIG

# One anchor of 32 x 32 px per position of P5 (stride 32): on a 128 px image a 4 x 4 grid with
# centres at 0, 32, 64, 96 (detectron2's offset 0), so anchor (i, j) is
# [32 j - 16, 32 i - 16, 32 j + 16, 32 i + 16]. IoU thresholds 0.4 / 0.5.
ONE_LEVEL = [
    "MODEL.RETINANET.IN_FEATURES", "['p5']",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[32.0]]",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]",
]  # fmt: skip


def _record(boxes, size=128):
    """A dataset dict with XYXY ``boxes`` of class 0 (BoxMode.XYXY_ABS = 0)."""
    return {"file_name": "unused.png", "image_id": 1, "height": size, "width": size,
            "annotations": [{"bbox": list(b), "bbox_mode": 0, "category_id": 0, "iscrowd": 0}
                            for b in boxes]}  # fmt: skip


class TestCounts(unittest.TestCase):
    def test_count_anchor_labels(self):
        # K = 3: classes 0-2, 3 = background, -1 = ignored.
        labels = torch.tensor([[0, 3, 3, -1, 2], [3, 3, 1, 3, -1]])
        self.assertEqual(count_anchor_labels(labels, 3), (10, 3, 2))
        self.assertEqual(count_anchor_labels(torch.zeros(0, dtype=torch.int64), 3), (0, 0, 0))
        with self.assertRaisesRegex(ValueError, r"must lie in \[-1, 3\]"):
            count_anchor_labels(torch.tensor([4]), 3)

    def test_stats_arithmetic(self):
        s = ImbalanceStats("d", num_images=2, num_classes=80, anchors=6048, positives=20,
                           ignored=48, objects=4)  # fmt: skip
        self.assertEqual(s.terms, (6048 - 48) * 80)
        self.assertEqual(s.terms_per_positive, 6000 * 80 / 20)
        self.assertEqual((s.anchors_per_image, s.positives_per_image), (3024, 10))
        self.assertEqual(ImbalanceStats.from_json(s.to_json()), s)
        none = ImbalanceStats("d", 1, 5, 10, 0, 0, 0)
        self.assertTrue(math.isinf(none.terms_per_positive))


class TestMeasuredWithTheModelsMatcher(unittest.TestCase):
    def test_hand_computed_layout(self):
        cfg = embedded_yacs_cfg(ONE_LEVEL)
        # Box A = anchor (1, 1) exactly: IoU 1, positive; it only touches its neighbours.
        # Box B (60 x 32 px): IoU 1024 / 1920 = 0.53 with anchor (3, 1) [16, 80, 48, 112]:
        # positive; 896 / 2048 = 0.44 with anchor (3, 2) [48, 80, 80, 112]: ignored.
        image = _record([[16, 16, 48, 48], [16, 80, 76, 112]])
        stats = measure_imbalance(cfg, [image], dataset="hand")
        self.assertEqual((stats.num_images, stats.num_classes), (1, 5))
        self.assertEqual((stats.anchors, stats.positives, stats.ignored), (16, 2, 1))
        self.assertEqual(stats.objects, 2)
        self.assertEqual(stats.terms_per_positive, (16 - 1) * 5 / 2)

        # Two images, the second empty (16 negatives): the ratio is of the sums.
        stats = measure_imbalance(cfg, [image, _record([])])
        self.assertEqual((stats.anchors, stats.positives, stats.ignored), (32, 2, 1))
        self.assertEqual(stats.terms_per_positive, (32 - 1) * 5 / 2)

        # 80 classes: 16x the terms per positive of 5.
        cfg80 = embedded_yacs_cfg(ONE_LEVEL + ["MODEL.RETINANET.NUM_CLASSES", "80"])
        self.assertEqual(measure_imbalance(cfg80, [image]).terms_per_positive, 15 * 80 / 2)

    def test_training_resize_applies(self):
        # A 64 px image with box A at half scale is resized to 128 px by the training resize
        # (MIN_SIZE_TRAIN 128): then it is anchor (1, 1) exactly, as above.
        cfg = embedded_yacs_cfg(ONE_LEVEL)
        stats = measure_imbalance(cfg, [_record([[8, 8, 24, 24]], size=64)])
        self.assertEqual((stats.anchors, stats.positives, stats.ignored), (16, 1, 0))

    def test_recipe_layout_on_a_registered_dataset(self):
        # The recipe's 9 anchors on P3-P5: 9 x (16^2 + 8^2 + 4^2) = 3024 per 128 px image;
        # a 24 px box matches a handful of them.
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "images"))
            json_file = os.path.join(tmp, "a.json")
            with open(json_file, "w") as f:
                json.dump({"images": [{"id": 1, "file_name": "x.png", "height": 128,
                                       "width": 128}],
                           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                            "bbox": [40, 40, 24, 24], "area": 576,
                                            "iscrowd": 0}],
                           "categories": [{"id": 1, "name": "a"}]}, f)  # fmt: skip
            opts = ["DATASETS.COCO_JSON", repr([["imb_test_train", json_file,
                                                  os.path.join(tmp, "images")]]),
                    "DATASETS.TRAIN", "('imb_test_train',)",
                    "MODEL.RETINANET.NUM_CLASSES", "1"]  # fmt: skip
            stats = imbalance_of_config(EMBEDDED_CONFIG, opts)
        self.assertEqual(stats.dataset, "imb_test_train")
        self.assertEqual(stats.anchors, 3024)
        self.assertTrue(1 <= stats.positives <= 9, stats)
        self.assertEqual(stats.terms_per_positive, (3024 - stats.ignored) / stats.positives)


if __name__ == "__main__":
    unittest.main()
