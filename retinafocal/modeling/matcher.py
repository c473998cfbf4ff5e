"""Anchor matchers and their registry."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.structures import Boxes, pairwise_iou
from detectron2.utils.registry import Registry

__all__ = ["ANCHOR_MATCHER_REGISTRY", "build_anchor_matcher", "ChunkedIoUMatcher"]

ANCHOR_MATCHER_REGISTRY = Registry("RETINAFOCAL_ANCHOR_MATCHER")
ANCHOR_MATCHER_REGISTRY.__doc__ = """
Anchor matchers of :class:`retinafocal.modeling.FocalRetinaNet`, by
``cfg.MODEL.RETINAFOCAL.MATCHER_NAME``. A member is built as ``Matcher(cfg)`` and called as
``matcher(gt_boxes (M, 4), anchors (R, 4))`` (XYXY, M may be 0); it returns (R,) int64
``matched_idxs`` (ground truth index in [0, M), any value when M == 0) and (R,) int8
``match_labels`` (1 = foreground, 0 = background, -1 = ignored).
"""


def build_anchor_matcher(cfg) -> nn.Module:
    """Build the matcher named by ``cfg.MODEL.RETINAFOCAL.MATCHER_NAME``."""
    return ANCHOR_MATCHER_REGISTRY.get(cfg.MODEL.RETINAFOCAL.MATCHER_NAME)(cfg)


@ANCHOR_MATCHER_REGISTRY.register()
class ChunkedIoUMatcher(nn.Module):
    """The paper's IoU matcher (Sec. 4), with bounded memory: each anchor takes the ground truth
    it overlaps most; with thresholds ``[0.4, 0.5]`` and labels ``[0, -1, 1]``, IoU >= 0.5 is
    foreground, < 0.4 background, in between ignored. With ``allow_low_quality_matches``, each
    ground truth's highest-IoU anchors (ties included) become foreground even below 0.5. Results
    equal detectron2's ``Matcher`` on ``pairwise_iou``, except that a ground truth overlapping no
    anchor gets none (detectron2 makes every anchor foreground).

    The IoU matrix is built in blocks of ``max(1, chunk_elements // M)`` anchors (recomputed for
    low-quality matches): about ``32 * max(chunk_elements, M)`` bytes at peak (``pairwise_iou``
    keeps ~8 float32 temporaries per value; 128 MiB by default), whatever R.

    Example (thresholds [0.4, 0.5], labels [0, -1, 1], low-quality matches on)::

        gt      = [[0, 0, 10, 10]]
        anchors = [[0, 0, 10, 10],   # IoU 1.00 -> label 1
                   [0, 0, 10, 12],   # IoU 0.83 -> label 1
                   [0, 0, 10, 22],   # IoU 0.45 -> label -1 (ignored)
                   [20, 20, 30, 30]] # IoU 0.00 -> label 0
    """

    @configurable
    def __init__(
        self,
        *,
        thresholds: List[float],
        labels: List[int],
        allow_low_quality_matches: bool = False,
        chunk_elements: int = 4 * 1024 * 1024,
    ):
        """``thresholds``: increasing IoUs splitting [0, 1] into intervals, e.g. [0.4, 0.5];
        ``labels``: the label (-1, 0 or 1) of each interval, e.g. [0, -1, 1];
        ``chunk_elements``: the most IoU values held at once."""
        super().__init__()
        if any(b < a for a, b in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"IoU thresholds must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"need {len(thresholds) + 1} labels for thresholds {thresholds}, got {labels}"
            )
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"labels must be -1, 0 or 1, got {labels}")
        if chunk_elements < 1:
            raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
        self.thresholds = list(thresholds)
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches
        self.chunk_elements = int(chunk_elements)

    @classmethod
    def from_config(cls, cfg):
        return {
            "thresholds": list(cfg.MODEL.RETINANET.IOU_THRESHOLDS),
            "labels": list(cfg.MODEL.RETINANET.IOU_LABELS),
            "allow_low_quality_matches": cfg.MODEL.RETINAFOCAL.ALLOW_LOW_QUALITY_MATCHES,
            "chunk_elements": cfg.MODEL.RETINAFOCAL.MATCHER_CHUNK_ELEMENTS,
        }

    def _chunks(self, num_gt: int, num_anchors: int) -> List[Tuple[int, int]]:
        """(start, end) of the anchor chunks (a list: TorchScript compiles no generator)."""
        step = max(1, self.chunk_elements // max(num_gt, 1))
        return [(start, min(start + step, num_anchors)) for start in range(0, num_anchors, step)]

    def forward(self, gt_boxes: Tensor, anchors: Tensor) -> Tuple[Tensor, Tensor]:
        """``gt_boxes`` (M, 4), ``anchors`` (R, 4) -> (R,) int64 ``matched_idxs`` (0 when M == 0)
        and (R,) int8 ``match_labels``, as :data:`ANCHOR_MATCHER_REGISTRY` describes."""
        # A ``with`` block: TorchScript cannot compile the @torch.no_grad() decorator.
        with torch.no_grad():
            return self._match(gt_boxes, anchors)

    def _match(self, gt_boxes: Tensor, anchors: Tensor) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` without its ``no_grad``."""
        num_gt, num_anchors = gt_boxes.shape[0], anchors.shape[0]
        device = anchors.device
        if num_gt == 0:
            # No object: every anchor is background, as if its IoU were 0.
            label = self._label_of_iou(torch.zeros(num_anchors, device=device))
            return torch.zeros(num_anchors, dtype=torch.int64, device=device), label

        gt = Boxes(gt_boxes)
        # IoUs in the dtype of the boxes (Boxes holds float32), which pairwise_iou keeps.
        best_iou = gt.tensor.new_empty(num_anchors)
        matched_idxs = torch.empty(num_anchors, dtype=torch.int64, device=device)
        best_iou_per_gt = gt.tensor.new_zeros(num_gt)
        for start, end in self._chunks(num_gt, num_anchors):
            chunk_best, chunk_idxs, chunk_best_per_gt = self._best_in_chunk(gt, anchors[start:end])
            best_iou[start:end] = chunk_best
            matched_idxs[start:end] = chunk_idxs
            torch.maximum(best_iou_per_gt, chunk_best_per_gt, out=best_iou_per_gt)

        match_labels = self._label_of_iou(best_iou)
        if self.allow_low_quality_matches:
            # Each ground truth's highest-IoU anchors (ties included) become foreground, keeping
            # their own best match in matched_idxs, as detectron2 does. A best IoU of 0 (no
            # overlap) becomes NaN, which no IoU equals.
            target = best_iou_per_gt.masked_fill(best_iou_per_gt <= 0, float("nan"))[:, None]
            for start, end in self._chunks(num_gt, num_anchors):
                is_best = (pairwise_iou(gt, Boxes(anchors[start:end])) == target).any(dim=0)
                match_labels[start:end][is_best] = 1
        return matched_idxs, match_labels

    def _best_in_chunk(self, gt: Boxes, anchors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """For C anchors: the highest IoU of each (C,), its ground truth (C,), and the highest
        IoU of each ground truth (M,). The (M, C) IoU block dies on return, before the next."""
        iou = pairwise_iou(gt, Boxes(anchors))  # (M, C)
        best, idxs = iou.max(dim=0)
        return best, idxs, iou.max(dim=1).values

    def _label_of_iou(self, best_iou: Tensor) -> Tensor:
        """(R,) IoU of each anchor with its best ground truth -> (R,) int8 labels."""
        match_labels = torch.full(best_iou.shape, self.labels[0], dtype=torch.int8,
                                  device=best_iou.device)
        for label, low in zip(self.labels[1:], self.thresholds):
            match_labels[best_iou >= low] = label
        return match_labels

    def extra_repr(self) -> str:
        return (
            f"thresholds={self.thresholds}, labels={self.labels}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches}, "
            f"chunk_elements={self.chunk_elements}"
        )
