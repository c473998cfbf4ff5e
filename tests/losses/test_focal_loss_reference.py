"""The focal loss against torchvision's and fvcore's, the fused label-based form against the
one-hot reference, gradients, low precision, and the paper's numbers."""

import itertools
import math
import unittest

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fvcore.nn import sigmoid_focal_loss as fvcore_focal_loss

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import label_focal_loss, sigmoid_focal_loss

GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)  # 2.0 has a fast path of its own; 3.0 must not take it
ALPHAS = (0.25, 0.75, 0.0, -1.0)  # 0.0 weights the negatives only; < 0 turns weighting off
REDUCTIONS = ("none", "mean", "sum")


def _reference_fns():
    # fvcore's default alpha differs from torchvision's; both are passed explicitly below.
    return {"torchvision": torchvision.ops.sigmoid_focal_loss, "fvcore": fvcore_focal_loss}


def _value_and_grad(fn, logits, targets, alpha, gamma, reduction):
    x = logits.clone().requires_grad_()
    loss = fn(x, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    # A non-uniform upstream gradient, so "none" checks the elementwise backward too.
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    (loss * upstream).sum().backward()
    return loss.detach(), x.grad


def _stable_focal_loss(inputs, targets, alpha, gamma, reduction):
    """Independent reference for 0/1 targets from log-sigmoids, finite for any logit:
    FL = -alpha_t * exp(gamma * log(1 - p_t)) * log(p_t), with log p_t = logsigmoid(x_t)."""
    x_t = inputs * (2 * targets - 1)
    loss = -torch.exp(gamma * F.logsigmoid(-x_t)) * F.logsigmoid(x_t)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def _one_hot(labels, num_classes):
    """(M,) labels in [0, K] -> (M, K) float targets, background K -> all zeros."""
    return F.one_hot(labels, num_classes + 1)[:, :num_classes].float()


class TestAgainstTorchvisionAndFvcore(unittest.TestCase):
    def _compare(self, logits, targets, ref_atol):
        """Ours vs each reference at rtol 1e-5, for every gamma, alpha and reduction.

        ``ref_atol`` absorbs the references' own fp32 rounding (they form BCE as x - x + log(..)
        and use 1 - sigmoid(x), which cancel to a few ulp of |x|: ~1e-6 at |x| ~ 10, ~1e-5 at
        |x| ~ 100). Where a reference's gradient is NaN (its (1 - p_t)^gamma backward at
        p_t == 1 for gamma < 1) ours must still be finite; those elements are checked against
        an independent float64 reference built from log-sigmoids (finite everywhere).
        """
        for (name, ref), gamma, alpha, reduction in itertools.product(
            _reference_fns().items(), GAMMAS, ALPHAS, REDUCTIONS
        ):
            with self.subTest(ref=name, gamma=gamma, alpha=alpha, reduction=reduction):
                ours, ours_grad = _value_and_grad(
                    sigmoid_focal_loss, logits, targets, alpha, gamma, reduction
                )
                theirs, theirs_grad = _value_and_grad(ref, logits, targets, alpha, gamma, reduction)
                exact, exact_grad = _value_and_grad(
                    _stable_focal_loss, logits.double(), targets.double(), alpha, gamma, reduction
                )
                self.assertEqual(ours.dtype, torch.float32)
                self.assertTrue(torch.isfinite(ours).all() and torch.isfinite(ours_grad).all())
                torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=ref_atol)
                finite = torch.isfinite(theirs_grad)
                torch.testing.assert_close(
                    ours_grad[finite], theirs_grad[finite], rtol=1e-5, atol=ref_atol
                )
                torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-12)
                torch.testing.assert_close(ours_grad.double(), exact_grad, rtol=1e-5, atol=1e-12)

    def test_random_logits(self):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(64, 9, generator=gen) * 3
        targets = (torch.rand(64, 9, generator=gen) < 0.3).float()
        self._compare(logits, targets, ref_atol=1e-6)

    def test_logits_up_to_100(self):
        gen = torch.Generator().manual_seed(1)
        logits = (torch.rand(48, 7, generator=gen) * 2 - 1) * 100
        logits[0, :4] = torch.tensor([100.0, -100.0, 100.0, -100.0])
        targets = (torch.rand(48, 7, generator=gen) < 0.5).float()
        targets[0, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0])
        self._compare(logits, targets, ref_atol=2e-5)

    def test_saturated_logits_have_zero_gradient_not_nan(self):
        """Beyond |x| ~ 104 the smaller sigmoid underflows to 0 in float32, so the modulating
        factor's base q = 1 - p_t is exactly 0 for a correct prediction: the general (soft
        target) gradient's p (1 - p) / q must give 0 there, not 0 / 0."""
        logits = torch.tensor([110.0, -110.0, 200.0, -200.0])
        targets = torch.tensor([1.0, 0.0, 1.0, 0.0])  # float targets: the soft-target path
        for gamma in (0.5, 2.0):
            loss, grad = _value_and_grad(sigmoid_focal_loss, logits, targets, 0.25, gamma, "sum")
            self.assertEqual(float(loss), 0.0)
            self.assertTrue(torch.equal(grad, torch.zeros(4)), grad)

    def test_soft_targets_match_torchvision(self):
        gen = torch.Generator().manual_seed(2)
        logits = torch.randn(32, 5, generator=gen) * 2
        targets = torch.rand(32, 5, generator=gen)
        for gamma in GAMMAS:
            ours, ours_grad = _value_and_grad(
                sigmoid_focal_loss, logits, targets, 0.25, gamma, "sum"
            )
            theirs, theirs_grad = _value_and_grad(
                torchvision.ops.sigmoid_focal_loss, logits, targets, 0.25, gamma, "sum"
            )
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)

    def test_differentiable_targets(self):
        logits = torch.randn(6, 3)
        targets = torch.rand(6, 3, requires_grad=True)
        sigmoid_focal_loss(logits, targets, reduction="sum").backward()
        t2 = targets.detach().clone().requires_grad_()
        torchvision.ops.sigmoid_focal_loss(logits, t2, reduction="sum").backward()
        torch.testing.assert_close(targets.grad, t2.grad)

    def test_differentiable_targets_every_reduction_and_alpha(self):
        gen = torch.Generator().manual_seed(3)
        logits = torch.randn(6, 3, generator=gen) * 2
        # alpha = 0 is a weighting (positives count for nothing), not "no weighting".
        cases = (("none", -1.0, 2.0), ("mean", 0.25, 1.5), ("sum", -1, 0), ("none", 0.0, 2.0))
        for reduction, alpha, gamma in cases:
            with self.subTest(reduction=reduction, alpha=alpha, gamma=gamma):
                targets = torch.rand(6, 3, generator=gen).requires_grad_()
                t2 = targets.detach().clone().requires_grad_()
                ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
                theirs = torchvision.ops.sigmoid_focal_loss(logits, t2, alpha, gamma, reduction)
                torch.testing.assert_close(ours, theirs)
                ours.sum().backward()
                theirs.sum().backward()
                torch.testing.assert_close(targets.grad, t2.grad)

    def test_without_gradient_same_values_in_the_inputs_dtype(self):
        gen = torch.Generator().manual_seed(4)
        logits = torch.randn(20, 4, generator=gen) * 3
        targets = (torch.rand(20, 4, generator=gen) > 0.7).float()
        for reduction in ("none", "mean", "sum"):
            with self.subTest(reduction=reduction):
                with_grad = sigmoid_focal_loss(logits.clone().requires_grad_(), targets,
                                               reduction=reduction)  # fmt: skip
                without = sigmoid_focal_loss(logits, targets, reduction=reduction)
                self.assertFalse(without.requires_grad)
                torch.testing.assert_close(without, with_grad.detach())
                half = sigmoid_focal_loss(logits.half(), targets.half(), reduction=reduction)
                self.assertEqual(half.dtype, torch.float16)
                torch.testing.assert_close(half.float(), without, rtol=2e-3, atol=2e-3)

    def test_low_precision_with_gradient_computed_in_fp32(self):
        """fp16/bf16 logits that require grad: the values are the fp32 computation's, rounded
        once to the inputs' dtype (as without a gradient), and so is the gradient of the sum."""
        logits = torch.linspace(-6, 6, 61).reshape(1, 61)
        targets = (torch.arange(61) % 3 == 0).float().reshape(1, 61)
        for dtype in (torch.float16, torch.bfloat16):
            x = logits.to(dtype)
            x32 = x.float().requires_grad_()
            sigmoid_focal_loss(x32, targets, reduction="sum").backward()
            for reduction in ("none", "mean", "sum"):
                with self.subTest(dtype=dtype, reduction=reduction):
                    xg = x.clone().requires_grad_()
                    value = sigmoid_focal_loss(xg, targets.to(dtype), reduction=reduction)
                    self.assertEqual(value.dtype, dtype)
                    exact = sigmoid_focal_loss(x32.detach(), targets, reduction=reduction)
                    torch.testing.assert_close(value, exact.to(dtype), rtol=0, atol=0)
                    if reduction == "sum":
                        value.backward()
                        torch.testing.assert_close(xg.grad, x32.grad.to(dtype), rtol=0, atol=0)

    def test_bad_arguments(self):
        x = torch.zeros(2, 3)
        with self.assertRaisesRegex(ValueError, "reduction"):
            sigmoid_focal_loss(x, x, reduction="avg")
        with self.assertRaisesRegex(ValueError, "same shape"):
            sigmoid_focal_loss(x, torch.zeros(3, 2))


