"""Property-based tests (hypothesis) of retinafocal's matcher and losses: random shapes, zero
ground truth, zero anchors, extreme box sizes and logits; no crash, no NaN, and agreement with
reference implementations (detectron2's Matcher, torchvision's focal loss).

Examples are derandomized, so a run is reproducible and a failure shows up on every run.
"""
import math
import unittest

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, pairwise_iou
from retinafocal import losses
from retinafocal.modeling.matcher import ChunkedIoUMatcher

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Box sizes from 1/100 pixel to 10^5 pixels (log-uniform), and exact zero for degenerate boxes.
LOG10_SIZE = st.floats(min_value=-2.0, max_value=5.0)
CENTER = st.floats(min_value=-1e3, max_value=1e4)


@st.composite
def xyxy_boxes(draw, max_n=12, allow_degenerate=False, min_n=0):
    """(n, 4) float32 XYXY boxes with log-uniform sizes; some of zero size if allowed."""
    n = draw(st.integers(min_n, max_n))
    rows = []
    for _ in range(n):
        cx, cy = draw(CENTER), draw(CENTER)
        w, h = 10 ** draw(LOG10_SIZE), 10 ** draw(LOG10_SIZE)
        if allow_degenerate and draw(st.booleans()) and draw(st.booleans()):
            w = 0.0
        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float32).reshape(n, 4)


def reference_labels(gt: torch.Tensor, anchors: torch.Tensor, low_quality: bool) -> torch.Tensor:
    """The match labels that retinafocal's matcher documents: detectron2's Matcher, whose
    low-quality pass is restricted to ground truths that overlap some anchor."""
    iou = pairwise_iou(Boxes(gt), Boxes(anchors))
    _, labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)(iou)
    if low_quality:
        best = iou.max(dim=1, keepdim=True).values
        labels[((iou == best) & (best > 0)).any(dim=0)] = 1
    return labels


class TestMatcherProperties(unittest.TestCase):
    def make(self, low_quality, chunk_elements):
        return ChunkedIoUMatcher(
            thresholds=[0.4, 0.5],
            labels=[0, -1, 1],
            allow_low_quality_matches=low_quality,
            chunk_elements=chunk_elements,
        )

    @PROPERTY_SETTINGS
    @given(
        gt=xyxy_boxes(max_n=8, allow_degenerate=True),
        anchors=xyxy_boxes(max_n=40, allow_degenerate=True),
        low_quality=st.booleans(),
        chunk_elements=st.sampled_from([1, 7, 64, 1 << 20]),
    )
    def test_matches_reference_any_shape(self, gt, anchors, low_quality, chunk_elements):
        idxs, labels = self.make(low_quality, chunk_elements)(gt, anchors)
        num_anchors = anchors.shape[0]
        self.assertEqual(idxs.shape, (num_anchors,))
        self.assertEqual(labels.shape, (num_anchors,))
        self.assertEqual((idxs.dtype, labels.dtype), (torch.int64, torch.int8))
        self.assertTrue(set(labels.tolist()) <= {-1, 0, 1})
        if gt.shape[0] == 0:
            self.assertTrue((labels == 0).all())  # no object: all background
            return
        self.assertTrue(((idxs >= 0) & (idxs < gt.shape[0])).all())
        if num_anchors == 0:
            return
        self.assertTrue(torch.equal(labels, reference_labels(gt, anchors, low_quality)))
        # The matched ground truth is one of highest IoU (equal to detectron2's choice).
        iou = pairwise_iou(Boxes(gt), Boxes(anchors))
        best = iou.max(dim=0).values
        self.assertTrue(torch.equal(iou[idxs, torch.arange(num_anchors)], best))

    @PROPERTY_SETTINGS
    @given(
        gt=xyxy_boxes(max_n=6, allow_degenerate=True),
        anchors=xyxy_boxes(max_n=30, allow_degenerate=True),
    )
    def test_chunking_does_not_change_the_result(self, gt, anchors):
        small = self.make(True, 1)(gt, anchors)
        large = self.make(True, 1 << 24)(gt, anchors)
        self.assertTrue(torch.equal(small[1], large[1]))
        if gt.shape[0]:
            self.assertTrue(torch.equal(small[0], large[0]))


