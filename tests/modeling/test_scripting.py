"""TorchScript scripting: ``scripting_with_instances(FocalRetinaNet)`` gives the eager model's
detections on embedded images (detectron2's own RetinaNet scripting test, on our model), also
with frozen BatchNorm folded and a reduced precision; the anchor matcher and the folded conv
script on their own."""
import math
import os
import unittest

import numpy as np
import torch
from torch import Tensor

import retinafocal  # noqa: F401  (compat first: detectron2.export without caffe2 on v0.6)
from detectron2.config import get_cfg
from detectron2.export import scripting_with_instances
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes
from detectron2.utils.testing import assert_instances_allclose, convert_scripted_instances
from retinafocal import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file
from retinafocal.data.shapes import ShapesSpec, draw_shapes_image
from retinafocal.modeling.frozen_bn import FrozenBNFoldedConv2d
from retinafocal.modeling.matcher import ChunkedIoUMatcher

from .common import make_inputs, small_retinanet_cfg
from .test_frozen_bn import random_statistics
from .test_precision import spread_logits

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}


def embedded_images(count: int, size: int = 128):
    """(3, size, size) float BGR images of the embedded shapes dataset, as the model reads them."""
    spec = ShapesSpec(image_size=size)
    images = []
    for i in range(count):
        rgb, _ = draw_shapes_image(spec, np.random.default_rng(i))
        images.append(torch.as_tensor(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))))
    return [x.float() for x in images]


def embedded_model(memory_format: str = "NCHW"):
    """The embedded recipe's model, untrained, with its class bias set so that 0.2% of the
    (anchor, class) pairs of the first image (of 15k) pass the score threshold: some dozens of
    detections, whose number differs between images."""
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, os.path.join(REPO_ROOT, "configs", "Embedded",
                                      "retinanet_R18_FPN_shapes.yaml"))  # fmt: skip
    cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT = memory_format
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        images = model.preprocess_image([{"image": embedded_images(1)[0]}])
        features = model.backbone(images.tensor)
        logits, _ = model.head([features[f] for f in model.head_in_features])
        cut = torch.quantile(torch.cat([x.flatten() for x in logits]), 0.998).item()
        model.head.cls_score.bias.add_(math.log(0.05 / 0.95) - cut)
    return model


class TestScriptingWithInstances(unittest.TestCase):
    def _check(self, model):
        scripted = scripting_with_instances(model, FIELDS)
        counts = []
        for image in embedded_images(3):
            inputs = [{"image": image}] * 2  # as detectron2's test: a batch of two
            with torch.no_grad():
                eager = model(inputs)[0]["instances"]
                ours = convert_scripted_instances(scripted(inputs)[0])
            ours = detector_postprocess(ours, image.shape[1], image.shape[2])
            assert_instances_allclose(eager, ours)
            counts.append(len(eager))
        # Detections to compare, a different number on each image.
        self.assertTrue(all(c > 0 for c in counts), counts)
        self.assertGreater(len(set(counts)), 1, counts)

    def test_detectron2_pattern(self):
        self._check(embedded_model())

    def test_channels_last(self):
        self._check(embedded_model("NHWC"))


class TestMatcherScripts(unittest.TestCase):
    def test_scripted_matcher_equals_eager(self):
        g = torch.Generator().manual_seed(0)

        def boxes(n):
            xy = torch.rand(n, 2, generator=g) * 200
            return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 60], dim=1)

        anchors = boxes(3000)
        for low_quality in (False, True):
            # 500 IoU values per chunk: many chunks, the last one partial.
            eager = ChunkedIoUMatcher(thresholds=[0.4, 0.5], labels=[0, -1, 1],
                                      allow_low_quality_matches=low_quality, chunk_elements=500)
            scripted = torch.jit.script(eager)
            for num_gt in (0, 1, 7):
                with self.subTest(low_quality=low_quality, num_gt=num_gt):
                    gt = boxes(num_gt)
                    expected, actual = eager(gt, anchors), scripted(gt, anchors)
                    self.assertTrue(torch.equal(expected[0], actual[0]))
                    self.assertTrue(torch.equal(expected[1], actual[1]))
                    self.assertEqual(actual[1].dtype, torch.int8)
                    if num_gt:
                        self.assertGreater(int((actual[1] == 1).sum()), 0)


class TestFoldedAndReducedPrecisionScript(unittest.TestCase):
    """MODEL.RETINAFOCAL.FOLD_FROZEN_BN and PRECISION under TorchScript (here, not in their own
    test files: mutation testing leaves TorchScript tests out)."""

    def test_folded_conv_scripts(self):
        torch.manual_seed(0)
        conv = Conv2d(4, 6, 3, padding=1, norm=FrozenBatchNorm2d(6))  # no activation function,
        with torch.no_grad():  # as in detectron2's ResNet: a Python function would not script
            random_statistics(conv)
        conv = FrozenBNFoldedConv2d.from_conv(conv).eval()
        scripted = torch.jit.script(conv)
        x = torch.randn(1, 4, 6, 5)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), conv(x), rtol=1e-5, atol=1e-6)
            unfolded = conv.norm(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
            torch.testing.assert_close(scripted(x), unfolded, rtol=1e-4, atol=1e-5)

    def test_bf16_folded_model_scripts_and_runs_in_float32(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.PRECISION = "bf16"
        cfg.MODEL.RETINAFOCAL.FOLD_FROZEN_BN = True
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        spread_logits(model, make_inputs())
        scripted = scripting_with_instances(model, FIELDS)
        inputs = [{"image": x["image"]} for x in make_inputs()]
        model.precision = "fp32"  # the eager reference in float32, as the scripted model runs
        with torch.no_grad():
            eager = model(inputs)
            ours = scripted(inputs)
        for x, y in zip(eager, ours):
            self.assertGreater(len(x["instances"]), 5)
            self.assertEqual(y.scores.dtype, torch.float32)
            y = detector_postprocess(convert_scripted_instances(y), *x["instances"].image_size)
            assert_instances_allclose(x["instances"], y)


if __name__ == "__main__":
    unittest.main()
