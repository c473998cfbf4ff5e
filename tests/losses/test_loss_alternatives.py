"""The paper's other losses: FL*, the hinge on p_t and OHEM, on hand-built cases."""

import math
import unittest

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_star as fvcore_focal_loss_star

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import OHEMLoss, label_focal_loss_star, label_hinge_loss, ohem_select


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class TestFocalLossStar(unittest.TestCase):
    def test_hand_computed(self):
        """gamma = 2, beta = 1. Anchor 0 is class 0, anchor 1 background (label K = 2).
        Element (label class, x = 0):      z = 2 * 0 + 1 = 1,   FL* = log(1 + e^-1) / 2,
                                           dFL*/dx = -sigmoid(-1).
        Element (other class, x = 0.5):    z = 2 * -0.5 + 1 = 0, FL* = log(2) / 2,
                                           dFL*/dx = +sigmoid(0) = 0.5.
        Element (other class, x = -1):     z = 2 * 1 + 1 = 3,    FL* = log(1 + e^-3) / 2,
                                           dFL*/dx = +sigmoid(-3)."""
        x = torch.tensor([[[0.0, 0.5], [-1.0, 0.5]]], dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[0, 2]])
        loss = label_focal_loss_star(x, labels, gamma=2.0, beta=1.0, reduction="none")
        expected = torch.tensor(
            [
                [
                    [math.log1p(math.exp(-1)) / 2, math.log(2) / 2],
                    [math.log1p(math.exp(-3)) / 2, math.log(2) / 2],
                ]
            ],
            dtype=torch.float64,
        )
        torch.testing.assert_close(loss, expected)
        self.assertAlmostEqual(expected[0, 0, 0].item(), 0.156630845, places=8)
        loss.sum().backward()
        expected_grad = torch.tensor(
            [[[-_sigmoid(-1), 0.5], [_sigmoid(-3), 0.5]]], dtype=torch.float64
        )
        torch.testing.assert_close(x.grad, expected_grad)

    def test_matches_fvcore_without_shift(self):
        """fvcore's FL* has no beta; with beta = 0 the two must agree."""
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(2, 50, 4, generator=gen) * 3
        labels = torch.randint(-1, 5, (2, 50), generator=gen)
        valid = labels >= 0
        target = F.one_hot(labels[valid], 5)[:, :4].float()
        for gamma in (1.0, 2.0, 4.0):
            x = logits.clone().requires_grad_()
            ours = label_focal_loss_star(x, labels, gamma=gamma, beta=0.0)
            ours.backward()
            x_ref = logits.clone().requires_grad_()
            ref = fvcore_focal_loss_star(x_ref[valid], target, gamma=gamma, reduction="sum")
            ref.backward()
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-7)

    def test_gradcheck_and_bad_gamma(self):
        x = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[0, 1, 2, 3, -1, 3]])
        self.assertTrue(
            torch.autograd.gradcheck(lambda z: label_focal_loss_star(z, labels, 2.0, 1.0), (x,))
        )
        with self.assertRaisesRegex(ValueError, "gamma must be > 0"):
            label_focal_loss_star(x, labels, gamma=0.0)


