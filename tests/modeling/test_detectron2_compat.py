"""FocalRetinaNet against detectron2's own RetinaNet, built from one config.

This is what lets a user run ``--eval-only MODEL.WEIGHTS <detectron2 RetinaNet checkpoint>``.
"""
import copy
import unittest

import torch

import retinafocal  # noqa: F401
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils.events import EventStorage
from retinafocal.modeling import FocalRetinaNet

from .common import make_inputs, small_retinanet_cfg


class TestDetectron2Compatibility(unittest.TestCase):
    def setUp(self):
        cfg = small_retinanet_cfg(meta_architecture="RetinaNet")
        # detectron2 normalises by a moving average of the foreground count: use the same here.
        cfg.MODEL.RETINAFOCAL.LOSS_NORMALIZER = "ema"
        torch.manual_seed(0)
        self.reference = build_model(cfg)
        with torch.no_grad():  # p = 0.5 everywhere, so inference keeps many candidates
            self.reference.head.cls_score.bias.zero_()
        cfg.MODEL.META_ARCHITECTURE = "FocalRetinaNet"
        torch.manual_seed(1)  # different random weights, replaced by the checkpoint below
        self.ours = build_model(cfg)
        self.assertIsInstance(self.reference, RetinaNet)
        self.assertIsInstance(self.ours, FocalRetinaNet)
        self.ours.load_state_dict(self.reference.state_dict(), strict=True)

    def test_equal_detections_in_eval_mode(self):
        inputs = make_inputs(num_images=2)
        self.reference.eval(), self.ours.eval()
        with torch.no_grad():
            expected = self.reference(copy.deepcopy(inputs))
            actual = self.ours(copy.deepcopy(inputs))
        for exp, act in zip(expected, actual):
            exp, act = exp["instances"], act["instances"]
            self.assertGreater(len(exp), 10)
            self.assertEqual(len(exp), len(act))
            self.assertTrue(torch.allclose(exp.scores, act.scores))
            self.assertTrue(torch.equal(exp.pred_classes, act.pred_classes))
            self.assertTrue(torch.allclose(exp.pred_boxes.tensor, act.pred_boxes.tensor))

    def test_equal_losses_in_training_mode(self):
        inputs = make_inputs(num_images=2)
        self.reference.train(), self.ours.train()
        for it in range(2):  # two steps: the EMA normaliser must evolve identically
            with EventStorage(it):
                expected = self.reference(copy.deepcopy(inputs))
                actual = self.ours(copy.deepcopy(inputs))
            self.assertEqual(expected.keys(), actual.keys())
            for key in expected:
                self.assertTrue(
                    torch.allclose(expected[key], actual[key], rtol=1e-5), (key, expected, actual)
                )
            self.assertGreater(expected["loss_box_reg"].item(), 0)

    def test_equal_gradients(self):
        inputs = make_inputs(num_images=2)
        self.reference.train(), self.ours.train()
        for model in (self.reference, self.ours):
            with EventStorage(0):
                sum(model(copy.deepcopy(inputs)).values()).backward()
        ours = dict(self.ours.named_parameters())
        for name, p in self.reference.named_parameters():
            if p.grad is None:
                continue
            self.assertTrue(torch.allclose(p.grad, ours[name].grad, rtol=1e-4, atol=1e-7), name)