class TestFusedLabelLoss(unittest.TestCase):
    def _data(self, seed, n=2, r=150, k=6, scale=3.0):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(n, r, k, generator=gen) * scale
        labels = torch.randint(-1, k + 1, (n, r), generator=gen)
        return logits, labels

    def test_equals_one_hot_reference(self):
        """label_focal_loss == torchvision on the one-hot targets of the valid anchors, for the
        value and the gradient (zero on ignored anchors), for every gamma and alpha."""
        for (scale, seed), gamma, alpha in itertools.product(
            ((3.0, 0), (100.0, 1)), GAMMAS, ALPHAS
        ):
            with self.subTest(scale=scale, gamma=gamma, alpha=alpha):
                logits, labels = self._data(seed, scale=scale)
                k = logits.shape[-1]
                x = logits.clone().requires_grad_()
                ours = label_focal_loss(x, labels, alpha, gamma, "sum")
                ours.backward()

                # float64 torchvision saturates at |x| > 37 (NaN gradients for gamma < 1), so the
                # large-logit case uses the log-sigmoid reference.
                reference = torchvision.ops.sigmoid_focal_loss if scale < 10 else _stable_focal_loss
                x_ref = logits.double().requires_grad_()
                valid = labels >= 0
                ref = reference(
                    x_ref[valid], _one_hot(labels[valid], k).double(), alpha, gamma, "sum"
                )
                ref.backward()
                self.assertEqual(ours.dtype, torch.float32)
                torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-10)
                torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-5, atol=1e-10)
                self.assertTrue((x.grad[~valid] == 0).all())

    def test_reductions(self):
        logits, labels = self._data(3)
        k = logits.shape[-1]
        per_element = label_focal_loss(logits, labels, reduction="none")
        self.assertEqual(per_element.shape, logits.shape)
        self.assertTrue((per_element[labels < 0] == 0).all())
        valid = labels >= 0
        ref = torchvision.ops.sigmoid_focal_loss(logits[valid], _one_hot(labels[valid], k))
        torch.testing.assert_close(per_element[valid], ref, rtol=1e-5, atol=1e-7)
        total = label_focal_loss(logits, labels, reduction="sum")
        torch.testing.assert_close(total, per_element.sum(), rtol=1e-5, atol=1e-5)
        mean = label_focal_loss(logits, labels, reduction="mean")
        torch.testing.assert_close(mean, total / (valid.sum() * k), rtol=1e-5, atol=1e-7)

    def test_elementwise_gradient(self):
        logits, labels = self._data(4, r=40)
        x = logits.clone().requires_grad_()
        upstream = torch.rand(logits.shape)
        (label_focal_loss(x, labels, reduction="none") * upstream).sum().backward()
        x_ref = logits.clone().requires_grad_()
        valid = labels >= 0
        ref = torchvision.ops.sigmoid_focal_loss(x_ref[valid], _one_hot(labels[valid], 6))
        (ref * upstream[valid]).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-7)

    def test_gamma_zero_is_alpha_balanced_ce(self):
        """gamma = 0: loss alpha_t * BCE and gradient alpha_t * (sigmoid(x) - t), to float64
        precision (no modulating factor left over)."""
        logits, labels = self._data(5)
        x = logits.double().requires_grad_()
        valid = labels >= 0
        t = _one_hot(labels[valid], 6).double()
        weights = 0.25 * t + 0.75 * (1 - t)
        ours = label_focal_loss(x, labels, alpha=0.25, gamma=0.0, reduction="none")
        ours.sum().backward()
        bce = F.binary_cross_entropy_with_logits(x.detach()[valid], t, reduction="none")
        torch.testing.assert_close(ours.detach()[valid], weights * bce, rtol=1e-10, atol=1e-14)
        expected_grad = weights * (torch.sigmoid(x.detach()[valid]) - t)
        torch.testing.assert_close(x.grad[valid], expected_grad, rtol=1e-10, atol=1e-14)

    def test_gradcheck_float64(self):
        logits, labels = self._data(6, n=2, r=5, k=4, scale=2.0)
        x = logits.double().requires_grad_()
        for gamma, alpha, reduction in (
            (2.0, 0.25, "sum"),
            (0.5, 0.75, "mean"),
            (5.0, -1.0, "none"),
        ):
            with self.subTest(gamma=gamma, alpha=alpha, reduction=reduction):
                self.assertTrue(
                    torch.autograd.gradcheck(
                        lambda z, a=alpha, g=gamma, r=reduction: label_focal_loss(
                            z, labels, a, g, r
                        ),
                        (x,),
                    )
                )
        self.assertTrue(
            torch.autograd.gradcheck(lambda z: sigmoid_focal_loss(z, z.detach() > 0), (x,))
        )

    def test_low_precision_is_finite_and_accumulates_in_fp32(self):
        gen = torch.Generator().manual_seed(7)
        logits = (torch.rand(2, 300, 8, generator=gen) * 200 - 100).round()  # exact in fp16/bf16
        labels = torch.randint(-1, 9, (2, 300), generator=gen)
        exact = label_focal_loss(logits.double(), labels)
        for dtype in (torch.float16, torch.bfloat16):
            with self.subTest(dtype=dtype):
                x = logits.to(dtype).requires_grad_()
                loss = label_focal_loss(x, labels)
                loss.backward()
                self.assertEqual(loss.dtype, torch.float32)
                self.assertEqual(x.grad.dtype, dtype)
                self.assertTrue(torch.isfinite(loss) and torch.isfinite(x.grad).all())
                # Same inputs, fp32 arithmetic: only the summation order differs.
                torch.testing.assert_close(loss.double(), exact, rtol=1e-5, atol=0)
                per_element = sigmoid_focal_loss(x.detach(), torch.zeros_like(x))
                self.assertEqual(per_element.dtype, dtype)
                self.assertTrue(torch.isfinite(per_element).all())

    def test_low_precision_elementwise_with_gradient_is_the_fp32_computation(self):
        """reduction="none" with a gradient: the bf16 logits are widened to fp32 before the
        terms, so values and gradient equal those of the same logits given in fp32."""
        logits = torch.linspace(-6, 6, 60).reshape(1, 20, 3).to(torch.bfloat16)
        labels = torch.arange(20).reshape(1, 20) % 5 - 1  # -1 .. 3 (K = 3: background)
        x, x32 = logits.clone().requires_grad_(), logits.float().requires_grad_()
        values, values32 = label_focal_loss(x, labels, reduction="none"), label_focal_loss(
            x32, labels, reduction="none"
        )
        torch.testing.assert_close(values, values32, rtol=0, atol=0)
        values.sum().backward()
        values32.sum().backward()
        torch.testing.assert_close(x.grad, x32.grad.to(torch.bfloat16), rtol=0, atol=0)

    def test_empty_and_all_ignored(self):
        empty = torch.zeros(2, 0, 5, requires_grad=True)
        loss = label_focal_loss(empty, torch.zeros(2, 0, dtype=torch.long))
        loss.backward()
        self.assertEqual(loss.item(), 0.0)
        self.assertEqual(empty.grad.shape, empty.shape)
        x = torch.randn(1, 4, 3, requires_grad=True)
        ignored = torch.full((1, 4), -1)
        for reduction in REDUCTIONS:
            self.assertEqual(
                label_focal_loss(x, ignored, reduction=reduction).abs().sum().item(), 0
            )
        label_focal_loss(x, ignored).backward()
        self.assertTrue((x.grad == 0).all())

    def test_backward_twice_with_retained_graph(self):
        x = torch.randn(1, 8, 3, requires_grad=True)
        loss = label_focal_loss(x, torch.randint(0, 4, (1, 8)))
        (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
        (g2,) = torch.autograd.grad(loss * 2, x)
        torch.testing.assert_close(g2, 2 * g1)

    def test_bad_labels_name_the_problem(self):
        x = torch.zeros(2, 3, 4)
        with self.assertRaisesRegex(ValueError, r"\[-1, K=4\].*\[-1, 7\]") as ctx:
            label_focal_loss(x, torch.tensor([[0, 7, -1], [1, 2, 3]]))
        self.assertIn("MODEL.RETINANET.NUM_CLASSES", str(ctx.exception))  # issue 13, item 3
        with self.assertRaisesRegex(ValueError, r"\[-1, K=4\].*\[-2, 1\]"):
            label_focal_loss(x, torch.tensor([[0, 1, -2], [1, 1, 1]]))
        with self.assertRaisesRegex(TypeError, "integer class indices"):
            label_focal_loss(x, torch.zeros(2, 3))
        with self.assertRaisesRegex(ValueError, r"labels shape \(3, 2\)"):
            label_focal_loss(x, torch.zeros(3, 2, dtype=torch.long))
        with self.assertRaisesRegex(ValueError, "reduction"):
            label_focal_loss(x, torch.zeros(2, 3, dtype=torch.long), reduction="avg")
        with self.assertRaisesRegex(ValueError, "gamma"):
            label_focal_loss(x, torch.zeros(2, 3, dtype=torch.long), gamma=-1.0)

    @pytest.mark.gpu
    @unittest.skipIf(not torch.cuda.is_available(), "needs a GPU")
    def test_cuda_matches_cpu(self):
        logits, labels = self._data(8)
        x_cpu = logits.clone().requires_grad_()
        x_gpu = logits.cuda().requires_grad_()
        loss_cpu = label_focal_loss(x_cpu, labels)
        loss_gpu = label_focal_loss(x_gpu, labels.cuda())
        loss_cpu.backward()
        loss_gpu.backward()
        torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-5, atol=1e-7)


