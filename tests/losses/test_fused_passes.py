"""What the fused runner hands its terms and where its results land.

- Eager chunks: whole rows, each row once and in order, at most the device's chunk size of
  (anchor, class) elements (one row per chunk when a row alone is larger).
- The derivative is asked for only when a gradient is wanted: forming it costs about as much as
  the loss, so scoring anchors or diagnostics on detached logits must not pay for it.
- Every buffer follows the logits' device, not torch's default device.
- "mean" divides by the number of valid elements, also when that number is 1.

A recording terms object sees every call the runner makes; the meta device (shapes without
memory) stands in for an accelerator.
"""

import math
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import FocalLoss, _fused, _terms

FOCAL = _terms.FocalTerms(0.25, 2.0, hard_targets=True)


class _Recording:
    """Terms that record (rows, need_grad) of each call, then delegate to real terms."""

    def __init__(self, terms):
        self.terms = terms
        self.calls = []

    def __call__(self, x, t, need_grad):
        self.calls.append((x.shape[0], need_grad))
        return self.terms(x, t, need_grad)

    def rows(self):
        return [rows for rows, _ in self.calls]


def _batch(rows, k, seed=0, device="cpu"):
    """Logits (rows, K) and labels (rows,) with every kind of label, ignored included."""
    if device == "meta":
        labels = torch.empty(rows, dtype=torch.long, device="meta")
        return torch.empty(rows, k, device="meta"), labels
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, k, generator=gen) * 3
    labels = torch.randint(-1, k + 1, (rows,), generator=gen)
    return logits, labels


class TestEagerChunks(unittest.TestCase):
    def test_cpu_chunks_of_whole_rows_up_to_the_chunk_size(self):
        """K = 3: full chunks of chunk // 3 rows, then the rest; each row once, in order (a
        chunk that restarted at row 0 or ran to the end would show as a larger chunk)."""
        k = 3
        per_chunk = _fused._EAGER_CPU_CHUNK_ELEMENTS // k
        logits, labels = _batch(2 * per_chunk + 5, k)
        recorder = _Recording(FOCAL)
        per_anchor = _fused.LabelLossRunner(recorder).anchor_losses(logits, labels)
        self.assertEqual(recorder.rows(), [per_chunk, per_chunk, 5])
        # The chunks' results, put together, are the unchunked result.
        whole = _fused.LabelLossRunner(FOCAL)
        with mock.patch.object(_fused, "_EAGER_CPU_CHUNK_ELEMENTS", 1 << 30):
            torch.testing.assert_close(per_anchor, whole.anchor_losses(logits, labels))

    def test_one_class_fills_a_chunk_with_rows(self):
        """K = 1: a chunk holds exactly chunk-size rows."""
        size = _fused._EAGER_CPU_CHUNK_ELEMENTS
        logits, labels = _batch(size + 1, 1)
        recorder = _Recording(FOCAL)
        _fused.LabelLossRunner(recorder).elementwise_losses(logits, labels)
        self.assertEqual(recorder.rows(), [size, 1])

    def test_a_row_larger_than_a_chunk_is_a_chunk_of_its_own(self):
        """More classes than a chunk holds elements: one row per chunk, never two."""
        logits, labels = _batch(3, _fused._EAGER_CPU_CHUNK_ELEMENTS + 1)
        recorder = _Recording(FOCAL)
        x = logits.clone().requires_grad_()
        _fused.LabelLossRunner(recorder).loss(x, labels, "sum").backward()
        self.assertEqual(recorder.rows(), [1, 1, 1])
        self.assertTrue(torch.isfinite(x.grad).all())

    def test_accelerator_chunks_are_larger(self):
        """Off the CPU a chunk holds up to _EAGER_GPU_CHUNK_ELEMENTS elements: the CPU's cache-
        sized chunks would cost an accelerator hundreds of kernel launches per pass."""
        k = 8
        per_chunk = _fused._EAGER_GPU_CHUNK_ELEMENTS // k
        self.assertGreater(per_chunk, _fused._EAGER_CPU_CHUNK_ELEMENTS)
        logits, labels = _batch(per_chunk + 1, k, device="meta")
        recorder = _Recording(FOCAL)
        _fused.LabelLossRunner(recorder).run(logits, labels, per_row=True)
        self.assertEqual(recorder.rows(), [per_chunk, 1])


