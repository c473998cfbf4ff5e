"""Foreground/background imbalance diagnostics, written to detectron2's EventStorage."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["imbalance_statistics"]


@torch.no_grad()
def imbalance_statistics(
    pred_logits: Tensor, gt_labels: Tensor, *, alpha: float, gamma: float, hard_fraction: float = 0.1
) -> Dict[str, float]:
    """Measure how the classification loss splits between easy and hard examples.

    Each (anchor, class) pair of a non-ignored anchor is one binary example, as in the sigmoid
    loss; a *negative* is a pair whose target is 0 (every class of a background anchor, and the
    other classes of a foreground anchor). Losses are the focal loss with the given alpha/gamma
    (gamma = 0 is alpha-balanced CE), so the shares describe what the optimiser sees.

    Args:
        pred_logits: (N, R, K) logits.
        gt_labels: (N, R) int64; [0, K) = class, K = background, -1 = ignored.
        alpha, gamma: focal-loss parameters (alpha < 0: no alpha weighting).
        hard_fraction: fraction of negatives counted as "hardest" (0.1 = the 10% hardest).

    Returns:
        dict with ``num_pos_anchors`` and ``num_ignored_anchors`` (per image),
        ``cls_loss_share_easy_neg`` (share of the loss from negatives with p_t > 0.5) and
        ``cls_loss_share_hard_neg`` (share from the ``hard_fraction`` highest-loss negatives).
    """
    num_images, _, num_classes = pred_logits.shape
    valid = gt_labels >= 0
    stats = {
        "num_pos_anchors": float(((gt_labels >= 0) & (gt_labels < num_classes)).sum()) / num_images,
        "num_ignored_anchors": float((~valid).sum()) / num_images,
    }
    logits = pred_logits[valid].float()  # (V, K)
    targets = F.one_hot(gt_labels[valid], num_classes + 1)[:, :num_classes].to(logits.dtype)
    prob = logits.sigmoid()
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = loss * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    total = loss.sum()
    negative = targets == 0
    neg_loss = loss[negative]
    if total <= 0 or neg_loss.numel() == 0:
        stats.update(cls_loss_share_easy_neg=0.0, cls_loss_share_hard_neg=0.0)
        return stats
    easy = neg_loss[p_t[negative] > 0.5].sum()
    num_hard = max(1, int(hard_fraction * neg_loss.numel()))
    hard = neg_loss.topk(num_hard).values.sum()
    stats["cls_loss_share_easy_neg"] = float(easy / total)
    stats["cls_loss_share_hard_neg"] = float(hard / total)
    return stats