class TestPaperNumbers(unittest.TestCase):
    """Sec. 3.2: with gamma = 2, an example with p_t = 0.9 has 100x lower loss than CE, one with
    p_t ~ 0.968 about 1000x lower, and one with p_t <= 0.5 at most 4x lower."""

    @staticmethod
    def _ratio_ce_to_fl(p_t: torch.Tensor) -> torch.Tensor:
        # Each p_t both as a positive (x = logit(p_t)) and as a negative (x = -logit(p_t)).
        logit = torch.log(p_t) - torch.log1p(-p_t)
        logits = torch.stack([logit, -logit], dim=1)[:, :, None]  # (P, 2, 1): one class
        labels = torch.tensor([[0, 1]]).expand(len(p_t), 2)  # class 0, then background
        ce = label_focal_loss(logits, labels, alpha=-1, gamma=0.0, reduction="none")
        fl = label_focal_loss(logits, labels, alpha=-1, gamma=2.0, reduction="none")
        return (ce / fl).squeeze(-1)

    def test_well_classified_examples_are_down_weighted(self):
        ratios = self._ratio_ce_to_fl(torch.tensor([0.9, 0.968], dtype=torch.float64))
        torch.testing.assert_close(ratios[0], torch.full((2,), 100.0, dtype=torch.float64))
        # (1 - 0.968)^-2 = 976.6: "about 1000x".
        self.assertTrue(((ratios[1] > 950) & (ratios[1] < 1050)).all(), ratios[1])

    def test_hard_examples_keep_most_of_their_loss(self):
        p_t = torch.linspace(0.01, 0.5, 50, dtype=torch.float64)
        ratios = self._ratio_ce_to_fl(p_t)
        self.assertTrue((ratios <= 4.0 + 1e-9).all())
        self.assertAlmostEqual(ratios[-1, 0].item(), 4.0, places=9)

    def test_same_with_the_torchvision_compatible_function(self):
        x = torch.tensor([math.log(9.0)], dtype=torch.float64)  # p = 0.9
        t = torch.ones(1, dtype=torch.float64)
        ce = sigmoid_focal_loss(x, t, alpha=-1, gamma=0.0)
        fl = sigmoid_focal_loss(x, t, alpha=-1, gamma=2.0)
        self.assertAlmostEqual((ce / fl).item(), 100.0, places=6)


if __name__ == "__main__":
    unittest.main()
