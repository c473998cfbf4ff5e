"""Online hard example mining for the dense detector (paper, Sec. 5.1 and Table 1d)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from detectron2.config import configurable
from torch import Tensor, nn
from torchvision.ops import nms

from ._fused import LabelLossRunner
from ._terms import FocalTerms
from .build import CLASSIFICATION_LOSS_REGISTRY

__all__ = ["OHEMLoss", "ohem_select"]


def _top_after_nms(boxes: Tensor, scores: Tensor, k: int, nms_thresh: float) -> Tensor:
    """Indices of the first ``k`` boxes kept by greedy NMS in decreasing score order. Greedy NMS
    decides a box from higher-scoring boxes only, so NMS of the m best gives exactly the head of
    the full result: m grows until k survive, instead of an NMS over all anchors."""
    n = scores.numel()
    k = max(k, 0)  # no boxes for k <= 0 (the loop below also handles n == 0: NMS of nothing)
    order = torch.argsort(scores, descending=True, stable=True)
    m = min(n, 8 * k)
    while True:
        cand = order[:m]
        keep = nms(boxes[cand].float(), scores[cand].float(), nms_thresh)
        if keep.numel() >= k or m == n:
            return cand[keep[:k]]
        m = min(n, 4 * m)


def _floor_as_written(value: float) -> int:
    """floor(value) of a quotient or product of decimals as written (0.57 * 100 is 56.99...9 in
    binary floats): 1e-9 is far above such rounding, far below a true fraction's gap."""
    return math.floor(value + 1e-9)


def ohem_select(
    losses: Tensor,
    labels: Tensor,
    anchor_boxes: Tensor,
    num_classes: int,
    batch_size: int,
    neg_pos_ratio: float = 0.0,
    nms_thresh: float = 0.5,
) -> Tensor:
    """Pick one image's OHEM minibatch: (S,) int64 indices into the R anchors, S <= B =
    ``batch_size``. ``losses`` (R,) rank the anchors, ``labels`` (R,) are [0, K) positive,
    K = ``num_classes`` background, -1 ignored (never picked), and an NMS over ``anchor_boxes``
    (R, 4) XYXY suppresses a lower-loss anchor above IoU ``nms_thresh``. ``neg_pos_ratio`` 0
    picks the B highest-loss anchors surviving one NMS over all valid anchors; r > 0 picks like
    SSD, with separate NMS over positives and negatives: the floor(B / (1 + r)) highest-loss
    surviving positives, then floor(r * P) negatives for the P positives taken (so an image
    without positives gives nothing)."""
    valid = labels >= 0
    if neg_pos_ratio <= 0:
        idx = torch.nonzero(valid).squeeze(1)
        return idx[_top_after_nms(anchor_boxes[idx], losses[idx], batch_size, nms_thresh)]
    pos = torch.nonzero(valid & (labels < num_classes)).squeeze(1)
    neg = torch.nonzero(labels == num_classes).squeeze(1)
    max_pos = _floor_as_written(batch_size / (1 + neg_pos_ratio))
    pos = pos[_top_after_nms(anchor_boxes[pos], losses[pos], max_pos, nms_thresh)]
    # P <= B / (1 + r) gives r P <= B - P: the minibatch never exceeds B anchors.
    num_neg = _floor_as_written(neg_pos_ratio * pos.numel())
    neg = neg[_top_after_nms(anchor_boxes[neg], losses[neg], num_neg, nms_thresh)]
    return torch.cat([pos, neg])


