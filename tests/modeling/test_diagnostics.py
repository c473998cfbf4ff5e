"""The imbalance diagnostics describe the classification loss that trains, with its own
parameters: one road for alpha and gamma."""
import copy
import unittest

import torch
import torch.nn.functional as F
import torchvision

import retinafocal  # noqa: F401
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from retinafocal.losses import ohem_select
from retinafocal.modeling.diagnostics import imbalance_statistics

from .common import make_inputs, small_retinanet_cfg

SHARES = ("cls_loss_share_easy_neg", "cls_loss_share_hard_neg")


def _one_hot(labels, k):
    """(N, R) labels -> (N, R, K) float64 targets; background K and ignored -1 -> all zeros."""
    return F.one_hot(labels.clamp_min(0), k + 1)[..., :k].double() * (labels >= 0)[..., None]


def _shares(element_losses, logits, labels, hard_fraction=0.1):
    """Shares of the total loss from easy (p_t > 0.5) negatives and from the 10% highest-loss
    negatives, written out directly (float64)."""
    k = logits.shape[-1]
    valid = labels >= 0
    loss = element_losses[valid].double()
    t = _one_hot(labels, k)[valid]
    negative = t == 0
    p_t = 1 - torch.sigmoid(logits[valid].double()[negative])
    neg_loss = loss[negative]
    hardest = neg_loss.sort(descending=True).values[: int(hard_fraction * neg_loss.numel())]
    total = loss.sum()
    return {
        "cls_loss_share_easy_neg": float(neg_loss[p_t > 0.5].sum() / total),
        "cls_loss_share_hard_neg": float(hardest.sum() / total),
    }


def _reference_shares(logits, labels, alpha, gamma):
    """The shares under torchvision's focal loss on one-hot targets (gamma 0: balanced CE)."""
    t = _one_hot(labels, logits.shape[-1])
    loss = torchvision.ops.sigmoid_focal_loss(logits.double(), t, alpha, gamma, reduction="none")
    return _shares(loss * (labels >= 0)[..., None], logits, labels)


def _logged_and_seen(cfg):
    """Train one step of a seeded model with diagnostics on; returns the logged imbalance
    scalars and the (logits, labels) the classification loss was called with."""
    cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 1
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        # Logits around -2 with a spread of ~1.3 instead of the prior's -4.6 +- 0.004, so that
        # negatives lie on both sides of p_t = 0.5 and the loss differs between them.
        model.head.cls_score.weight.mul_(300.0)
        model.head.cls_score.bias.fill_(-2.0)
    model.train()
    seen = []
    original = model.classification_loss.forward

    def spy(logits, labels, **kwargs):
        seen.append((logits.detach().clone(), labels.clone(), kwargs["anchor_boxes"]))
        return original(logits, labels, **kwargs)

    model.classification_loss.forward = spy
    with EventStorage(0) as storage:
        model(copy.deepcopy(make_inputs()))
        latest = storage.latest()
    logged = {k: latest[f"imbalance/{k}"][0] for k in SHARES}
    return logged, seen[0], model.classification_loss