class TestDerivativeOnlyWhenWanted(unittest.TestCase):
    def test_no_grad_paths_ask_for_no_derivative(self):
        """With autograd on, logits that need no gradient (detached, e.g. for OHEM's scoring or
        the diagnostics) take the loss-only passes; logits that need one take the fused pass."""
        self.assertTrue(torch.is_grad_enabled())
        logits, labels = _batch(40, 3)
        recorder = _Recording(FOCAL)
        runner = _fused.LabelLossRunner(recorder)
        calls = {
            "sum": lambda x: runner.loss(x, labels, "sum"),
            "mean": lambda x: runner.loss(x, labels, "mean"),
            "none": lambda x: runner.loss(x, labels, "none"),
            "anchor_losses": lambda x: runner.anchor_losses(x, labels),
            "elementwise_losses": lambda x: runner.elementwise_losses(x, labels),
        }
        for name, call in calls.items():
            recorder.calls.clear()
            value = call(logits)
            with self.subTest(name):
                self.assertEqual(len(recorder.calls), 1)
                self.assertIs(recorder.calls[0][1], False)
                self.assertFalse(value.requires_grad)
            if name in ("sum", "mean", "none"):
                recorder.calls.clear()
                with_grad = call(logits.clone().requires_grad_())
                with self.subTest(name, requires_grad=True):
                    self.assertIs(recorder.calls[0][1], True)
                    self.assertTrue(with_grad.requires_grad)
                    torch.testing.assert_close(with_grad.detach(), value)


class TestDevice(unittest.TestCase):
    def test_results_follow_the_logits_not_the_default_device(self):
        """torch.set_default_device (here the meta device, for an accelerator) must not move the
        loss of CPU logits: every value and gradient stays on the CPU, equal to the usual one."""
        logits, labels = _batch(30, 4, seed=1)
        loss_fn = FocalLoss(alpha=0.25, gamma=2.0)
        runner = loss_fn.runner
        upstream = torch.linspace(0.5, 1.5, 30 * 4).reshape(30, 4)
        expected = {}
        for reduction in ("sum", "mean", "none"):
            x = logits.clone().requires_grad_()
            loss = runner.loss(x, labels, reduction)
            (loss * (upstream if reduction == "none" else 1.0)).sum().backward()
            expected[reduction] = (loss.detach(), x.grad)
        anchor = loss_fn.anchor_losses(logits, labels)
        element = loss_fn.elementwise_losses(logits, labels)

        for reduction, (value, grad) in expected.items():
            x = logits.clone().requires_grad_()
            with torch.device("meta"):
                loss = runner.loss(x, labels, reduction)
                detached = runner.loss(logits, labels, reduction)
                (loss * (upstream if reduction == "none" else 1.0)).sum().backward()
            with self.subTest(reduction):
                for result in (loss, detached, x.grad):
                    self.assertEqual(result.device.type, "cpu")
                torch.testing.assert_close(loss.detach(), value)
                torch.testing.assert_close(detached, value)
                torch.testing.assert_close(x.grad, grad)
        with torch.device("meta"):
            results = {
                "anchor_losses": (loss_fn.anchor_losses(logits, labels), anchor),
                "elementwise_losses": (loss_fn.elementwise_losses(logits, labels), element),
            }
        for name, (result, value) in results.items():
            with self.subTest(name):
                self.assertEqual(result.device.type, "cpu")
                torch.testing.assert_close(result, value)


class TestMean(unittest.TestCase):
    def test_mean_of_a_single_valid_element(self):
        """One class and one valid anchor (the other ignored): the mean is the sum. A positive at
        x = 0 costs alpha (1 - p)^2 log 2 = 0.25 * 0.25 * log 2 and has the derivative
        alpha q^2 [(p - 1) - 2 ce p (1 - p) / q] = 0.0625 (-0.5 - log 2) (p = q = 0.5)."""
        logits, labels = torch.zeros(2, 1), torch.tensor([0, -1])
        runner = _fused.LabelLossRunner(FOCAL)
        value = torch.tensor(0.0625 * math.log(2.0))
        torch.testing.assert_close(runner.loss(logits, labels, "mean"), value)
        x = logits.clone().requires_grad_()
        mean = runner.loss(x, labels, "mean")
        mean.backward()
        torch.testing.assert_close(mean.detach(), value)
        torch.testing.assert_close(x.grad, torch.tensor([[0.0625 * (-0.5 - math.log(2.0))], [0.0]]))


if __name__ == "__main__":
    unittest.main()
