"""The analytic gradient is formed only where it will be used, equals autograd's where it is, and
leaves the loss value the same with or without it."""

import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import _terms, sigmoid_focal_loss


class TestTermsProtocol(unittest.TestCase):
    def test_gradient_only_when_asked_and_equal_to_autograd(self):
        """terms(x, t, need_grad): d loss / d x when asked (autograd's, in float64), None
        otherwise, and the same loss either way. Logits avoid the kinks at x = 0 (|x|) and the
        hinge's margin, where autograd takes a one-sided derivative."""
        x = torch.linspace(-6, 6, 24, dtype=torch.float64)
        t = (torch.arange(24) % 2).double()
        every_terms = (
            _terms.FocalTerms(0.25, 2.0, hard_targets=True),
            _terms.FocalTerms(-1.0, 0.5),
            _terms.FocalTerms(0.75, 0.0, hard_targets=True),
            _terms.FocalStarTerms(2.0, 1.0),
            _terms.HingeTerms(0.8),
        )
        for terms in every_terms:
            with self.subTest(terms=type(terms).__name__, **vars(terms)):
                xr = x.clone().requires_grad_()
                loss, grad = terms(xr, t, True)
                loss.sum().backward()
                torch.testing.assert_close(grad, xr.grad)
                loss_only, no_grad = terms(x, t, False)
                self.assertIsNone(no_grad)
                torch.testing.assert_close(loss_only, loss.detach(), rtol=0, atol=0)


class TestSigmoidFocalLossPaths(unittest.TestCase):
    def _data(self):
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(200, generator=gen) * 3
        targets = torch.rand(200, generator=gen, dtype=torch.float64)
        return logits, targets

    def test_gradient_formed_only_when_it_will_be_used(self):
        """The gradient (a buffer the size of the inputs) is computed for inputs that require
        grad with grad mode on, and only then: not for plain inputs, not under no_grad."""
        asked = []
        real_call = _terms.FocalTerms.__call__

        def spy(terms, x, t, need_grad):
            asked.append(need_grad)
            return real_call(terms, x, t, need_grad)

        logits, targets = self._data()
        with mock.patch.object(_terms.FocalTerms, "__call__", spy):
            sigmoid_focal_loss(logits, targets)
            with torch.no_grad():
                sigmoid_focal_loss(logits.clone().requires_grad_(), targets)
            sigmoid_focal_loss(logits.clone().requires_grad_(), targets)
        self.assertEqual(asked, [False, False, True])

    def test_targets_of_another_dtype_are_cast_to_the_compute_dtype(self):
        """float64 targets with fp32 logits: the value is the fp32 computation's, bit for bit,
        with or without a gradient (the targets are cast first, never the result)."""
        logits, targets = self._data()
        fp32 = sigmoid_focal_loss(logits, targets.float())
        for requires_grad in (False, True):
            with self.subTest(requires_grad=requires_grad):
                value = sigmoid_focal_loss(logits.clone().requires_grad_(requires_grad), targets)
                self.assertEqual(value.dtype, torch.float32)
                torch.testing.assert_close(value.detach(), fp32, rtol=0, atol=0)


if __name__ == "__main__":
    unittest.main()
