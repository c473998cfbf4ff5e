import copy
import math
import unittest

import torch

import retinafocal  # noqa: F401
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from retinafocal.modeling import FocalRetinaNet, RetinaFocalHead

from .common import make_inputs, small_retinanet_cfg, spy_on_classification_loss


def build(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def train_losses(model, inputs):
    model.train()
    with EventStorage(0):
        return model(copy.deepcopy(inputs))


class TestFocalRetinaNet(unittest.TestCase):
    def test_registered_and_built_from_yacs(self):
        model = build(small_retinanet_cfg())
        self.assertIsInstance(model, FocalRetinaNet)
        self.assertIsInstance(model.head, RetinaFocalHead)

    def test_nine_anchors_covering_32_to_813_pixels(self):
        cfg = small_retinanet_cfg()
        model = build(cfg)
        self.assertEqual(model.anchor_generator.num_cell_anchors, [9] * 5)
        sides = []
        for cell in model.anchor_generator.cell_anchors:
            wh = cell[:, 2:] - cell[:, :2]
            sides.append((wh[:, 0] * wh[:, 1]).sqrt())
        sides = torch.cat(sides)
        self.assertAlmostEqual(sides.min().item(), 32.0, places=3)
        self.assertAlmostEqual(sides.max().item(), 812.75, places=2)  # 512 * 2 ** (2 / 3)
        ratios = set()
        for cell in model.anchor_generator.cell_anchors:
            wh = cell[:, 2:] - cell[:, :2]
            ratios.update(round(r, 3) for r in (wh[:, 1] / wh[:, 0]).tolist())
        self.assertEqual(ratios, {0.5, 1.0, 2.0})

    def test_prior_bias_is_minus_log_99(self):
        model = build(small_retinanet_cfg())
        bias = model.head.cls_score.bias
        self.assertTrue(torch.allclose(bias, torch.full_like(bias, -math.log(99.0))))
        for conv in [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]:
            self.assertLess(abs(conv.weight.std().item() - 0.01), 0.002)

    def test_head_with_group_norm_trains(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINANET.NORM = "GN"
        model = build(cfg)
        self.assertTrue(any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules()))
        losses = train_losses(model, make_inputs())
        sum(losses.values()).backward()
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))

    def test_empty_ground_truth(self):
        losses = train_losses(build(small_retinanet_cfg()), make_inputs(with_boxes=False))
        self.assertGreater(losses["loss_cls"].item(), 0)
        self.assertEqual(losses["loss_box_reg"].item(), 0)

    def test_one_box_gives_both_losses(self):
        inputs = make_inputs(num_images=1)
        inputs[0]["instances"] = inputs[0]["instances"][:1]
        losses = train_losses(build(small_retinanet_cfg()), inputs)
        self.assertGreater(losses["loss_cls"].item(), 0)
        self.assertGreater(losses["loss_box_reg"].item(), 0)

    def test_class_index_k_or_more_names_num_classes(self):
        """Class K would silently train as background (K is the background label), and more
        would fail inside the loss: both stop here, naming the key."""
        model = build(small_retinanet_cfg(num_classes=3))
        for bad in (3, 7):
            inputs = make_inputs(num_images=1)
            inputs[0]["instances"].gt_classes[1] = bad
            with self.subTest(bad=bad), self.assertRaises(ValueError) as ctx:
                train_losses(model, inputs)
            message = str(ctx.exception)
            self.assertIn(f"class index {bad} (image 0 of the batch)", message)
            self.assertIn("model of 3 classes", message)
            self.assertIn("MODEL.RETINANET.NUM_CLASSES", message)

    def test_class_check_names_the_first_image_with_the_top_class(self):
        """The message in full; images without objects are skipped, K - 1 is valid."""
        model = build(small_retinanet_cfg(num_classes=3))

        def instances(*classes):
            inst = Instances((8, 8))
            inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
            return inst

        model._check_gt_classes([instances(), instances()])
        model._check_gt_classes([instances(), instances(2, 0), instances(1)])
        # A one-class model and a batch without objects: nothing to check, whatever K is.
        build(small_retinanet_cfg(num_classes=1))._check_gt_classes([instances(), instances()])
        with self.assertRaises(ValueError) as ctx:
            model._check_gt_classes([instances(), instances(3, 0), instances(1, 5), instances(5)])
        self.assertEqual(str(ctx.exception), (
            "An object of class index 5 (image 2 of the batch) reached a model of 3 classes "
            "(indices 0..2; MODEL.RETINANET.NUM_CLASSES, LazyConfig model.num_classes). Set it "
            "to the dataset's number of categories, or MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET "
            "True to take it from the training datasets."))  # fmt: skip

    def test_normalised_by_positive_anchors(self):
        model = build(small_retinanet_cfg())
        inputs = make_inputs()
        model.train()
        with EventStorage(0) as storage:
            losses = model(copy.deepcopy(inputs))
            num_pos_per_image = storage.latest()["num_pos_anchors"][0]
        calls = spy_on_classification_loss(model)
        with EventStorage(0):
            losses = model(copy.deepcopy(inputs))
        expected = calls[0] / (num_pos_per_image * len(inputs))
        self.assertTrue(torch.allclose(losses["loss_cls"], expected))

    def test_nan_input_gives_non_finite_losses_and_no_error(self):
        """The model leaves the check to the trainer (tests/engine/test_nan.py): it returns its
        losses as computed, with no host sync to test them."""
        for value, pixels in ((float("nan"), (1, 0, 5, 5)), (float("inf"), (0, slice(None), 2, 3))):
            inputs = make_inputs()
            inputs[pixels[0]]["image"][pixels[1:]] = value
            losses = train_losses(build(small_retinanet_cfg()), inputs)
            self.assertFalse(torch.isfinite(losses["loss_cls"]), value)

    def test_diagnostics_in_event_storage(self):
        shares = {}
        for gamma in (0.0, 2.0):
            cfg = small_retinanet_cfg()
            cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 1
            cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = gamma
            model = build(cfg)
            model.train()
            with EventStorage(0) as storage:
                model(make_inputs())
                latest = storage.latest()
            for key in ("num_pos_anchors", "num_ignored_anchors", "cls_loss_share_easy_neg",
                        "cls_loss_share_hard_neg"):
                self.assertIn(f"imbalance/{key}", latest)
            shares[gamma] = latest["imbalance/cls_loss_share_easy_neg"][0]
        # At the prior init (p = 0.01) every negative is easy. Under CE their sheer number makes
        # them most of the loss; the focal term (gamma = 2) removes nearly all of it (Sec. 3.2).
        self.assertGreater(shares[0.0], 0.5)
        self.assertLess(shares[2.0], 0.01)

    def test_inference_output_format(self):
        cfg = small_retinanet_cfg()
        model = build(cfg)
        with torch.no_grad():
            model.head.cls_score.bias.zero_()  # p = 0.5 everywhere: many candidates
        model.eval()
        inputs = make_inputs(num_images=2)
        inputs[1]["height"], inputs[1]["width"] = 192, 256  # rescaled output
        with torch.no_grad():
            outputs = model(inputs)
        self.assertEqual(len(outputs), 2)
        inst = outputs[1]["instances"]
        self.assertEqual(inst.image_size, (192, 256))
        self.assertGreater(len(inst), 0)
        self.assertLessEqual(len(inst), cfg.TEST.DETECTIONS_PER_IMAGE)
        self.assertTrue((inst.scores[:-1] >= inst.scores[1:]).all())
        self.assertTrue((inst.scores > cfg.MODEL.RETINANET.SCORE_THRESH_TEST).all())

    def test_inputs_without_height_or_width_keep_the_image_size(self):
        """An input without "height" or "width" (a bare image, as a demo passes it) gives
        detections at the image's own size in that dimension: the same as when it is given."""
        model = build(small_retinanet_cfg())
        with torch.no_grad():
            model.head.cls_score.bias.zero_()  # p = 0.5 everywhere: many candidates
        model.eval()
        sized = make_inputs(num_images=1, size=(96, 128))
        with torch.no_grad():
            expected = model(copy.deepcopy(sized))[0]["instances"]
        self.assertGreater(len(expected), 0)
        for missing in (("height",), ("width",), ("height", "width")):
            with self.subTest(missing=missing):
                bare = [{k: v for k, v in sized[0].items() if k not in missing}]
                with torch.no_grad():
                    actual = model(bare)[0]["instances"]
                self.assertEqual(actual.image_size, (96, 128))
                self.assertTrue(torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor))

    def test_score_threshold_above_every_score_gives_nothing(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.999
        model = build(cfg).eval()
        with torch.no_grad():
            outputs = model(make_inputs(num_images=1))
        self.assertEqual(len(outputs[0]["instances"]), 0)


class TestTrainingVisualization(unittest.TestCase):
    """VIS_PERIOD: the model shows its training inputs, which it rebuilds from the batch."""

    def inputs(self):
        # Two sizes, so the second image is padded in the batch; uint8, as the mapper gives.
        inputs = make_inputs(1, size=(96, 128)) + make_inputs(1, size=(64, 80), seed=1)
        for x in inputs:
            x["image"] = x["image"].to(torch.uint8)
        return inputs

    def test_rebuilt_inputs_equal_the_inputs(self):
        model = build(small_retinanet_cfg())
        inputs = self.inputs()
        images = model.preprocess_image(inputs)
        rebuilt = model._inputs_for_visualization(images, [x["instances"] for x in inputs])
        for before, after in zip(inputs, rebuilt):
            self.assertTrue(torch.equal(before["image"], after["image"]))
            self.assertIs(before["instances"], after["instances"])

    def test_rebuilt_with_any_pixel_std_and_saturated_to_uint8(self):
        """With a pixel std other than 1 (torchvision's) the uint8 inputs come back exactly;
        float pixels outside [0, 255] (as photometric augmentations give) saturate at 0 and
        255 rather than wrap around in the uint8 cast."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
        model = build(cfg)
        inputs = self.inputs()
        inputs[1]["image"] = inputs[1]["image"].float()
        inputs[1]["image"][0, :2, :3] = torch.tensor([[-20.0, -0.6, 255.4], [255.6, 256.0, 300.0]])
        expected = inputs[1]["image"].round().clamp(0, 255).to(torch.uint8)
        self.assertEqual(expected[0, :2, :3].tolist(), [[0, 0, 255], [255, 255, 255]])
        images = model.preprocess_image(inputs)
        rebuilt = model._inputs_for_visualization(images, [x["instances"] for x in inputs])
        for before, after in zip((inputs[0]["image"], expected), rebuilt):
            self.assertEqual(after["image"].dtype, torch.uint8)
            self.assertTrue(torch.equal(before, after["image"]))

    def test_vis_period_stores_an_image(self):
        cfg = small_retinanet_cfg()
        cfg.VIS_PERIOD = 2
        model = build(cfg).train()
        stored = []
        for it in (0, 1):
            with EventStorage(it) as storage:
                model(self.inputs())
            stored.append(storage._vis_data)
        self.assertEqual(len(stored[1]), 0)  # iteration 1 is not a multiple of 2
        ((_, image, _),) = stored[0]
        self.assertEqual(image.shape, (3, 2 * 96, 128))  # ground truth above predictions


class TestMemoryFormat(unittest.TestCase):
    """MODEL.RETINAFOCAL.MEMORY_FORMAT = "NHWC": channels-last weights and inputs, same model."""

    def build_pair(self):
        nchw = build(small_retinanet_cfg())
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT = "NHWC"
        nhwc = build(cfg, seed=1)  # other weights, so the load below has something to do
        nhwc.load_state_dict(nchw.state_dict(), strict=True)
        return nchw, nhwc

    def test_weights_and_feature_maps_are_channels_last(self):
        nchw, nhwc = self.build_pair()
        convs = [p for p in nhwc.parameters() if p.dim() == 4]
        self.assertGreater(len(convs), 20)
        # load_state_dict copied NCHW tensors into the model without changing its layout.
        for p in convs:
            self.assertTrue(p.is_contiguous(memory_format=torch.channels_last))
        self.assertTrue(all(p.is_contiguous() for p in nchw.parameters()))
        # The batched image is plain NCHW; the first convolution's channels-last weights make
        # its output, and from there every feature map and head output, channels-last.
        for model, channels_last in ((nhwc, True), (nchw, False)):
            with torch.no_grad():
                images = model.preprocess_image(make_inputs())
                stem = model.backbone.bottom_up.stem(images.tensor)
                features = model.backbone(images.tensor)
                logits, deltas = model.head([features[f] for f in model.head_in_features])
            maps = [stem, *features.values(), *logits, *deltas]
            for x in [m for m in maps if m.shape[2] * m.shape[3] > 1]:  # 1x1: both layouts
                self.assertEqual(x.is_contiguous(memory_format=torch.channels_last),
                                 channels_last)  # fmt: skip
                self.assertEqual(x.is_contiguous(), not channels_last)

    def test_same_losses_gradients_and_detections_as_nchw(self):
        nchw, nhwc = self.build_pair()
        inputs = make_inputs()
        a, b = train_losses(nchw, inputs), train_losses(nhwc, inputs)
        for key in a:
            self.assertTrue(torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key)
        sum(a.values()).backward()
        sum(b.values()).backward()
        grad_a = dict(nchw.named_parameters())["head.cls_subnet.0.weight"].grad
        grad_b = dict(nhwc.named_parameters())["head.cls_subnet.0.weight"].grad
        self.assertTrue(torch.allclose(grad_a, grad_b, rtol=1e-3, atol=1e-7))
        for m in (nchw, nhwc):
            with torch.no_grad():
                m.head.cls_score.bias.zero_()  # scores near 0.5: every level has candidates
            m.eval()
        with torch.no_grad():
            out_a, out_b = nchw(inputs), nhwc(inputs)
        for x, y in zip(out_a, out_b):
            x, y = x["instances"], y["instances"]
            self.assertEqual(len(x), 100)
            self.assertTrue(torch.allclose(x.scores, y.scores, atol=1e-5))
            self.assertTrue(torch.allclose(x.pred_boxes.tensor[0], y.pred_boxes.tensor[0],
                                           atol=1e-3))

    def test_unknown_format_names_the_key(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.MEMORY_FORMAT = "NWHC"
        with self.assertRaises(ValueError) as ctx:
            build(cfg)
        self.assertEqual(
            str(ctx.exception),
            "memory_format (MODEL.RETINAFOCAL.MEMORY_FORMAT) must be one of ('NCHW', 'NHWC'), "
            "got 'NWHC'",
        )


class TestLazyConfigModel(unittest.TestCase):
    def test_lazy_and_yacs_build_the_same_module(self):
        from detectron2.config import LazyConfig

        lazy = LazyConfig.load("configs/common/models/retinanet.py").model
        lazy.num_classes = 3
        lazy.backbone.bottom_up.stages.depth = 18
        del lazy.backbone.bottom_up.stages.stride_in_1x1  # not an argument of BasicBlock
        lazy.backbone.top_block.in_channels = 512
        lazy.backbone.out_channels = 32
        # A ShapeSpec, not the type the loaded config holds: a namedtuple in detectron2 v0.6,
        # an omegaconf DictConfig in current detectron2 (where ShapeSpec is a dataclass).
        lazy.head.input_shape = [ShapeSpec(channels=32)] * 5
        lazy.head.conv_dims = [32] * 4
        lazy.diagnostics_period = 0
        lazy.smooth_l1_beta = 0.0  # detectron2's Base-RetinaNet.yaml, which the yacs side loads
        lazy.memory_format = "NCHW"  # as the yacs model below, so the outputs are bit-equal
        lazy.fold_frozen_bn = False
        torch.manual_seed(0)
        from_lazy = instantiate(lazy)
        cfg = small_retinanet_cfg()
        cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
        from_yacs = build(cfg)
        lazy_sd, yacs_sd = from_lazy.state_dict(), from_yacs.state_dict()
        self.assertEqual(
            {k: tuple(v.shape) for k, v in lazy_sd.items()},
            {k: tuple(v.shape) for k, v in yacs_sd.items()},
        )
        from_lazy.load_state_dict(yacs_sd, strict=True)
        inputs = make_inputs()
        for m in (from_lazy, from_yacs):
            with torch.no_grad():
                m.head.cls_score.bias.zero_()
        a, b = train_losses(from_lazy, inputs), train_losses(from_yacs, inputs)
        for key in a:
            self.assertTrue(torch.allclose(a[key], b[key]), key)
        from_lazy.eval(), from_yacs.eval()
        with torch.no_grad():
            out_a, out_b = from_lazy(inputs), from_yacs(inputs)
        for x, y in zip(out_a, out_b):
            self.assertTrue(torch.equal(x["instances"].pred_boxes.tensor,
                                        y["instances"].pred_boxes.tensor))
