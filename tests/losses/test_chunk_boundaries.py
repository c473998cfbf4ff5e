"""The eager fused loss over more rows than one chunk, with the shipped chunk size, against an
unchunked reference (torchvision's focal loss and autograd on dense one-hot targets).

A chunk boundary that drops, repeats or shifts rows (the last partial chunk included) changes
some anchor's loss or gradient here, in every pass: summed loss with gradient, per-element loss
with gradient, per-anchor loss and per-element loss without gradient.
"""

import unittest

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal_loss

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import FocalLoss, FocalLossStar, HingeLoss, _fused

K = 3


def _batch(num_images: int, num_anchors: int, seed: int = 0):
    """float64 logits (N, R, K) and labels (N, R) with every kind of label, ignored included."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_images, num_anchors, K, generator=gen, dtype=torch.float64) * 4
    labels = torch.randint(-1, K + 1, (num_images, num_anchors), generator=gen)
    return logits, labels


def _reference_elements(logits, labels, alpha=0.25, gamma=2.0):
    """(N, R, K) focal loss of every element by torchvision, 0 for ignored anchors, and its
    autograd gradient for a sum reduction."""
    x = logits.clone().requires_grad_()
    targets = F.one_hot(labels.clamp(min=0), K + 1)[..., :K].to(x.dtype)
    loss = tv_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction="none")
    loss = torch.where((labels >= 0)[..., None], loss, torch.zeros_like(loss))
    loss.sum().backward()
    return loss.detach(), x.grad


class TestMoreRowsThanOneChunk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # The shipped chunk size, not a mocked one: rows per chunk for K classes.
        cls.rows_per_chunk = _fused._EAGER_CPU_CHUNK_ELEMENTS // K
        # 2 images whose rows span two full chunks and a partial third one.
        num_anchors = (cls.rows_per_chunk * 5) // 4
        cls.logits, cls.labels = _batch(2, num_anchors)
        cls.expected, cls.expected_grad = _reference_elements(cls.logits, cls.labels)

    def test_batch_spans_several_chunks(self):
        rows = self.labels.numel()
        self.assertGreater(rows, 2 * self.rows_per_chunk)
        self.assertNotEqual(rows % self.rows_per_chunk, 0)

    def test_sum_and_gradient(self):
        x = self.logits.clone().requires_grad_()
        loss = FocalLoss(alpha=0.25, gamma=2.0)(x, self.labels)
        loss.backward()
        torch.testing.assert_close(loss, self.expected.sum(), rtol=1e-12, atol=0)
        torch.testing.assert_close(x.grad, self.expected_grad, rtol=1e-9, atol=1e-12)

    def test_elementwise_with_gradient(self):
        x = self.logits.clone().requires_grad_()
        runner = FocalLoss(alpha=0.25, gamma=2.0).runner
        loss = runner.loss(x, self.labels, "none")
        loss.sum().backward()
        torch.testing.assert_close(loss, self.expected, rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(x.grad, self.expected_grad, rtol=1e-9, atol=1e-12)

    def test_mean_over_valid_elements(self):
        runner = FocalLoss(alpha=0.25, gamma=2.0).runner
        num_valid = int((self.labels >= 0).sum()) * K
        for requires_grad in (True, False):
            x = self.logits.clone().requires_grad_(requires_grad)
            mean = runner.loss(x, self.labels, "mean")
            torch.testing.assert_close(mean, self.expected.sum() / num_valid, rtol=1e-12, atol=0)

    def test_no_grad_passes(self):
        loss_fn = FocalLoss(alpha=0.25, gamma=2.0)
        per_anchor = loss_fn.anchor_losses(self.logits, self.labels)
        per_element = loss_fn.elementwise_losses(self.logits, self.labels)
        torch.testing.assert_close(per_anchor, self.expected.sum(-1), rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(per_element, self.expected, rtol=1e-9, atol=1e-15)
        with torch.no_grad():
            total = loss_fn(self.logits, self.labels)
        torch.testing.assert_close(total, self.expected.sum(), rtol=1e-12, atol=0)

    def test_other_terms_equal_their_one_chunk_result(self):
        """FL* and the hinge: the chunked result equals the same loss run on one row at a time
        for a sample of rows on both sides of each chunk boundary."""
        step = self.rows_per_chunk
        flat_x = self.logits.reshape(-1, K)
        flat_y = self.labels.reshape(-1)
        rows = torch.tensor([0, step - 1, step, step + 1, 2 * step - 1, 2 * step, len(flat_y) - 1])
        for loss_fn in (FocalLossStar(gamma=2.0, beta=1.0), HingeLoss(margin=0.5)):
            whole = loss_fn.elementwise_losses(self.logits, self.labels).reshape(-1, K)
            for row in rows.tolist():
                alone = loss_fn.elementwise_losses(flat_x[row : row + 1], flat_y[row : row + 1])
                torch.testing.assert_close(whole[row], alone[0], rtol=1e-12, atol=0)


if __name__ == "__main__":
    unittest.main()
