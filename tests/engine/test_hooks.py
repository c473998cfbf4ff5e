"""The predictions figure: ground truth on top, detections above the threshold below."""
import os
import tempfile
import unittest

import numpy as np
import retinafocal  # noqa: F401  (compat first, before detectron2)
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from retinafocal.engine.hooks import draw_predictions


class _FixedDetector(torch.nn.Module):
    """Returns the same two detections (scores 0.9 and 0.2) for every image; records the mode it
    was called in."""

    def __init__(self):
        super().__init__()
        self.calls_in_training_mode = []

    def forward(self, batched_inputs):
        self.calls_in_training_mode.append(self.training)
        out = []
        for x in batched_inputs:
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 20.0, 20.0], [5.0, 5.0, 9.0, 9.0]]))
            inst.scores = torch.tensor([0.9, 0.2])
            inst.pred_classes = torch.tensor([0, 1])
            out.append({"instances": inst})
        return out


class TestDrawPredictions(unittest.TestCase):
    def test_figure_layout_mode_and_threshold(self):
        with tempfile.TemporaryDirectory() as root:
            dicts = []
            for i, (h, w) in enumerate([(32, 48), (32, 48), (32, 48)]):
                path = os.path.join(root, f"{i}.png")
                Image.fromarray(np.full((h, w, 3), 40, np.uint8)).save(path)
                dicts.append({"file_name": path, "height": h, "width": w, "annotations": []})
            model = _FixedDetector().train()
            meta = MetadataCatalog.get("rf_test_draw_predictions")
            meta.thing_classes = ["a", "b"]

            def mapper(d):
                return {"image": torch.zeros(3, d["height"], d["width"]), **d}

            high = draw_predictions(model, dicts, mapper, meta, score_thresh=0.5, scale=2.0)
            low = draw_predictions(model, dicts, mapper, meta, score_thresh=0.1, scale=2.0)

        # 2 rows (truth, predictions) x 3 images of 64 x 96 px (scale 2), 4 px apart.
        self.assertEqual(high.shape, (2 * 64 + 4, 3 * 96 + 2 * 4, 3))
        self.assertEqual(high.dtype, np.uint8)
        self.assertEqual(model.calls_in_training_mode, [False] * 6)
        self.assertTrue(model.training)  # put back in training mode
        # The top row (no ground truth) is the plain image; the bottom row has boxes drawn, and
        # the lower threshold draws more.
        top, bottom_high, bottom_low = high[:64, :96], high[68:, :96], low[68:, :96]
        self.assertTrue((top == 40).all())
        self.assertGreater((bottom_high != 40).sum(), 0)
        self.assertGreater((bottom_low != 40).sum(), (bottom_high != 40).sum())


if __name__ == "__main__":
    unittest.main()
