"""OHEM picks the hardest anchors, also among far more than 8 x B candidates, where its pre-sort
decides which anchors the NMS sees and where the candidate set must widen because duplicates
crowd its head.

The reference is the definition itself: greedy NMS over every valid anchor (torchvision's
``nms``, which orders by score on its own), then the first B survivors.
"""

import unittest
from unittest import mock

import torch
from torchvision.ops import nms

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.losses import OHEMLoss, ohem, ohem_select

K = 2  # classes; label K = background


def _disjoint_boxes(n: int) -> torch.Tensor:
    """n 10 x 10 boxes on a row, 20 px apart: no NMS interaction."""
    x = torch.arange(n, dtype=torch.float32) * 20
    return torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)


def _reference(losses, labels, boxes, batch_size, nms_thresh=0.5):
    idx = torch.nonzero(labels >= 0).squeeze(1)
    keep = nms(boxes[idx], losses[idx], nms_thresh)
    return idx[keep[:batch_size]].tolist()


class TestHardestAmongManyCandidates(unittest.TestCase):
    def test_disjoint_anchors_give_the_b_highest_losses_hardest_first(self):
        gen = torch.Generator().manual_seed(0)
        r, b = 300, 6  # 300 candidates > 8 x B = 48
        losses = torch.rand(r, generator=gen) * 10
        labels = torch.full((r,), K)
        labels[::7] = -1  # ignored anchors are never picked, however hard
        losses[::7] += 100
        picked = ohem_select(losses, labels, _disjoint_boxes(r), K, b)
        valid = torch.nonzero(labels >= 0).squeeze(1)
        hardest = valid[losses[valid].argsort(descending=True)[:b]]
        self.assertEqual(picked.tolist(), hardest.tolist())
        self.assertEqual(picked.tolist(), _reference(losses, labels, _disjoint_boxes(r), b))

    def test_candidate_set_widens_past_a_crowd_of_duplicates(self):
        """100 copies of one box hold the 100 highest losses; B = 3. NMS over the first 8 x B
        (then 32 x B) candidates keeps one box only, so the set must grow twice before it reaches
        the disjoint anchors, whose 2 hardest complete the minibatch."""
        crowd = torch.tensor([[0.0, 0, 50, 50]]).repeat(100, 1)
        crowd[:, 2] += torch.linspace(0, 1, 100)  # near-duplicates: IoU > 0.98
        boxes = torch.cat([crowd, _disjoint_boxes(150) + 1000])
        losses = torch.cat([torch.linspace(50, 20, 100), torch.linspace(10, 1, 150)])
        losses[120] = 15.0  # the hardest disjoint anchor is not the first one
        labels = torch.full((250,), K)
        picked = ohem_select(losses, labels, boxes, K, batch_size=3)
        self.assertEqual(picked.tolist(), [0, 120, 100])
        self.assertEqual(picked.tolist(), _reference(losses, labels, boxes, 3))

    def test_nms_sees_8b_candidates_then_4_times_more_each_round(self):
        """The point of the candidate window: NMS runs on 8 x B boxes while they give B
        survivors, and the window grows 4-fold only while they do not (the crowd above)."""
        sizes = []

        def recording_nms(boxes, scores, thresh):
            sizes.append(len(boxes))
            return nms(boxes, scores, thresh)

        crowd = torch.tensor([[0.0, 0, 50, 50]]).repeat(100, 1)
        with mock.patch.object(ohem, "nms", recording_nms):
            ohem_select(torch.rand(300), torch.full((300,), K), _disjoint_boxes(300), K, 6)
            self.assertEqual(sizes, [48])
            sizes.clear()
            boxes = torch.cat([crowd, _disjoint_boxes(150) + 1000])
            losses = torch.cat([torch.linspace(50, 20, 100), torch.linspace(10, 1, 150)])
            self.assertEqual(ohem_select(losses, torch.full((250,), K), boxes, K, 3).tolist(),
                             [0, 100, 101])  # fmt: skip
            self.assertEqual(sizes, [24, 96, 250])
            # Exactly B survivors in the first window (two crowds of 8): no second round.
            sizes.clear()
            boxes = torch.cat([crowd[:8], crowd[:8] + 100, _disjoint_boxes(84) + 1000])
            losses = torch.linspace(100, 1, 100)
            self.assertEqual(ohem_select(losses, torch.full((100,), K), boxes, K, 2).tolist(),
                             [0, 8])  # fmt: skip
            self.assertEqual(sizes, [16])

    def test_no_picks_for_a_budget_of_zero_or_no_candidates(self):
        boxes, losses = _disjoint_boxes(20), torch.linspace(2, 1, 20)
        for b in (0, -1):
            picked = ohem_select(losses, torch.full((20,), K), boxes, K, b)
            self.assertEqual((picked.tolist(), picked.dtype), ([], torch.long))
        picked = ohem_select(losses[:0], torch.full((0,), K), boxes[:0], K, 4)
        self.assertEqual((picked.tolist(), picked.dtype), ([], torch.long))

    def test_fewer_survivors_than_b_gives_all_of_them(self):
        crowd = torch.tensor([[0.0, 0, 50, 50]]).repeat(60, 1)
        boxes = torch.cat([crowd, _disjoint_boxes(2) + 1000])
        losses = torch.cat([torch.linspace(9, 3, 60), torch.tensor([2.0, 1.0])])
        picked = ohem_select(losses, torch.full((62,), K), boxes, K, batch_size=5)
        self.assertEqual(picked.tolist(), [0, 60, 61])

    def test_ratio_takes_hardest_positives_then_hardest_negatives(self):
        """120 positives and 400 negatives, B = 16 at 1:3: the 4 hardest positives, then the
        12 hardest negatives, all from far more than 8 x their budget."""
        gen = torch.Generator().manual_seed(1)
        labels = torch.cat([torch.zeros(120, dtype=torch.long), torch.full((400,), K)])
        labels = labels[torch.randperm(520, generator=gen)]
        losses = torch.rand(520, generator=gen)
        boxes = _disjoint_boxes(520)
        picked = ohem_select(losses, labels, boxes, K, batch_size=16, neg_pos_ratio=3.0)
        pos = torch.nonzero(labels == 0).squeeze(1)
        neg = torch.nonzero(labels == K).squeeze(1)
        want_pos = pos[losses[pos].argsort(descending=True)[:4]]
        want_neg = neg[losses[neg].argsort(descending=True)[:12]]
        self.assertEqual(picked.tolist(), want_pos.tolist() + want_neg.tolist())

    def test_loss_module_trains_only_the_hardest(self):
        """Through OHEMLoss: logits make background anchor i's CE grow with i; only the B hardest
        anchors get gradient, each 1/B of sigmoid(x), and the loss is their mean CE."""
        r, b = 200, 4
        x = torch.linspace(-3, 5, r)
        logits = torch.stack([torch.full((r,), -8.0), x], dim=1)[None].requires_grad_()
        labels = torch.full((1, r), K)
        loss_fn = OHEMLoss(batch_size_per_image=b)
        loss = loss_fn(logits, labels, anchor_boxes=_disjoint_boxes(r))
        hardest = list(range(r - 1, r - 1 - b, -1))
        self.assertEqual(loss_fn.select(logits, labels, _disjoint_boxes(r)).tolist(), hardest)
        ce = torch.nn.functional.softplus(logits.detach()[0, hardest]).sum(-1)
        torch.testing.assert_close(loss, ce.mean())
        loss.backward()
        trained = torch.nonzero(logits.grad[0].abs().sum(-1)).squeeze(1)
        self.assertEqual(sorted(trained.tolist()), sorted(hardest))
        expected_grad = torch.sigmoid(logits.detach()[0, hardest]) / b
        torch.testing.assert_close(logits.grad[0, hardest], expected_grad)


if __name__ == "__main__":
    unittest.main()
