"""Foreground/background imbalance diagnostics, written to detectron2's EventStorage."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

__all__ = ["imbalance_statistics"]


@torch.no_grad()
def imbalance_statistics(
    element_losses: Tensor, pred_logits: Tensor, gt_labels: Tensor, *, hard_fraction: float = 0.1
) -> Dict[str, float]:
    """How the classification loss splits between easy and hard negatives: each (anchor, class)
    pair of a non-ignored anchor is one binary example, a *negative* one with target 0. The losses
    are the training loss's ``elementwise_losses``: the shares are what the optimiser sees. Returns
    ``num_pos_anchors`` and ``num_ignored_anchors`` per image, ``cls_loss_share_easy_neg`` (share
    of the loss from negatives with p_t > 0.5) and ``cls_loss_share_hard_neg`` (from the
    ``hard_fraction`` highest-loss negatives), both 0 without loss or negatives.

    Args:
        element_losses: (N, R, K) loss of each pair, 0 for ignored anchors.
        pred_logits: (N, R, K) logits, which tell easy from hard negatives.
        gt_labels: (N, R) int64; [0, K) = class, K = background, -1 = ignored.
        hard_fraction: fraction of negatives counted as "hardest" (0.1 = the 10% hardest).
    """
    num_images, _, num_classes = pred_logits.shape
    if element_losses.shape != pred_logits.shape:
        raise ValueError(
            f"imbalance_statistics: element_losses {tuple(element_losses.shape)} must have the "
            f"logits' shape {tuple(pred_logits.shape)}"
        )
    valid = gt_labels >= 0
    stats = {
        "num_pos_anchors": float((valid & (gt_labels < num_classes)).sum()) / num_images,
        "num_ignored_anchors": float((~valid).sum()) / num_images,
    }
    loss = element_losses[valid].float()  # (V, K)
    classes = torch.arange(num_classes, device=gt_labels.device)
    negative = classes[None, :] != gt_labels[valid][:, None]  # (V, K)
    total = loss.sum()
    neg_loss = loss[negative]
    if total <= 0 or neg_loss.numel() == 0:
        stats.update(cls_loss_share_easy_neg=0.0, cls_loss_share_hard_neg=0.0)
        return stats
    # A negative's p_t = 1 - sigmoid(x) exceeds 0.5 exactly when its logit is below 0.
    easy = neg_loss[pred_logits[valid][negative] < 0].sum()
    num_hard = max(1, int(hard_fraction * neg_loss.numel()))
    hard = neg_loss.topk(num_hard).values.sum()
    stats["cls_loss_share_easy_neg"] = float(easy / total)
    stats["cls_loss_share_hard_neg"] = float(hard / total)
    return stats