class TestHingeLoss(unittest.TestCase):
    def test_hand_computed(self):
        """margin 0.5; sigmoid(-ln 3) = 0.25, sigmoid(ln 3) = 0.75.
        label class, x = -ln 3: p_t = 0.25 -> loss 0.25, d/dx = -p_t (1 - p_t) = -0.1875
        other class, x =  ln 3: p_t = 0.25 -> loss 0.25, d/dx = +0.1875
        label class, x =  ln 3: p_t = 0.75 >= margin -> 0, 0
        other class, x = -ln 3: p_t = 0.75 >= margin -> 0, 0"""
        ln3 = math.log(3.0)
        x = torch.tensor([[[-ln3, ln3], [ln3, -ln3]]], dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([[0, 0]])
        loss = label_hinge_loss(x, labels, margin=0.5, reduction="none")
        torch.testing.assert_close(
            loss, torch.tensor([[[0.25, 0.25], [0.0, 0.0]]], dtype=torch.float64)
        )
        loss.sum().backward()
        torch.testing.assert_close(
            x.grad, torch.tensor([[[-0.1875, 0.1875], [0.0, 0.0]]], dtype=torch.float64)
        )

    def test_margin(self):
        """margin 0.8 at x = 0 (p_t = 0.5 for both targets): loss 0.3 each, sum 0.6."""
        x = torch.zeros(1, 1, 2, dtype=torch.float64)
        self.assertAlmostEqual(label_hinge_loss(x, torch.tensor([[1]]), 0.8).item(), 0.6)
        self.assertEqual(label_hinge_loss(x, torch.tensor([[1]]), 0.5).item(), 0.0)
        with self.assertRaisesRegex(ValueError, "margin"):
            label_hinge_loss(x, torch.tensor([[1]]), 1.5)

    def test_no_gradient_once_p_t_reaches_the_margin(self):
        """Margin 0.5. At x = 0 both elements (class 0 of label 0, and class 1) have p_t = 0.5:
        no loss and no gradient. At x = -+0.01, p_t is just below 0.5: both train."""
        for logits, trains in (([0.0, 0.0], False), ([-0.01, 0.01], True)):
            with self.subTest(logits=logits):
                x = torch.tensor([[logits]], dtype=torch.float64, requires_grad=True)
                loss = label_hinge_loss(x, torch.tensor([[0]]), margin=0.5)
                loss.backward()
                self.assertEqual(loss.item() > 0, trains)
                self.assertEqual(bool((x.grad != 0).all()), trains)
                self.assertEqual(bool((x.grad == 0).all()), not trains)


class TestOHEM(unittest.TestCase):
    @staticmethod
    def _boxes(*xyxy):
        return torch.tensor(xyxy, dtype=torch.float32)

    def test_nms_removes_duplicate_hard_anchor(self):
        """One class (K = 1), all anchors background. Anchor 1 nearly duplicates anchor 0
        (IoU 0.95) and is the second hardest; with B = 2 the NMS drops it for anchor 2."""
        boxes = self._boxes([0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30], [40, 40, 50, 50])
        logits = torch.tensor([[[5.0], [4.0], [3.0], [-2.0]]], requires_grad=True)
        labels = torch.ones(1, 4, dtype=torch.long)  # K = 1: background
        loss_fn = OHEMLoss(batch_size_per_image=2, neg_pos_ratio=0.0, nms_thresh=0.5)
        self.assertEqual(loss_fn.select(logits, labels, boxes).tolist(), [0, 2])
        loss = loss_fn(logits, labels, anchor_boxes=boxes)
        # Mean over the 2 picked anchors of their background CE, softplus(x).
        expected = (math.log1p(math.exp(5.0)) + math.log1p(math.exp(3.0))) / 2
        self.assertAlmostEqual(loss.item(), expected, places=5)
        loss.backward()
        self.assertEqual(torch.nonzero(logits.grad[0, :, 0]).squeeze(1).tolist(), [0, 2])
        self.assertAlmostEqual(logits.grad[0, 0, 0].item(), _sigmoid(5.0) / 2, places=6)
        # Without NMS (threshold 1) the duplicate would have been picked.
        no_nms = OHEMLoss(batch_size_per_image=2, nms_thresh=1.0)
        self.assertEqual(no_nms.select(logits, labels, boxes).tolist(), [0, 1])

    def test_elementwise_losses_are_the_kept_anchors_share(self):
        """The same case: the elements of the 2 kept anchors carry softplus(x) / 2, the others
        nothing, so what the diagnostics read sums to the loss that trains."""
        boxes = self._boxes([0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30], [40, 40, 50, 50])
        logits = torch.tensor([[[5.0], [4.0], [3.0], [-2.0]]])
        labels = torch.ones(1, 4, dtype=torch.long)
        loss_fn = OHEMLoss(batch_size_per_image=2, neg_pos_ratio=0.0, nms_thresh=0.5)
        elements = loss_fn.elementwise_losses(logits, labels, anchor_boxes=boxes)
        expected = [math.log1p(math.exp(5.0)) / 2, 0.0, math.log1p(math.exp(3.0)) / 2, 0.0]
        torch.testing.assert_close(elements[0, :, 0], torch.tensor(expected))
        with self.assertRaisesRegex(ValueError, "anchor_boxes"):
            loss_fn.elementwise_losses(logits, labels)

    def test_elementwise_losses_with_one_or_no_kept_anchor(self):
        """B = 1 keeps the hardest anchor, whose elements carry all of the loss; at 1:3 an
        image without positives keeps nothing, and every element is 0, as is the loss."""
        logits, labels, boxes = self._ratio_case(0)
        for batch_size, ratio, kept in ((1, 0.0, [0]), (8, 3.0, [])):
            with self.subTest(batch_size=batch_size, ratio=ratio):
                loss_fn = OHEMLoss(batch_size_per_image=batch_size, neg_pos_ratio=ratio)
                elements = loss_fn.elementwise_losses(logits, labels, anchor_boxes=boxes)
                self.assertEqual(torch.nonzero(elements[0].sum(-1)).squeeze(1).tolist(), kept)
                value = loss_fn(logits, labels, anchor_boxes=boxes)
                torch.testing.assert_close(elements.sum(), value)
                self.assertEqual(value.item() > 0, bool(kept))

    def _ratio_case(self, num_pos):
        """num_pos positives (class 0 of K = 2) then 20 background anchors, on disjoint boxes;
        losses decrease with the index within each group, ignored anchor last."""
        n = num_pos + 21
        boxes = torch.tensor([[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(n)])
        labels = torch.tensor([0] * num_pos + [2] * 20 + [-1])
        pos_logits = torch.linspace(-5, -1, num_pos) if num_pos else torch.empty(0)
        neg_logits = torch.linspace(4, 0, 20)
        logits = torch.zeros(n, 2)
        logits[:num_pos, 0] = pos_logits
        logits[num_pos:-1, 1] = neg_logits
        logits[-1] = 50.0  # ignored, though it would be the hardest
        return logits[None], labels[None], boxes

    def test_one_to_three_ratio(self):
        """B = 8, ratio 3: at most 8 // 4 = 2 positives, then 3 negatives per positive."""
        for num_pos, want_pos, want_neg in ((5, 2, 6), (2, 2, 6), (1, 1, 3), (0, 0, 0)):
            with self.subTest(num_pos=num_pos):
                logits, labels, boxes = self._ratio_case(num_pos)
                loss_fn = OHEMLoss(batch_size_per_image=8, neg_pos_ratio=3.0)
                picked = loss_fn.select(logits, labels, boxes)
                picked_labels = labels[0, picked]
                self.assertEqual(int((picked_labels == 0).sum()), want_pos)
                self.assertEqual(int((picked_labels == 2).sum()), want_neg)
                self.assertFalse((picked_labels == -1).any())
                # The hardest of each group: the first positives and the first negatives.
                expected_idx = list(range(want_pos)) + list(range(num_pos, num_pos + want_neg))
                self.assertEqual(sorted(picked.tolist()), expected_idx)
                x = logits.clone().requires_grad_()
                loss = loss_fn(x, labels, anchor_boxes=boxes)
                # The mean over the picked anchors of their CE summed over the K = 2 classes:
                # softplus(-x) for the true class of a positive, softplus(x) for the others.
                targets = torch.nn.functional.one_hot(labels[0, picked], 3)[:, :2].float()
                chosen = logits[0, picked]
                ce = torch.nn.functional.softplus(chosen * (1 - 2 * targets)).sum()
                expected = ce / len(picked) if len(picked) else torch.tensor(0.0)
                torch.testing.assert_close(loss, expected)
                loss.backward()
                trained = torch.nonzero(x.grad[0].abs().sum(-1)).squeeze(1)
                self.assertEqual(sorted(trained.tolist()), expected_idx)

    def test_ratios_written_in_decimals(self):
        """floor(B / (1 + r)) positives and floor(r P) negatives of the numbers as written:
        B = 13 at 1:0.3 gives 10 + 3 (though 13 // (1 + 0.3) is 9.0 in floats), B = 157 at
        1:0.57 gives 100 + 57 (though 0.57 * 100 is 56.99999999999999)."""
        num_pos, num_neg = 200, 100
        n = num_pos + num_neg
        x = torch.arange(n, dtype=torch.float32) * 20
        boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
        labels = torch.tensor([0] * num_pos + [1] * num_neg)  # K = 1
        losses = torch.randperm(n, generator=torch.Generator().manual_seed(0)).float()
        for batch_size, ratio, want_pos, want_neg in ((13, 0.3, 10, 3), (157, 0.57, 100, 57)):
            with self.subTest(batch_size=batch_size, ratio=ratio):
                picked = ohem_select(losses, labels, boxes, 1, batch_size, ratio)
                self.assertEqual(int((labels[picked] == 0).sum()), want_pos)
                self.assertEqual(int((labels[picked] == 1).sum()), want_neg)
                # The hardest of each group.
                for label, count in ((0, want_pos), (1, want_neg)):
                    group = losses[labels == label]
                    mine = losses[picked][labels[picked] == label]
                    self.assertEqual(sorted(mine.tolist()), sorted(group.topk(count)[0].tolist()))

    def test_without_ratio_takes_the_hardest_overall(self):
        logits, labels, boxes = self._ratio_case(5)
        picked = ohem_select(
            torch.tensor([1.0, 2, 3, 4, 5] + [10.0 - i * 0.1 for i in range(20)] + [99.0]),
            labels[0],
            boxes,
            num_classes=2,
            batch_size=4,
        )
        self.assertEqual(picked.tolist(), [5, 6, 7, 8])  # 4 hardest valid; ignored one skipped

    def test_batch_of_images_and_errors(self):
        logits, labels, boxes = self._ratio_case(3)
        batch_logits = torch.cat([logits, logits.flip(1)]).requires_grad_()
        batch_labels = torch.cat([labels, labels.flip(1)])
        loss_fn = OHEMLoss(batch_size_per_image=4)
        picked = loss_fn.select(batch_logits, batch_labels, boxes)
        self.assertEqual(len(picked), 8)
        self.assertTrue((picked[:4] < 24).all() and (picked[4:] >= 24).all())
        loss_fn(batch_logits, batch_labels, anchor_boxes=boxes).backward()
        self.assertEqual(int((batch_logits.grad.abs().sum(-1) > 0).sum()), 8)
        with self.assertRaisesRegex(ValueError, "anchor_boxes"):
            loss_fn(batch_logits, batch_labels)
        with self.assertRaisesRegex(ValueError, r"anchor_boxes must be \(R=24, 4\)"):
            loss_fn(batch_logits, batch_labels, anchor_boxes=boxes[:3])
        with self.assertRaisesRegex(ValueError, "OHEM_BATCH_SIZE_PER_IMAGE"):
            OHEMLoss(batch_size_per_image=0)

    def test_input_errors_name_the_loss_in_full(self):
        loss_fn = OHEMLoss()
        boxes = torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]])
        with self.assertRaisesRegex(ValueError, r"^OHEMLoss: labels must lie in \[-1, K=3\]"):
            loss_fn(torch.zeros(1, 2, 3), torch.tensor([[0, 9]]), anchor_boxes=boxes)
        for args, message in (
            ((torch.zeros(2, 3), torch.tensor([0, 3]), boxes),
             "OHEMLoss: pred_logits must be (N, R, K), got (2, 3)"),
            ((torch.zeros(1, 2, 3), torch.tensor([[0, 3]]), None),
             "OHEMLoss needs anchor_boxes (R, 4) for its NMS; got None"),
        ):  # fmt: skip
            with self.subTest(message=message), self.assertRaises(ValueError) as ctx:
                loss_fn(*args)
            self.assertEqual(str(ctx.exception), message)


if __name__ == "__main__":
    unittest.main()
