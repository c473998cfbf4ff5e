"""Registered per-anchor classification losses built on the fused label-based pass.

All of them return the loss summed over non-ignored anchors (``self_normalizing = False``); the
meta-architecture divides by its normaliser. See :data:`CLASSIFICATION_LOSS_REGISTRY` for the
call contract.
"""

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
    """Shared behaviour: the fused pass of one terms object, with reduction "sum"."""

    self_normalizing = False

    def __init__(self, terms: Terms, compile: bool):
        super().__init__()
        # The runner owns this loss's compiled kernels (when ``compile``) and its fallback state.
        self.runner = LabelLossRunner(terms, compile)

    @torch.jit.unused  # training only: a scripted detector keeps it as a stub
    def forward(
        self, pred_logits: Tensor, gt_labels: Tensor, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """The loss of ``pred_logits`` (N, R, K) against ``gt_labels`` (N, R), as the contract of
        :data:`CLASSIFICATION_LOSS_REGISTRY` says (``anchor_boxes`` unused): an fp32 scalar,
        summed over non-ignored anchors and all K classes."""
        return self.runner.loss(pred_logits, gt_labels, "sum", type(self).__name__)

    def elementwise_losses(
        self, pred_logits: Tensor, gt_labels: Tensor, *, anchor_boxes: Optional[Tensor] = None
    ) -> Tensor:
        """(N, R, K) fp32 loss of each (anchor, class) element, 0 for ignored anchors, without
        gradient; its sum is :meth:`forward`'s value. ``anchor_boxes`` is unused."""
        return self.runner.elementwise_losses(pred_logits, gt_labels)

    def anchor_losses(self, pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
        """(N, R) fp32 loss of each anchor summed over its K classes (0 for ignored anchors),
        without gradient and without an (N, R, K) temporary."""
        return self.runner.anchor_losses(pred_logits, gt_labels)

    def extra_repr(self) -> str:
        terms = self.runner.terms
        params = ", ".join(f"{k}={v}" for k, v in vars(terms).items() if k != "hard_targets")
        return f"{params}, compile={self.runner.compile}"


def _check_alpha(alpha: float, owner: str) -> None:
    if alpha > 1:
        raise ValueError(
            f"{owner}: alpha (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA) must be in [0, 1], or < 0 to "
            f"disable the weighting; got {alpha}"
        )


@CLASSIFICATION_LOSS_REGISTRY.register()
class FocalLoss(_FusedSumLoss):
    """Sigmoid focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` (paper, Eq. 5), fused and
    label-based. The default classification loss."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, compile: bool = False):
        """
        Args:
            alpha: weight of positives (negatives get 1 - alpha); < 0 disables it.
            gamma: focusing parameter >= 0.
            compile: run the fused pass through torch.compile.
        """
        _check_alpha(alpha, "FocalLoss")
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
class BalancedCELoss(_FusedSumLoss):
    """Alpha-balanced binary cross-entropy ``-alpha_t log(p_t)`` (paper, Eq. 3): the focal loss
    with gamma = 0, the paper's baseline in Table 1a."""

    @configurable
    def __init__(self, *, alpha: float = 0.25, compile: bool = False):
        """
        Args:
            alpha: weight of positives (negatives get 1 - alpha); < 0 gives plain CE.
            compile: run the fused pass through torch.compile.
        """
        _check_alpha(alpha, "BalancedCELoss")
        super().__init__(FocalTerms(alpha, 0.0, hard_targets=True), compile)

    @classmethod
    def from_config(cls, cfg):
        return {
            "alpha": cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA,
            "compile": cfg.MODEL.RETINAFOCAL.LOSS.COMPILE,
        }


@CLASSIFICATION_LOSS_REGISTRY.register()
class FocalLossStar(_FusedSumLoss):
    """FL* (paper, Appendix A): with ``x_t = x`` for the anchor's class and ``-x`` for the others,
    ``p*_t = sigmoid(gamma x_t + beta)`` and ``FL* = -log(p*_t) / gamma``. No alpha weighting.
    The paper used gamma = 2, beta = 1."""

    @configurable
    def __init__(self, *, gamma: float = 2.0, beta: float = 1.0, compile: bool = False):
        """
        Args:
            gamma: > 0, scales the logit (and divides the loss).
            beta: shift of the scaled logit.
            compile: run the fused pass through torch.compile.
        """
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
    """Hinge loss on p_t (paper, Sec. 5.1), our exact form:

        L(x, t) = max(0, margin - p_t),   p_t = sigmoid(x) if t = 1 else 1 - sigmoid(x),

    summed over classes and anchors like the other losses. An element costs nothing once its p_t
    reaches the margin and at most ``margin`` otherwise; its gradient is ``-p_t (1 - p_t)`` along
    x_t below the margin. We chose the hinge on p_t itself, as the paper words it ("a hinge loss
    on p_t, which sets loss to 0 above a certain value of p_t"), rather than on the logit. Its
    gradient vanishes for confidently wrong elements (p_t -> 0), consistent with the paper's
    report that training with it was unstable.
    """

    @configurable
    def __init__(self, *, margin: float = 0.5, compile: bool = False):
        """
        Args:
            margin: p_t above which the loss is 0, in (0, 1].
            compile: run the fused pass through torch.compile.
        """
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
