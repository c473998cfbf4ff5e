"""Registered classification losses on the fused label-based pass, each returning the sum over
non-ignored anchors (contract: :data:`CLASSIFICATION_LOSS_REGISTRY`)."""

from __future__ import annotations

from typing import Optional

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from ._fused import LabelLossRunner
from ._terms import FocalStarTerms, FocalTerms, HingeTerms, Terms
from .build import CLASSIFICATION_LOSS_REGISTRY

__all__ = ["FocalLoss", "BalancedCELoss", "FocalLossStar", "HingeLoss"]


class _FusedSumLoss(nn.Module):
    """The fused pass of one terms object, reduced by "sum" (``compile``: through torch.compile)."""

    self_normalizing = False

    def __init__(self, terms: Terms, compile: bool):
        super().__init__()
        self.runner = LabelLossRunner(terms, compile)

    @torch.jit.unused  # training only: a scripted detector keeps it as a stub
    def forward(
        self, pred_logits: Tensor, gt_labels: Tensor, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """fp32 scalar: the sum over non-ignored anchors and all K classes (anchor_boxes unused)."""
        return self.runner.loss(pred_logits, gt_labels, "sum", type(self).__name__)

    def elementwise_losses(
        self, pred_logits: Tensor, gt_labels: Tensor, *, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """(N, R, K) fp32 loss of each element, 0 for ignored anchors, without gradient."""
        return self.runner.elementwise_losses(pred_logits, gt_labels)

    def anchor_losses(self, pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
        """(N, R) fp32 loss of each anchor summed over its K classes (0 if ignored), no gradient."""
        return self.runner.anchor_losses(pred_logits, gt_labels)

    def extra_repr(self) -> str:
        terms = self.runner.terms
        params = ", ".join(f"{k}={v}" for k, v in vars(terms).items() if k != "hard_targets")
        return f"{params}, compile={self.runner.compile}"


@CLASSIFICATION_LOSS_REGISTRY.register()
class FocalLoss(_FusedSumLoss):
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` (paper, Eq. 5), the default:
    ``alpha`` weights positives (negatives 1 - alpha; none if < 0), ``gamma`` >= 0 focuses."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, compile: bool = False):
        if alpha > 1:
            raise ValueError(
                f"{type(self).__name__}: alpha (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) must be in "
                f"[0, 1], or < 0 to disable the weighting; got {alpha}"
            )
        if gamma < 0:
            raise ValueError(
                f"FocalLoss: gamma (cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA) must be >= 0, got {gamma}"
            )
        super().__init__(FocalTerms(alpha, gamma, hard_targets=True), compile)

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "gamma": cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA,
            "compile": cfg.MODEL.RETINAFOCAL.LOSS.COMPILE,
        }


@CLASSIFICATION_LOSS_REGISTRY.register()
class BalancedCELoss(FocalLoss):
    """Alpha-balanced CE ``-alpha_t log(p_t)`` (paper, Eq. 3, the baseline of Table 1a): the
    focal loss with gamma = 0; ``alpha`` < 0 gives plain CE."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, compile: bool = False):
        super().__init__(alpha=alpha, gamma=0.0, compile=compile)

    @classmethod
    def from_config(cls, cfg):
        return {k: v for k, v in super().from_config(cfg).items() if k != "gamma"}


@CLASSIFICATION_LOSS_REGISTRY.register()
class FocalLossStar(_FusedSumLoss):
    """FL* (paper, Appendix A; the formula in :class:`._terms.FocalStarTerms`): gamma > 0, no alpha
    weighting. The paper used gamma = 2, beta = 1."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, beta: float = 1.0, compile: bool = False):
        if gamma <= 0:
            raise ValueError(
                f"FocalLossStar: gamma (cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA) must be > 0, "
                f"got {gamma}"
            )
        super().__init__(FocalStarTerms(gamma, beta), compile)

    @classmethod
    def from_config(cls, cfg):
        return {
            "gamma": cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_GAMMA,
            "beta": cfg.MODEL.RETINAFOCAL.LOSS.FL_STAR_BETA,
            "compile": cfg.MODEL.RETINAFOCAL.LOSS.COMPILE,
        }


@CLASSIFICATION_LOSS_REGISTRY.register()
class HingeLoss(_FusedSumLoss):
    """Hinge loss ``max(0, margin - p_t)`` (paper, Sec. 5.1), margin in (0, 1]: on p_t itself, as
    the paper words it ("sets loss to 0 above a certain value of p_t"), not on the logit. Its
    gradient ``-p_t (1 - p_t)`` vanishes for confidently wrong elements, consistent with the
    paper finding it unstable to train."""

    @configurable
    def __init__(self, *, margin: float = 0.5, compile: bool = False):
        if not 0.0 < margin <= 1.0:
            raise ValueError(
                f"HingeLoss: margin (cfg.MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN) must be in (0, 1], "
                f"got {margin}"
            )
        super().__init__(HingeTerms(margin), compile)

    @classmethod
    def from_config(cls, cfg):
        return {
            "margin": cfg.MODEL.RETINAFOCAL.LOSS.HINGE_MARGIN,
            "compile": cfg.MODEL.RETINAFOCAL.LOSS.COMPILE,
        }
