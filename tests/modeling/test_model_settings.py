"""FocalRetinaNet's settings as a user meets them: test-time thresholds and top-k, the loss
normaliser without objects, the diagnostics period, the box-loss choices and config errors."""
import copy
import math
import unittest

import torch

import retinafocal  # noqa: F401
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from .common import make_inputs, small_retinanet_cfg, spy_on_classification_loss


def build(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def infer(model, inputs):
    model.eval()
    with torch.no_grad():
        return [out["instances"] for out in model(copy.deepcopy(inputs))]


def train_step(model, inputs, iteration: int = 0):
    model.train()
    with EventStorage(iteration) as storage:
        losses = model(copy.deepcopy(inputs))
        latest = dict(storage.latest())
    return losses, latest


class TestInferenceSettings(unittest.TestCase):
    def one_level_model(self, **retinanet):
        cfg = small_retinanet_cfg(num_classes=2)
        for key, value in retinanet.items():
            cfg.MODEL.RETINANET[key] = value
        return build(cfg)

    def decode(self, model, logits, deltas=None):
        """inference_single_image on one level of 4 far-apart anchors."""
        anchors = Boxes(torch.tensor([[0.0, 0, 10, 10], [100, 0, 110, 10], [0, 100, 10, 110],
                                      [100, 100, 110, 110]]))  # fmt: skip
        deltas = torch.zeros(4, 4) if deltas is None else deltas
        return model.inference_single_image([anchors], [logits], [deltas], (200, 200))

    def test_scores_just_above_the_threshold_are_kept(self):
        """Logits a hair above logit(0.05) pass, a hair below do not; classes and boxes are
        those of their (anchor, class) pair."""
        model = self.one_level_model()
        t = math.log(0.05 / 0.95)
        logits = torch.tensor([[t + 2e-5, -9.0], [-9.0, t - 2e-5], [-9.0, t + 1.0], [-9.0, -9.0]])
        result = self.decode(model, logits)
        self.assertEqual(result.pred_classes.tolist(), [1, 0])
        self.assertEqual(result.pred_boxes.tensor.tolist(), [[0.0, 100, 10, 110], [0, 0, 10, 10]])
        torch.testing.assert_close(result.scores, torch.sigmoid(logits[[2, 0], [1, 0]]))

    def test_threshold_zero_keeps_the_top_k_of_every_level(self):
        model = self.one_level_model(SCORE_THRESH_TEST=0.0, TOPK_CANDIDATES_TEST=3)
        logits = torch.arange(8, dtype=torch.float32).reshape(4, 2) - 20  # all scores ~1e-9
        result = self.decode(model, logits)
        # The 3 best pairs: anchor 3 class 1, anchor 3 class 0, anchor 2 class 1.
        self.assertEqual(result.pred_classes.tolist(), [1, 0, 1])
        self.assertEqual(result.pred_boxes.tensor[:, 0].tolist(), [100.0, 100.0, 0.0])

    def test_threshold_one_keeps_nothing(self):
        model = self.one_level_model(SCORE_THRESH_TEST=1.0)
        self.assertEqual(len(self.decode(model, torch.full((4, 2), 50.0))), 0)

    def test_top_k_is_per_level_and_detections_are_capped(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 2
        model = build(cfg)
        with torch.no_grad():
            model.head.cls_score.bias.zero_()  # p = 0.5 everywhere: every level has candidates
        for inst in infer(model, make_inputs(num_images=1)):
            self.assertLessEqual(len(inst), 2 * 5)  # 5 levels, 2 candidates each
            self.assertGreater(len(inst), 2)
        cfg.TEST.DETECTIONS_PER_IMAGE = 3
        model = build(cfg)
        with torch.no_grad():
            model.head.cls_score.bias.zero_()
        self.assertEqual(len(infer(model, make_inputs(num_images=1))[0]), 3)

    def test_deltas_move_the_boxes(self):
        model = self.one_level_model()
        deltas = torch.zeros(4, 4)
        deltas[0] = torch.tensor([0.1, 0.0, 0.0, 0.0])  # dx = 0.1 x weight 1 x width 10 = 1 px
        result = self.decode(model, torch.tensor([[5.0, -9], [-9, -9], [-9, -9], [-9, -9]]),
                             deltas)  # fmt: skip
        torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor([[1.0, 0, 11, 10]]))


class TestTrainingSettings(unittest.TestCase):
    def test_without_objects_the_loss_is_not_divided(self):
        """No positive anchor: the normaliser is 1, so loss_cls is the classification loss's
        sum over all anchors."""
        model = build(small_retinanet_cfg())
        calls = spy_on_classification_loss(model)
        losses, latest = train_step(model, make_inputs(with_boxes=False))
        self.assertEqual(latest["num_pos_anchors"][0], 0.0)
        torch.testing.assert_close(losses["loss_cls"], calls[0])
        self.assertEqual(losses["loss_box_reg"].item(), 0.0)

    def test_a_self_normalizing_loss_is_not_divided(self):
        """OHEM averages over the anchors it keeps: the model uses its value as it is."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "OHEMLoss"
        model = build(cfg)
        calls = spy_on_classification_loss(model)
        losses, latest = train_step(model, make_inputs())
        self.assertGreater(latest["num_pos_anchors"][0], 1.0)
        torch.testing.assert_close(losses["loss_cls"], calls[0], rtol=0, atol=0)

    def test_diagnostics_only_every_period(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 2
        model = build(cfg)
        inputs = make_inputs()
        self.assertIn("imbalance/num_pos_anchors", train_step(model, inputs, 0)[1])
        self.assertNotIn("imbalance/num_pos_anchors", train_step(model, inputs, 1)[1])
        self.assertIn("imbalance/num_pos_anchors", train_step(model, inputs, 4)[1])
        cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 0
        self.assertNotIn("imbalance/num_pos_anchors", train_step(build(cfg), inputs, 0)[1])

    def test_training_predictions_drawn_every_vis_period(self):
        cfg = small_retinanet_cfg()
        cfg.VIS_PERIOD = 2
        model = build(cfg)
        model.train()
        drawn = []
        for iteration in (0, 1, 2):
            with EventStorage(iteration) as storage:
                model(copy.deepcopy(make_inputs(num_images=1)))
                drawn.append([name for name, _, _ in storage._vis_data])
        self.assertEqual(len(drawn[0]), 1)
        self.assertEqual(drawn[1], [])
        self.assertEqual(len(drawn[2]), 1)
        self.assertIn("GT bounding boxes", drawn[0][0])
        cfg.VIS_PERIOD = 1  # every iteration
        model = build(cfg).train()
        with EventStorage(1) as storage:
            model(copy.deepcopy(make_inputs(num_images=1)))
            self.assertEqual(len(storage._vis_data), 1)

    def test_l1_is_smooth_l1_with_beta_zero(self):
        inputs = make_inputs()
        losses = {}
        settings = (("l1", 0.5), ("smooth_l1", 0.0), ("smooth_l1", 1e3), ("giou", 0.0))
        for loss_type, beta in settings:
            cfg = small_retinanet_cfg()
            cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = loss_type
            cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = beta
            losses[loss_type, beta] = train_step(build(cfg), inputs)[0]["loss_box_reg"]
        # "l1" ignores the beta it is given; GIoU is another loss altogether.
        self.assertEqual(losses["l1", 0.5].item(), losses["smooth_l1", 0.0].item())
        self.assertNotEqual(losses["giou", 0.0].item(), losses["smooth_l1", 0.0].item())
        # A beta far above every residual: 0.5 x^2 / beta instead of |x|, far smaller.
        self.assertLess(losses["smooth_l1", 1e3].item(), 0.01 * losses["l1", 0.5].item())

    def test_ema_normaliser_starts_at_100(self):
        """detectron2's moving average: 0.9 x 100 + 0.1 x (positives in the batch)."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER = "ema"
        model = build(cfg)
        calls = spy_on_classification_loss(model)
        losses, latest = train_step(model, make_inputs())
        num_pos = latest["num_pos_anchors"][0] * 2
        torch.testing.assert_close(losses["loss_cls"], calls[0] / (0.9 * 100 + 0.1 * num_pos))

    def test_ema_normaliser_momentum_and_a_batch_without_objects(self):
        """The configured momentum; no positive anchor counts as 1; detectron2's attribute
        name (loss_normalizer), which carries the average to the next step."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER = "ema"
        cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER_MOMENTUM = 0.5
        model = build(cfg)
        calls = spy_on_classification_loss(model)
        losses, _ = train_step(model, make_inputs(with_boxes=False))
        self.assertEqual(model.loss_normalizer, 0.5 * 100 + 0.5 * 1)
        torch.testing.assert_close(losses["loss_cls"], calls[0] / 50.5)
        train_step(model, make_inputs(with_boxes=False))
        self.assertEqual(model.loss_normalizer, 0.5 * 50.5 + 0.5 * 1)


class TestFromConfig(unittest.TestCase):
    def test_every_key_reaches_the_model(self):
        """Each config value, set away from its default, is what the built model holds."""
        cfg = small_retinanet_cfg(num_classes=4)
        r, f = cfg.MODEL.RETINANET, cfg.MODEL.RETINAFOCAL
        r.IN_FEATURES = ["p4", "p5", "p6"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = cfg.MODEL.ANCHOR_GENERATOR.SIZES[1:4]
        r.BBOX_REG_WEIGHTS = (2.0, 3.0, 0.5, 0.25)
        r.SMOOTH_L1_LOSS_BETA, r.BBOX_REG_LOSS_TYPE = 0.25, "giou"
        r.SCORE_THRESH_TEST, r.TOPK_CANDIDATES_TEST, r.NMS_THRESH_TEST = 0.2, 77, 0.4
        f.LOSS_NORMALIZER, f.LOSS_NORMALIZER_MOMENTUM = "ema", 0.8
        f.DIAGNOSTICS_PERIOD, f.MEMORY_FORMAT = 7, "NHWC"
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
        cfg.TEST.DETECTIONS_PER_IMAGE, cfg.VIS_PERIOD, cfg.INPUT.FORMAT = 33, 5, "RGB"
        model = build(cfg)
        self.assertEqual(model.head_in_features, ["p4", "p5", "p6"])
        self.assertEqual(model.anchor_generator.num_features, 3)
        self.assertEqual(model.box2box_transform.weights, (2.0, 3.0, 0.5, 0.25))
        got = {name: getattr(model, name) for name in (
            "num_classes", "smooth_l1_beta", "box_reg_loss_type", "loss_normalizer_type",
            "loss_normalizer_momentum", "test_score_thresh", "test_topk_candidates",
            "test_nms_thresh", "max_detections_per_image", "diagnostics_period", "vis_period",
            "input_format", "memory_format")}  # fmt: skip
        self.assertEqual(got, {
            "num_classes": 4, "smooth_l1_beta": 0.25, "box_reg_loss_type": "giou",
            "loss_normalizer_type": "ema", "loss_normalizer_momentum": 0.8,
            "test_score_thresh": 0.2, "test_topk_candidates": 77, "test_nms_thresh": 0.4,
            "max_detections_per_image": 33, "diagnostics_period": 7, "vis_period": 5,
            "input_format": "RGB", "memory_format": "NHWC"})  # fmt: skip
        self.assertEqual(model.pixel_mean.flatten().tolist(), [1.0, 2.0, 3.0])
        self.assertEqual(model.pixel_std.flatten().tolist(), [4.0, 5.0, 6.0])
        self.assertEqual(model.head.cls_score.out_channels, 9 * 4)


class TestConfigErrors(unittest.TestCase):
    def test_unknown_in_feature_is_named(self):
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p9", "p5"]
        with self.assertRaisesRegex(ValueError, r"IN_FEATURES names \['p9'\]"):
            build(cfg)

    def test_unknown_box_loss_and_normaliser_are_named(self):
        for key, value, pattern in (
            ("RETINANET.BBOX_REG_LOSS_TYPE", "l3", "box_reg_loss_type must be one of .*'l3'"),
            ("RETINAFOCAL.LOSS_NORMALIZER", "mean", "loss_normalizer must be one of .*'mean'"),
        ):
            cfg = small_retinanet_cfg()
            group, name = key.split(".")
            cfg.MODEL[group][name] = value
            with self.subTest(key=key), self.assertRaisesRegex(ValueError, pattern):
                build(cfg)


if __name__ == "__main__":
    unittest.main()
