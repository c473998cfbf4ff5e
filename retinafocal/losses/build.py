"""The classification-loss registry and its builder."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["CLASSIFICATION_LOSS_REGISTRY", "build_classification_loss"]

CLASSIFICATION_LOSS_REGISTRY = Registry("RETINAFOCAL_CLASSIFICATION_LOSS")
CLASSIFICATION_LOSS_REGISTRY.__doc__ = """
Classification losses of the dense detector, by ``cfg.MODEL.RETINAFOCAL.LOSS.NAME``.
A member is a ``@configurable`` ``nn.Module`` with a class attribute ``self_normalizing: bool``,
``forward(pred_logits, gt_labels, anchor_boxes=None)`` and
``elementwise_losses(pred_logits, gt_labels, *, anchor_boxes=None)``, taking ``pred_logits``
(N, R, K) float (any precision; R anchors of all levels), ``gt_labels`` (N, R) int64 (class in
[0, K), K = background, -1 = ignored) and ``anchor_boxes`` (R, 4) XYXY (for losses that need
geometry, e.g. OHEM's NMS). ``forward`` returns an fp32 scalar: the sum over non-ignored anchors,
which the detector divides by its normaliser, or when ``self_normalizing`` the final value.
``elementwise_losses`` returns, without gradient, each (anchor, class) element's (N, R, K) fp32
share of that value (0 for ignored anchors), for the imbalance diagnostics.

TorchScript compiles every submodule's ``forward``, used or not (``scripting_with_instances``):
it needs a signature TorchScript parses (no keyword-only arguments with defaults) and must be
scriptable or ``@torch.jit.unused``.
"""


def build_classification_loss(cfg: CfgNode) -> nn.Module:
    """Build ``cfg.MODEL.RETINAFOCAL.LOSS.NAME`` from the registry."""
    name = cfg.MODEL.RETINAFOCAL.LOSS.NAME
    if name not in CLASSIFICATION_LOSS_REGISTRY:
        known = sorted(key for key, _ in CLASSIFICATION_LOSS_REGISTRY)
        raise KeyError(
            f"cfg.MODEL.RETINAFOCAL.LOSS.NAME={name!r} is not a registered classification loss; "
            f"choose one of {known}"
        )
    return CLASSIFICATION_LOSS_REGISTRY.get(name)(cfg)