@CLASSIFICATION_LOSS_REGISTRY.register()
class OHEMLoss(nn.Module):
    """Sigmoid CE over a per-image minibatch of the hardest anchors (the paper's OHEM baseline):
    anchors scored by their CE summed over classes, picked by :func:`ohem_select`, their CE
    averaged over all kept anchors of the batch as the paper averages over the minibatch (hence
    ``self_normalizing``). Plain CE: the sampling does the balancing."""

    self_normalizing = True

    @configurable
    def __init__(
        self,
        *,
        batch_size_per_image: int = 128,
        neg_pos_ratio: float = 0.0,
        nms_thresh: float = 0.5,
        compile: bool = False,
    ):
        """``batch_size_per_image``, ``neg_pos_ratio``, ``nms_thresh``: B, r and the threshold
        of :func:`ohem_select` (the paper: B in 128..512, r = 3); ``compile`` the scoring pass."""
        super().__init__()
        # B < 1 + r (B <= 0 too) leaves room for no positive, hence no negative: always a loss of 0.
        if neg_pos_ratio < 0 or _floor_as_written(batch_size_per_image / (1 + neg_pos_ratio)) < 1:
            raise ValueError(
                "OHEMLoss: neg_pos_ratio (cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NEG_POS_RATIO) must be "
                f">= 0, and OHEM_BATCH_SIZE_PER_IMAGE >= 1 + ratio; got {neg_pos_ratio} and "
                f"{batch_size_per_image}"
            )
        if not 0.0 < nms_thresh <= 1.0:
            raise ValueError(
                "OHEMLoss: nms_thresh (cfg.MODEL.RETINAFOCAL.LOSS.OHEM_NMS_THRESH) must be in "
                f"(0, 1], got {nms_thresh}"
            )
        self.batch_size_per_image = int(batch_size_per_image)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.nms_thresh = float(nms_thresh)
        ce = FocalTerms(alpha=-1.0, gamma=0.0, hard_targets=True)
        # Only scoring every anchor is worth compiling; the kept few hundred run eagerly.
        self._scorer = LabelLossRunner(ce, compile)
        self._kept = LabelLossRunner(ce, False)

    @classmethod
    def from_config(cls, cfg):
        loss = cfg.MODEL.RETINAFOCAL.LOSS
        return {
            "batch_size_per_image": loss.OHEM_BATCH_SIZE_PER_IMAGE,
            "neg_pos_ratio": loss.OHEM_NEG_POS_RATIO,
            "nms_thresh": loss.OHEM_NMS_THRESH,
            "compile": loss.COMPILE,
        }

    def anchor_losses(self, pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
        """(N, R) fp32 CE of each anchor summed over classes (0 if ignored), no gradient."""
        return self._scorer.anchor_losses(pred_logits, gt_labels)

    def select(
        self, pred_logits: Tensor, gt_labels: Tensor, anchor_boxes: Optional[Tensor]
    ) -> Tensor:
        """Flat indices into the N * R anchors of the batch's OHEM minibatch; no gradient.
        ``anchor_boxes`` (R, 4) is required."""
        if pred_logits.dim() != 3:
            raise ValueError(
                f"OHEMLoss: pred_logits must be (N, R, K), got {tuple(pred_logits.shape)}"
            )
        n, r, k = pred_logits.shape
        if anchor_boxes is None:
            raise ValueError("OHEMLoss needs anchor_boxes (R, 4) for its NMS; got None")
        if anchor_boxes.shape != (r, 4):
            raise ValueError(
                f"OHEMLoss: anchor_boxes must be (R={r}, 4), got {tuple(anchor_boxes.shape)}"
            )
        scores = self._scorer.anchor_losses(pred_logits, gt_labels, "OHEMLoss")
        settings = (self.batch_size_per_image, self.neg_pos_ratio, self.nms_thresh)
        picked = [
            ohem_select(scores[i], gt_labels[i], anchor_boxes, k, *settings) + i * r
            for i in range(n)
        ]
        return torch.cat(picked) if picked else gt_labels.new_empty(0)

    @torch.jit.unused  # training only: a scripted detector keeps it as a stub
    def forward(
        self, pred_logits: Tensor, gt_labels: Tensor, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """fp32 scalar, the mean over picked anchors of their CE summed over classes (0, still in
        the graph, when none is picked)."""
        idx = self.select(pred_logits, gt_labels, anchor_boxes)
        flat = pred_logits.reshape(-1, pred_logits.shape[-1])
        if idx.numel() == 0:
            return flat[:0].float().sum()
        total = self._kept.loss(flat[idx], gt_labels.reshape(-1)[idx], "sum", "OHEMLoss")
        return total / idx.numel()

    def elementwise_losses(
        self, pred_logits: Tensor, gt_labels: Tensor, *, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """(N, R, K) fp32, no gradient: CE / (kept anchors) for kept anchors' elements, else 0
        (the selection is deterministic, so the same anchors as :meth:`forward`)."""
        idx = self.select(pred_logits, gt_labels, anchor_boxes)
        flat = pred_logits.detach().reshape(-1, pred_logits.shape[-1])
        kept = self._kept.elementwise_losses(flat[idx], gt_labels.reshape(-1)[idx])
        out = kept.new_zeros(flat.shape)
        out[idx] = kept / idx.numel()  # with nothing kept, an empty division that writes nothing
        return out.view(pred_logits.shape)

    def extra_repr(self) -> str:
        return (
            f"batch_size_per_image={self.batch_size_per_image}, "
            f"neg_pos_ratio={self.neg_pos_ratio}, nms_thresh={self.nms_thresh}, "
            f"compile={self._scorer.compile}"
        )
