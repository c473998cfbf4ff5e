"""Elementwise loss "terms": ``terms(x, t, need_grad) -> (loss, d loss / d x or None)``.

x (logits) and t (binary targets, 0 or 1; soft ones in [0, 1] for :class:`FocalTerms`) are of the
:func:`compute_dtype` and broadcast. Forming loss and analytic gradient together shares the
sigmoid, log and modulating factor, and lets the fused losses skip autograd's temporaries."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["Terms", "FocalTerms", "FocalStarTerms", "HingeTerms", "compute_dtype"]

#: The type of a terms object (see the module docstring).
Terms = Callable[[Tensor, Tensor, bool], Tuple[Tensor, Optional[Tensor]]]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the terms are evaluated in for logits of ``dtype``: fp16/bf16 accumulate in
    fp32, float64 stays float64 (gradcheck)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sigmoid_parts(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(sigmoid(x), sigmoid(-x), log1p(exp(-|x|))) from one exp, with no ``1 - sigmoid(x)``
    cancellation: logits of +-100 keep their tiny probabilities and every term stays finite."""
    e = torch.exp(-x.abs())
    u = 1.0 + e
    inv = 1.0 / u
    small = e * inv
    nonneg = x >= 0
    p = torch.where(nonneg, inv, small)
    p_neg = torch.where(nonneg, small, inv)
    # log1p(e) to within a few ulp: torch.log1p is not vectorised on CPU, and
    # log(u) * e / (u - 1) cancels the rounding of u = 1 + e (Goldberg's identity).
    return p, p_neg, torch.where(u == 1.0, e, torch.log(u) * (e / (u - 1.0)))


class FocalTerms:
    """Sigmoid focal loss ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` (paper, Eq. 5), p = sigmoid(x),
    soft targets as in torchvision: ``ce = BCE(x, t)``, ``q = 1 - p_t = t (1 - p) + (1 - t) p``,
    ``alpha_t = alpha t + (1 - alpha)(1 - t)`` (none when alpha < 0).
    ``d FL / d x = alpha_t q^gamma [(p - t) + gamma ce (1 - 2t) p (1 - p) / q]``, where
    p (1 - p) / q is p or 1 - p for ``hard_targets`` (saving a division). gamma = 0 gives
    exactly the (alpha-balanced) CE."""

    def __init__(self, alpha: float, gamma: float, hard_targets: bool = False):
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.hard_targets = bool(hard_targets)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        p, p_neg, log1p_e = _sigmoid_parts(x)
        not_t = 1.0 - t
        # BCE(x, t) = (1 - t) x + softplus(-x), written so neither hard target cancels.
        ce = not_t * x + torch.clamp_min(-x, 0.0) + log1p_e
        a_t = self.alpha * t + (1.0 - self.alpha) * not_t if self.alpha >= 0 else None
        # p - t, exact for hard targets (no 1 - p rounding at large logits).
        d_ce = not_t * p - t * p_neg
        if self.gamma == 0.0:
            loss, grad = ce, d_ce
        else:
            q = t * p_neg + not_t * p
            mod = q * q if self.gamma == 2.0 else torch.pow(q, self.gamma)
            loss = ce * mod
            if need_grad:
                if self.hard_targets:
                    r = t * p + not_t * p_neg
                else:
                    r = torch.where(q > 0, p * p_neg / q, 0.0)
                grad = mod * (d_ce + (self.gamma * ce) * (not_t - t) * r)
        if a_t is not None:
            loss = a_t * loss
            if need_grad:
                grad = a_t * grad
        return loss, (grad if need_grad else None)


class FocalStarTerms:
    """FL* (paper, Appendix A): ``FL* = -log(sigmoid(gamma x_t + beta)) / gamma`` with x_t = s x,
    s = +1 if t = 1 else -1; ``d FL* / d x = -s sigmoid(-(gamma x_t + beta))``."""

    def __init__(self, gamma: float, beta: float):
        self.gamma = float(gamma)
        self.beta = float(beta)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        s = 2.0 * t - 1.0
        z = (self.gamma * s) * x + self.beta
        _, p_neg_z, log1p_e = _sigmoid_parts(z)
        loss = (torch.clamp_min(-z, 0.0) + log1p_e) * (1.0 / self.gamma)
        return loss, (-s * p_neg_z if need_grad else None)


class HingeTerms:
    """Hinge on p_t (paper, Sec. 5.1): ``L = max(0, margin - p_t)``;
    ``d L / d x = -s p_t (1 - p_t)`` below the margin (s = +1 if t = 1 else -1), else 0."""

    def __init__(self, margin: float):
        self.margin = float(margin)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        s = 2.0 * t - 1.0
        p_t, p_t_neg, _ = _sigmoid_parts(s * x)
        below = p_t < self.margin
        loss = torch.where(below, self.margin - p_t, 0.0)
        return loss, (torch.where(below, -s * (p_t * p_t_neg), 0.0) if need_grad else None)
