"""MODEL.RETINAFOCAL.FOLD_FROZEN_BN: each conv + frozen BatchNorm computed as one conv."""
import copy
import unittest
from unittest import mock

import torch
from torch import nn

import retinafocal  # noqa: F401
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from retinafocal.modeling.frozen_bn import FrozenBNFoldedConv2d, fold_frozen_batchnorm

from .common import make_inputs, small_retinanet_cfg
from .test_retinanet import build, train_losses


def random_statistics(model: nn.Module, seed: int = 0) -> None:
    """Give every frozen BN statistics far from the identity, as ImageNet weights have."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
            m.bias.copy_(torch.randn(m.num_features, generator=g))
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.5)


def pair(**overrides):
    cfg = small_retinanet_cfg()
    for key, value in overrides.items():
        setattr(cfg.MODEL.RETINAFOCAL, key, value)
    plain = build(cfg)
    with torch.no_grad():
        random_statistics(plain)
    cfg.MODEL.RETINAFOCAL.FOLD_FROZEN_BN = True
    folded = build(cfg, seed=1)
    folded.load_state_dict(plain.state_dict(), strict=True)
    return plain, folded


class TestFoldedConv(unittest.TestCase):
    def conv(self, bias: bool):
        torch.manual_seed(0)
        norm = FrozenBatchNorm2d(6)
        conv = Conv2d(4, 6, 3, padding=1, bias=bias, norm=norm, activation=nn.functional.relu)
        with torch.no_grad():
            random_statistics(conv)
            if bias:
                conv.bias.normal_()
        return conv

    def test_hand_computed_fold(self):
        norm = FrozenBatchNorm2d(1)
        norm.weight.fill_(3.0), norm.bias.fill_(1.0)
        norm.running_mean.fill_(2.0), norm.running_var.fill_(4.0 - norm.eps)
        conv = Conv2d(1, 1, 1, bias=True, norm=norm)
        with torch.no_grad():
            conv.weight.fill_(5.0), conv.bias.fill_(0.5)
        weight, bias = FrozenBNFoldedConv2d.from_conv(conv).folded_weight_and_bias()
        # s = 3 / sqrt(4) = 1.5, t = 1 - 2 * 1.5 = -2: W' = 7.5, b' = 0.5 * 1.5 - 2 = -1.25.
        self.assertAlmostEqual(weight.item(), 7.5, places=5)
        self.assertAlmostEqual(bias.item(), -1.25, places=5)

    def test_same_outputs_and_gradients_as_conv_then_norm(self):
        for has_bias in (False, True):
            with self.subTest(bias=has_bias):
                plain = self.conv(has_bias)
                folded = copy.deepcopy(plain)
                wrapper = nn.Sequential(folded)
                self.assertEqual(fold_frozen_batchnorm(wrapper), 1)
                self.assertIsInstance(wrapper[0], FrozenBNFoldedConv2d)
                self.assertEqual(list(wrapper[0].state_dict()), list(plain.state_dict()))
                x = torch.randn(2, 4, 9, 7, requires_grad=True)
                a, b = plain(x), wrapper(x)
                self.assertTrue(torch.allclose(a, b, atol=1e-5))
                self.assertGreater((a > 0).float().mean(), 0.2)  # not all cut by the ReLU
                a.square().sum().backward()
                grad_a = (plain.weight.grad.clone(), x.grad.clone())
                x.grad = None
                b.square().sum().backward()
                self.assertTrue(torch.allclose(grad_a[0], wrapper[0].weight.grad, rtol=1e-4,
                                               atol=1e-5))
                self.assertTrue(torch.allclose(grad_a[1], x.grad, atol=1e-5))

    def test_kept_fold_follows_every_change_of_the_weights(self):
        conv = FrozenBNFoldedConv2d.from_conv(self.conv(True))
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            first = conv(x)
            self.assertTrue(torch.equal(conv(x), first))  # kept, not recomputed differently
            kept = conv._folded[1]
            self.assertIs(conv._kept_weight_and_bias()[0], kept)
            conv.weight.mul_(2)  # what an optimizer step does
            second = conv(x)
            conv.norm.running_var.mul_(4)  # what loading a checkpoint does
            third = conv(x)
        self.assertFalse(torch.allclose(second, first))
        self.assertFalse(torch.allclose(third, second))
        unfolded = torch.relu(conv.norm(nn.functional.conv2d(x, conv.weight, conv.bias,
                                                              padding=1)))
        self.assertTrue(torch.allclose(third, unfolded, atol=1e-5))

    def test_training_frees_what_an_evaluation_kept(self):
        conv = FrozenBNFoldedConv2d.from_conv(self.conv(True)).eval()
        with torch.no_grad():
            conv(torch.randn(1, 4, 5, 5))
        self.assertIsNotNone(conv._folded)
        conv.train()
        self.assertIsNone(conv._folded)

    def test_only_convs_with_frozen_bn_are_folded(self):
        net = nn.Sequential(Conv2d(3, 3, 1, norm=FrozenBatchNorm2d(3)),
                            Conv2d(3, 3, 1, norm=nn.BatchNorm2d(3)), Conv2d(3, 3, 1),
                            nn.Sequential(Conv2d(3, 3, 1, norm=FrozenBatchNorm2d(3))))
        self.assertEqual(fold_frozen_batchnorm(net), 2)  # the nested one counts too
        self.assertEqual([type(m).__name__ for m in net[:3]], ["FrozenBNFoldedConv2d", "Conv2d",
                                                               "Conv2d"])
        self.assertIsInstance(net[3][0], FrozenBNFoldedConv2d)
        self.assertEqual(fold_frozen_batchnorm(net), 0)  # folded ones are not folded again

    def test_built_directly_with_conv2d_arguments(self):
        """Built as detectron2's Conv2d is (not only by from_conv): every argument reaches it,
        and any other norm is refused with a message naming both classes."""
        conv = self.conv(True)
        folded = FrozenBNFoldedConv2d(4, 6, 3, padding=1, bias=True, norm=conv.norm,
                                      activation=nn.functional.relu)
        folded.load_state_dict(conv.state_dict())
        self.assertIs(folded.norm, conv.norm)
        self.assertIs(folded.activation, nn.functional.relu)
        x = torch.randn(2, 4, 6, 5)
        with torch.no_grad():
            self.assertTrue(torch.allclose(folded.eval()(x), conv(x), atol=1e-5))
        with self.assertRaisesRegex(
            TypeError, "^FrozenBNFoldedConv2d needs a FrozenBatchNorm2d norm, got BatchNorm2d$"
        ):
            FrozenBNFoldedConv2d(3, 3, 1, norm=nn.BatchNorm2d(3))

    def test_a_trainable_bias_alone_trains(self):
        """A conv whose weight is frozen but whose bias trains (bias-only fine-tuning) folds on
        the fly, so the bias gets the gradient it gets without folding."""
        plain = self.conv(True)
        plain.weight.requires_grad_(False)
        folded = FrozenBNFoldedConv2d.from_conv(copy.deepcopy(plain))
        x = torch.randn(2, 4, 5, 5)
        for conv in (plain, folded):
            conv(x).square().sum().backward()
        self.assertIsNotNone(folded.bias.grad)
        self.assertGreater(plain.bias.grad.abs().max(), 0)
        self.assertTrue(torch.allclose(folded.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-5))
        self.assertIsNone(folded._folded)  # nothing kept: it would go stale at the next step

    def test_compiled_code_folds_on_the_fly(self):
        """While torch.compile traces the forward (simulated: a real compile costs seconds), the
        fold is computed in the graph, where the compiler's freezing can make it a constant,
        and nothing is kept on the module: the trace cannot follow tensor versions."""
        conv = FrozenBNFoldedConv2d.from_conv(self.conv(True)).eval()
        x = torch.randn(1, 4, 5, 5)
        with torch.no_grad():
            expected = conv(x)
            conv.train(), conv.eval()  # frees what that call kept
            self.assertIsNone(conv._folded)
            with mock.patch.object(torch.compiler, "is_compiling", return_value=True) as compiling:
                traced = conv(x)
        self.assertGreater(compiling.call_count, 0)
        self.assertTrue(torch.allclose(traced, expected, atol=1e-6))
        self.assertIsNone(conv._folded)


class TestFoldedModel(unittest.TestCase):
    def test_every_frozen_bn_conv_of_the_backbone_is_folded(self):
        plain, folded = pair()
        frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in plain.backbone.modules())
        self.assertGreater(frozen, 15)  # R18: stem, 16 block convs, 3 shortcuts
        self.assertEqual(sum(isinstance(m, FrozenBNFoldedConv2d) for m in folded.modules()),
                         frozen)
        self.assertEqual(list(folded.state_dict()), list(plain.state_dict()))
        self.assertFalse(plain.fold_frozen_bn)
        self.assertTrue(folded.fold_frozen_bn)

    def test_same_losses_gradients_and_detections(self):
        for layout in ("NCHW", "NHWC"):
            with self.subTest(layout=layout):
                plain, folded = pair(MEMORY_FORMAT=layout)
                inputs = make_inputs()
                a, b = train_losses(plain, inputs), train_losses(folded, inputs)
                for key in a:
                    self.assertTrue(torch.allclose(a[key], b[key], rtol=1e-4), key)
                sum(a.values()).backward()
                sum(b.values()).backward()
                name = "backbone.bottom_up.res4.0.conv1.weight"  # trainable, folded
                grads = [dict(m.named_parameters())[name].grad for m in (plain, folded)]
                self.assertGreater(grads[0].abs().max(), 0)
                self.assertTrue(torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6))
                for m in (plain, folded):
                    with torch.no_grad():
                        m.head.cls_score.bias.zero_()
                    m.eval()
                with torch.no_grad():
                    out_a, out_b = plain(inputs), folded(inputs)
                for x, y in zip(out_a, out_b):
                    self.assertTrue(torch.allclose(x["instances"].scores,
                                                   y["instances"].scores, atol=1e-5))


if __name__ == "__main__":
    unittest.main()
