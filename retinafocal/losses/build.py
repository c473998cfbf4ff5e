"""The classification-loss registry and its builder."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

__all__ = ["CLASSIFICATION_LOSS_REGISTRY", "build_classification_loss"]

CLASSIFICATION_LOSS_REGISTRY = Registry("RETINAFOCAL_CLASSIFICATION_LOSS")
CLASSIFICATION_LOSS_REGISTRY.__doc__ = """
Registry for the dense detector's classification losses, selected by
``cfg.MODEL.RETINAFOCAL.LOSS.NAME``.

A member is an ``nn.Module`` class, ``@configurable`` with a keyword-only ``__init__`` and a
``from_config(cls, cfg)`` that reads its parameters. It has a class attribute
``self_normalizing: bool`` and two methods:

    forward(pred_logits, gt_labels, anchor_boxes=None) -> Tensor
    elementwise_losses(pred_logits, gt_labels, *, anchor_boxes=None) -> Tensor

taking
    pred_logits:  (N, R, K) float (fp32/fp16/bf16), the logits of R anchors (all levels
                  concatenated) for N images and K classes;
    gt_labels:    (N, R) int64: class in [0, K) = positive, K = background, -1 = ignored;
    anchor_boxes: (R, 4) XYXY anchor boxes, the same for every image (only losses that look at
                  geometry, e.g. OHEM's NMS, need it).

``forward`` returns an fp32 scalar. When ``self_normalizing`` is False it is the loss summed over
the non-ignored anchors, which the meta-architecture divides by its normaliser (the number of
positive anchors); when True it is already normalised and used as is.

TorchScript compiles the ``forward`` of every submodule of a detector it scripts, used or not
(``detectron2.export.scripting_with_instances``), so ``forward`` must have a signature TorchScript
parses (no keyword-only arguments with defaults) and either be scriptable or be decorated with
``@torch.jit.unused`` (the built-in losses are: they only train).

``elementwise_losses`` returns, without gradient, an (N, R, K) fp32 tensor: the part of
``forward``'s value that each (anchor, class) element contributes, 0 for ignored anchors, so that
its sum equals ``forward``'s value (up to float summation order). The meta-architecture's
imbalance diagnostics read it, so they always describe the loss that trains, with that loss's
own parameters.
"""


def build_classification_loss(cfg: CfgNode) -> nn.Module:
    """Build ``cfg.MODEL.RETINAFOCAL.LOSS.NAME`` from the registry, configured by ``cfg``."""
    name = cfg.MODEL.RETINAFOCAL.LOSS.NAME
    if name not in CLASSIFICATION_LOSS_REGISTRY:
        known = sorted(key for key, _ in CLASSIFICATION_LOSS_REGISTRY)
        raise KeyError(
            f"cfg.MODEL.RETINAFOCAL.LOSS.NAME={name!r} is not a registered classification loss; "
            f"choose one of {known}"
        )
    return CLASSIFICATION_LOSS_REGISTRY.get(name)(cfg)
