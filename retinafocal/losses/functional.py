"""Functional forms of the focal-loss family: :func:`sigmoid_focal_loss`, a drop-in for
``torchvision.ops.sigmoid_focal_loss``, and the fused ``label_*`` losses, which take one integer
label per anchor instead of one-hot targets and keep one gradient-sized buffer."""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._fused import REDUCTIONS, LabelLossRunner
from ._terms import FocalStarTerms, FocalTerms, HingeTerms, compute_dtype

__all__ = [
    "sigmoid_focal_loss",
    "label_focal_loss",
    "label_focal_loss_star",
    "label_hinge_loss",
]


class _SigmoidFocalLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: Tensor, targets: Tensor, terms: FocalTerms, reduction: str, need_grad):
        dtype = compute_dtype(inputs.dtype)
        loss, grad = terms(inputs.to(dtype), targets.to(dtype), need_grad)
        if need_grad:
            ctx.grad = grad.to(inputs.dtype)
        ctx.reduction = reduction
        if reduction != "none":
            loss = loss.sum() if reduction == "sum" else loss.mean()
        return loss.to(inputs.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad = ctx.grad
        if ctx.reduction == "mean":
            grad_output = grad_output / max(grad.numel(), 1)
        return grad * grad_output, None, None, None, None


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> Tensor:
    """Focal loss (paper, Eq. 5) with ``torchvision.ops.sigmoid_focal_loss``'s signature, in the
    dtype of ``inputs`` (computed in fp32, or float64), with its first-order gradient from the same
    stable pass: finite for large logits, where torchvision's turns NaN for gamma < 1. Targets
    that require grad get torchvision's own loss.

    Args:
        inputs: logits of any shape and floating dtype.
        targets: same shape; 0 = negative, 1 = positive (soft values as in torchvision).
        alpha: weight of positives in [0, 1]; negatives get 1 - alpha; ``alpha < 0`` disables it.
        gamma: focusing parameter >= 0; 0 gives (alpha-balanced) binary cross-entropy.
        reduction: "none" (same shape as inputs) | "mean" (over all elements) | "sum".
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"sigmoid_focal_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}"
        )
    if inputs.shape != targets.shape:
        raise ValueError(
            f"sigmoid_focal_loss: inputs {tuple(inputs.shape)} and targets "
            f"{tuple(targets.shape)} must have the same shape"
        )
    if targets.requires_grad and torch.is_grad_enabled():
        return torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha, gamma, reduction)
    need_grad = torch.is_grad_enabled() and inputs.requires_grad
    return _SigmoidFocalLoss.apply(inputs, targets, FocalTerms(alpha, gamma), reduction, need_grad)


def label_focal_loss(
    logits: Tensor,
    labels: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
    compile: bool = False,
) -> Tensor:
    """Sigmoid focal loss of logits against one integer label per anchor, fused: equal to
    :func:`sigmoid_focal_loss` on the one-hot targets of the non-ignored anchors, in fp32 (float64
    for float64 logits), its gradient (logits' dtype) formed in the forward pass, which backward
    only scales.

    Args:
        logits: (..., K), typically (N, R, K); any floating dtype.
        labels: (...) integer: class in [0, K), K = background, -1 = ignored.
        alpha, gamma: as in :func:`sigmoid_focal_loss`.
        reduction: "sum" (over non-ignored anchors and classes), "mean" (that sum / (non-ignored
            anchors * K)), or "none" ((..., K), 0 for ignored anchors).
        compile: run the pass through ``torch.compile``, eager if compilation fails (retried
            on each call; a :class:`~retinafocal.losses.FocalLoss` remembers the failure).
    """
    if gamma < 0:
        raise ValueError(f"label_focal_loss: gamma must be >= 0, got {gamma}")
    if alpha > 1:
        raise ValueError(
            f"label_focal_loss: alpha must be in [0, 1] (or < 0 to disable), got {alpha}"
        )
    return LabelLossRunner(
        FocalTerms(alpha, gamma, hard_targets=True),
        compile,
    ).loss(logits, labels, reduction, "label_focal_loss")


def label_focal_loss_star(
    logits: Tensor,
    labels: Tensor,
    gamma: float = 2.0,
    beta: float = 1.0,
    reduction: str = "sum",
    compile: bool = False,
) -> Tensor:
    """FL* (paper, Appendix A; see :class:`~retinafocal.losses.FocalLossStar`), label-based and
    fused. Shapes, labels and reductions as in :func:`label_focal_loss`."""
    if gamma <= 0:
        raise ValueError(f"label_focal_loss_star: gamma must be > 0, got {gamma}")
    return LabelLossRunner(FocalStarTerms(gamma, beta), compile).loss(
        logits, labels, reduction, "label_focal_loss_star"
    )


def label_hinge_loss(
    logits: Tensor,
    labels: Tensor,
    margin: float = 0.5,
    reduction: str = "sum",
    compile: bool = False,
) -> Tensor:
    """Hinge loss on p_t (paper, Sec. 5.1; see :class:`~retinafocal.losses.HingeLoss`),
    label-based and fused. Shapes, labels and reductions as in :func:`label_focal_loss`."""
    if not 0.0 < margin <= 1.0:
        raise ValueError(f"label_hinge_loss: margin must be in (0, 1], got {margin}")
    return LabelLossRunner(HingeTerms(margin), compile).loss(
        logits, labels, reduction, "label_hinge_loss"
    )