@st.composite
def logits_and_labels(draw):
    """(N, R, K) float64 logits with moderate and extreme values, (N, R) labels in [-1, K]."""
    n, r, k = draw(st.integers(1, 3)), draw(st.integers(0, 30)), draw(st.integers(1, 6))
    values = st.one_of(
        st.floats(-30.0, 30.0), st.sampled_from([-1e4, -200.0, -88.0, 88.0, 200.0, 1e4])
    )
    flat = draw(st.lists(values, min_size=n * r * k, max_size=n * r * k))
    labels = draw(st.lists(st.integers(-1, k), min_size=n * r, max_size=n * r))
    logits = torch.tensor(flat, dtype=torch.float64).reshape(n, r, k)
    return logits, torch.tensor(labels, dtype=torch.int64).reshape(n, r)


def one_hot_targets(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(..., K) targets: 1 at the label's class, all 0 for background (label K)."""
    return torch.nn.functional.one_hot(labels.clamp(min=0), k + 1)[..., :k].double()


class TestLossProperties(unittest.TestCase):
    def check_finite_with_grad(self, fn, logits, labels):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, labels)
        self.assertTrue(torch.isfinite(loss).all(), f"loss {loss}")
        self.assertGreaterEqual(loss.item(), 0.0)
        loss.backward()
        self.assertTrue(torch.isfinite(x.grad).all())
        ignored = labels < 0
        self.assertTrue((x.grad[ignored] == 0).all())  # ignored anchors get no gradient
        if labels.numel() == 0 or ignored.all():
            self.assertEqual(loss.item(), 0.0)
        return loss

    @PROPERTY_SETTINGS
    @given(
        data=logits_and_labels(),
        gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]),
        alpha=st.sampled_from([-1.0, 0.0, 0.25, 1.0]),
    )
    def test_focal_loss_finite_and_equal_to_dense_form(self, data, gamma, alpha):
        logits, labels = data
        k = logits.shape[-1]
        loss = self.check_finite_with_grad(
            lambda x, y: losses.label_focal_loss(x, y, alpha=alpha, gamma=gamma), logits,
            labels,
        )
        valid = labels >= 0
        dense = losses.sigmoid_focal_loss(
            logits[valid], one_hot_targets(labels[valid], k), alpha=alpha, gamma=gamma,
            reduction="sum",
        )
        self.assertTrue(math.isclose(loss.item(), dense.item(), rel_tol=1e-9, abs_tol=1e-9))

    @PROPERTY_SETTINGS
    @given(data=logits_and_labels(), gamma=st.sampled_from([0.0, 0.5, 2.0]))
    def test_dense_focal_loss_matches_torchvision_where_it_is_finite(self, data, gamma):
        from torchvision.ops import sigmoid_focal_loss as tv_focal

        logits, labels = data
        # torchvision's formula loses precision (and its gradient turns NaN) at saturation.
        logits = logits.clamp(-30, 30)
        targets = one_hot_targets(labels, logits.shape[-1])
        ours = losses.sigmoid_focal_loss(logits, targets, gamma=gamma, reduction="none")
        theirs = tv_focal(logits, targets, gamma=gamma, reduction="none")
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-12)

    @PROPERTY_SETTINGS
    @given(data=logits_and_labels())
    def test_paper_alternatives_finite(self, data):
        logits, labels = data
        self.check_finite_with_grad(losses.label_focal_loss_star, logits, labels)
        self.check_finite_with_grad(losses.label_hinge_loss, logits, labels)
        self.check_finite_with_grad(
            lambda x, y: losses.label_focal_loss(x, y, gamma=0.0), logits, labels
        )

    @PROPERTY_SETTINGS
    @given(data=logits_and_labels())
    def test_float32_extremes_finite(self, data):
        logits, labels = data
        self.check_finite_with_grad(losses.label_focal_loss, logits.float(), labels)


if __name__ == "__main__":
    unittest.main()
