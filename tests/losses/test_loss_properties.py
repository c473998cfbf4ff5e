"""Property tests: random shapes (zero anchors included), all-ignored batches and extreme logits
never crash or produce NaN, and the fused losses keep their invariants."""

import unittest

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import (
    BalancedCELoss,
    FocalLoss,
    FocalLossStar,
    HingeLoss,
    OHEMLoss,
    label_focal_loss,
    sigmoid_focal_loss,
)
from retinafocal.losses._terms import _sigmoid_parts

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
LOSSES = (
    FocalLoss(alpha=0.25, gamma=2.0),
    FocalLoss(alpha=-1.0, gamma=0.5),
    BalancedCELoss(alpha=0.25),
    FocalLossStar(gamma=2.0, beta=1.0),
    HingeLoss(margin=0.5),
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@st.composite
def batches(draw):
    """(logits (N, R, K), labels (N, R)) with logits mixing ordinary, +-100 and huge values."""
    n = draw(st.integers(0, 3))
    r = draw(st.integers(0, 30))
    k = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, r, k, generator=gen) * draw(st.sampled_from([1.0, 10.0, 100.0]))
    extremes = torch.tensor([100.0, -100.0, 1e4, -1e4, 0.0])
    mask = torch.rand(n, r, k, generator=gen) < draw(st.floats(0.0, 1.0))
    pick = torch.randint(0, len(extremes), (n, r, k), generator=gen)
    logits = torch.where(mask, extremes[pick], logits)
    labels_mode = draw(st.sampled_from(["random", "all_ignored", "all_background"]))
    if labels_mode == "random":
        labels = torch.randint(-1, k + 1, (n, r), generator=gen)
    else:
        labels = torch.full((n, r), -1 if labels_mode == "all_ignored" else k, dtype=torch.long)
    return logits.to(dtype), labels


class TestLossProperties(unittest.TestCase):
    @SETTINGS
    @given(batches())
    def test_finite_nonnegative_and_masked(self, batch):
        logits, labels = batch
        ignored = labels < 0
        for loss_fn in LOSSES:
            x = logits.clone().requires_grad_()
            loss = loss_fn(x, labels)
            loss.backward()
            self.assertEqual(loss.shape, ())
            self.assertTrue(torch.isfinite(loss), (loss_fn, loss))
            self.assertGreaterEqual(loss.item(), 0.0)
            self.assertTrue(torch.isfinite(x.grad).all(), loss_fn)
            self.assertTrue((x.grad[ignored] == 0).all())
            if bool(ignored.all()):
                self.assertEqual(loss.item(), 0.0)

    @SETTINGS
    @given(batches())
    def test_ignored_anchors_do_not_matter(self, batch):
        logits, labels = batch
        perturbed = torch.where((labels < 0)[..., None], -logits + 7, logits)
        for loss_fn in LOSSES:
            self.assertEqual(loss_fn(logits, labels).item(), loss_fn(perturbed, labels).item())

    @SETTINGS
    @given(batches())
    def test_sum_equals_elementwise_and_one_hot(self, batch):
        logits, labels = batch
        k = logits.shape[-1]
        per_element = label_focal_loss(logits, labels, reduction="none")
        self.assertTrue(torch.isfinite(per_element).all())
        total = label_focal_loss(logits, labels, reduction="sum")
        torch.testing.assert_close(total.double(), per_element.double().sum(), rtol=1e-5, atol=1e-5)
        valid = labels >= 0
        one_hot = torch.nn.functional.one_hot(labels[valid], k + 1)[:, :k].to(logits.dtype)
        reference = sigmoid_focal_loss(logits[valid], one_hot, reduction="none")
        torch.testing.assert_close(
            per_element[valid].to(reference.dtype), reference, rtol=1e-5, atol=1e-6
        )

    @SETTINGS
    @given(batches(), st.sampled_from([1, 2, 4, 8]), st.sampled_from([0.0, 1.0, 3.0]))
    def test_ohem_picks_the_hardest_valid_anchors_within_budget(self, batch, batch_size, ratio):
        """Disjoint anchor boxes, so the NMS removes nothing: each image's minibatch holds the
        highest per-anchor losses, B of them (or B // (1 + r) positives and r negatives per
        positive), compared as multisets of loss values (ties may pick either anchor)."""
        assume(batch_size >= 1 + ratio)  # OHEMLoss refuses a B with no room for a positive
        logits, labels = batch
        n, r, k = logits.shape
        x = torch.arange(r, dtype=torch.float32) * 20
        boxes = torch.stack([x, torch.zeros(r), x + 10, torch.full((r,), 10.0)], dim=1)
        loss_fn = OHEMLoss(batch_size_per_image=batch_size, neg_pos_ratio=ratio)
        picked = loss_fn.select(logits, labels, boxes)
        self.assertEqual(len(set(picked.tolist())), len(picked))
        scores = loss_fn.anchor_losses(logits, labels)
        for i in range(n):
            mine = picked[(picked >= i * r) & (picked < (i + 1) * r)] - i * r
            if ratio == 0:
                want = _top(scores[i][labels[i] >= 0], batch_size)
                self.assertEqual(sorted(scores[i][mine].tolist()), want)
                continue
            is_pos = (labels[i] >= 0) & (labels[i] < k)
            want_pos = _top(scores[i][is_pos], int(batch_size // (1 + ratio)))
            num_neg = min(int(ratio * len(want_pos)), batch_size - len(want_pos))
            want_neg = _top(scores[i][labels[i] == k], num_neg)
            mine_pos = mine[is_pos[mine]]
            self.assertEqual(sorted(scores[i][mine_pos].tolist()), want_pos)
            self.assertEqual(sorted(scores[i][mine[~is_pos[mine]]].tolist()), want_neg)
        x = logits.clone().requires_grad_()
        loss = loss_fn(x, labels, anchor_boxes=boxes)
        loss.backward()
        self.assertTrue(torch.isfinite(loss) and torch.isfinite(x.grad).all())
        trained = torch.nonzero(x.grad.reshape(n * r, k).abs().sum(-1)).squeeze(1)
        self.assertTrue(set(trained.tolist()) <= set(picked.tolist()))  # only the picked train


def _top(values: torch.Tensor, count: int) -> list:
    """The ``count`` largest values, sorted ascending."""
    return sorted(values.sort(descending=True).values[:count].tolist())



class TestSigmoidParts(unittest.TestCase):
    def test_both_sigmoids_and_softplus_at_edge_logits(self):
        """(sigmoid(x), sigmoid(-x), log1p(exp(-|x|))) on both sides of 0, between 0 and 1 and
        far out, where 1 - sigmoid would cancel to 0."""
        x = torch.tensor([-100.0, -3.0, -0.5, 0.0, 0.25, 0.5, 3.0, 100.0], dtype=torch.float64)
        p, p_neg, log1p_e = _sigmoid_parts(x)
        torch.testing.assert_close(p, torch.sigmoid(x), rtol=1e-12, atol=0.0)
        torch.testing.assert_close(p_neg, torch.sigmoid(-x), rtol=1e-12, atol=0.0)
        torch.testing.assert_close(log1p_e, torch.log1p(torch.exp(-x.abs())), rtol=1e-12, atol=0.0)
        self.assertGreater(p_neg[-1].item(), 0.0)  # sigmoid(-100) ~ 3.7e-44, not 0

if __name__ == "__main__":
    unittest.main()