class TestDiagnosticsFollowTheLoss(unittest.TestCase):
    def test_balanced_ce_and_focal_loss_log_their_own_shares(self):
        """FOCAL_LOSS_GAMMA stays at 2 for the CE run: the diagnostics must still measure CE,
        because they take the per-element losses from the loss that trains."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "BalancedCELoss"
        cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.75
        cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
        ce_logged, (logits, labels, _), _ = _logged_and_seen(cfg)
        ce_expected = _reference_shares(logits, labels, alpha=0.75, gamma=0.0)

        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "FocalLoss"
        cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
        cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
        fl_logged, (fl_logits, fl_labels, _), _ = _logged_and_seen(cfg)
        torch.testing.assert_close(fl_logits, logits)  # same weights, same inputs
        self.assertTrue(torch.equal(fl_labels, labels))
        fl_expected = _reference_shares(logits, labels, alpha=0.25, gamma=2.0)

        for key in SHARES:
            with self.subTest(key=key):
                self.assertAlmostEqual(ce_logged[key], ce_expected[key], places=5)
                self.assertAlmostEqual(fl_logged[key], fl_expected[key], places=5)
                self.assertGreater(abs(ce_logged[key] - fl_logged[key]), 0.05)
        # The focal term moves the loss from easy negatives to the hardest ones (Sec. 3.2, Fig. 4).
        self.assertLess(fl_logged[SHARES[0]], ce_logged[SHARES[0]])
        self.assertGreater(fl_logged[SHARES[1]], ce_logged[SHARES[1]])

    def test_ohem_logs_the_shares_of_its_kept_anchors(self):
        """OHEM trains on the CE of its kept anchors only, so the diagnostics see those: the
        reference keeps the same anchors (ohem_select on the loss's own hardness scores), gives
        them their BCE / (number kept) and everything else 0."""
        cfg = small_retinanet_cfg()
        cfg.MODEL.RETINAFOCAL.LOSS.NAME = "OHEMLoss"
        cfg.MODEL.RETINAFOCAL.LOSS.OHEM_BATCH_SIZE_PER_IMAGE = 8
        logged, (logits, labels, boxes), ohem = _logged_and_seen(cfg)
        k = logits.shape[-1]
        scores = ohem.anchor_losses(logits, labels)
        kept = torch.zeros(labels.shape, dtype=torch.bool)
        for i in range(len(labels)):
            kept[i, ohem_select(scores[i], labels[i], boxes, k, 8, 0.0, 0.5)] = True
        self.assertLessEqual(int(kept.sum()), 16)
        bce = F.binary_cross_entropy_with_logits(
            logits.double(), _one_hot(labels, k), reduction="none"
        )
        expected = _shares(bce * kept[..., None] / kept.sum(), logits, labels)
        all_anchors = _reference_shares(logits, labels, alpha=-1.0, gamma=0.0)
        for key in SHARES:
            with self.subTest(key=key):
                self.assertAlmostEqual(logged[key], expected[key], places=5)
        # Not the shares of CE over all anchors: those would count the easy negatives OHEM drops.
        hard = "cls_loss_share_hard_neg"
        self.assertGreater(abs(logged[hard] - all_anchors[hard]), 0.05)


class TestImbalanceStatistics(unittest.TestCase):
    def test_hand_computed(self):
        """One image, K = 2. Anchor 0 is class 0, anchor 1 background, anchor 2 ignored.
        Negatives: (0, 1) logit -1 (easy), (1, 0) logit 2 (hard), (1, 1) logit -3 (easy)."""
        logits = torch.tensor([[[1.0, -1.0], [2.0, -3.0], [5.0, 5.0]]])
        labels = torch.tensor([[0, 2, -1]])
        losses = torch.tensor([[[0.5, 1.0], [4.0, 2.5], [0.0, 0.0]]])  # any values, total 8
        stats = imbalance_statistics(losses, logits, labels, hard_fraction=0.4)
        self.assertEqual(stats["num_pos_anchors"], 1.0)
        self.assertEqual(stats["num_ignored_anchors"], 1.0)
        self.assertAlmostEqual(stats["cls_loss_share_easy_neg"], (1.0 + 2.5) / 8)
        # 40% of 3 negatives -> the single hardest: 4.0.
        self.assertAlmostEqual(stats["cls_loss_share_hard_neg"], 4.0 / 8)

    def test_zero_loss_and_shape_mismatch(self):
        logits = torch.zeros(1, 2, 3)
        labels = torch.tensor([[3, -1]])
        stats = imbalance_statistics(torch.zeros(1, 2, 3), logits, labels)
        self.assertEqual([stats[key] for key in SHARES], [0.0, 0.0])
        with self.assertRaisesRegex(ValueError, "element_losses"):
            imbalance_statistics(torch.zeros(1, 2), logits, labels)


if __name__ == "__main__":
    unittest.main()
