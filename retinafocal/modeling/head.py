"""RetinaNet heads and their registry."""
from __future__ import annotations

import math
from typing import Callable, List, Tuple, Union

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import CycleBatchNormList, ShapeSpec, get_norm
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.utils.registry import Registry

__all__ = [
    "RETINAFOCAL_HEAD_REGISTRY",
    "build_retinafocal_head",
    "RetinaFocalHead",
    "LevelBatchNorm",
]

RETINAFOCAL_HEAD_REGISTRY = Registry("RETINAFOCAL_HEAD")
RETINAFOCAL_HEAD_REGISTRY.__doc__ = """
Dense heads of :class:`retinafocal.modeling.FocalRetinaNet`, by ``cfg.MODEL.RETINAFOCAL.HEAD_NAME``.
A member is an ``nn.Module`` built as ``Head(cfg, input_shape)``, ``input_shape`` the ShapeSpecs
of ``cfg.MODEL.RETINANET.IN_FEATURES`` (high to low resolution). ``forward(features)`` takes one
(N, C, Hi, Wi) tensor per level and returns ``(logits, deltas)``, one (N, A*K, Hi, Wi) and one
(N, A*4, Hi, Wi) tensor per level (A anchors per location, K classes).
"""


def build_retinafocal_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the head named by ``cfg.MODEL.RETINAFOCAL.HEAD_NAME``."""
    return RETINAFOCAL_HEAD_REGISTRY.get(cfg.MODEL.RETINAFOCAL.HEAD_NAME)(cfg, input_shape)


class LevelBatchNorm(CycleBatchNormList):
    """detectron2's ``CycleBatchNormList`` (call i uses the statistics of BatchNorm
    ``i % length``, then the shared affine) with a ``forward`` that TorchScript compiles:
    detectron2's indexes its list with a variable, which TorchScript rejects."""

    __constants__ = ["_affine"]  # lets TorchScript drop the affine branch when it is off

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H, W)."""
        out = x
        length = 0  # TorchScript has no len() of a ModuleList subclass
        for bn in self:
            if length == self._pos:
                out = bn(x)
            length += 1
        self._pos = (self._pos + 1) % length
        if self._affine:
            return out * self.weight.reshape(-1, 1, 1) + self.bias.reshape(-1, 1, 1)
        return out


@RETINAFOCAL_HEAD_REGISTRY.register()
class RetinaFocalHead(nn.Module):
    """The paper's head (Sec. 4, Fig. 3): a class subnet and a box subnet, each a stack of
    (3x3 conv, [norm], ReLU) then a 3x3 conv to A*K logits or A*4 class-agnostic deltas, shared
    across levels but not with each other. Convs start from N(0, 0.01) weights and zero bias; the
    last class conv's bias is ``-log((1 - pi) / pi)``, so that every anchor starts at foreground
    probability pi (Sec. 4's prior, which keeps the many background anchors from swamping the
    first iterations). Parameter names are detectron2 ``RetinaNetHead``'s: its checkpoints load."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: List[int],
        norm: Union[str, Callable] = "",
        prior_prob: float = 0.01,
    ):
        """``input_shape``: one ShapeSpec per level; ``num_classes``: K; ``num_anchors``: A per
        location (the same on every level); ``conv_dims``: output channels of each conv of a
        subnet; ``norm``: "" (none), "BN", "SyncBN" or any :func:`get_norm` type; ``prior_prob``:
        pi, every anchor's initial foreground probability."""
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        if len({s.channels for s in input_shape}) != 1:
            raise ValueError(f"all head input levels need equal channels, got {input_shape}")
        self._num_levels = len(input_shape)
        self.num_classes = num_classes
        self.num_anchors = num_anchors

        def subnet() -> nn.Sequential:
            layers: List[nn.Module] = []
            in_channels = input_shape[0].channels
            for out_channels in conv_dims:
                layers.append(nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1))
                if norm in ("BN", "SyncBN"):
                    # Statistics per level: the convs are shared, the levels' activations differ.
                    bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm
                    layers.append(
                        LevelBatchNorm(self._num_levels, bn_class, num_features=out_channels)
                    )
                elif norm:
                    layers.append(get_norm(norm, out_channels))
                layers.append(nn.ReLU())
                in_channels = out_channels
            return nn.Sequential(*layers)

        self.cls_subnet = subnet()
        self.bbox_subnet = subnet()
        last_dim = conv_dims[-1] if conv_dims else input_shape[0].channels
        self.cls_score = nn.Conv2d(last_dim, num_anchors * num_classes, 3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(last_dim, num_anchors * 4, 3, stride=1, padding=1)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_score.bias, -math.log((1.0 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                "MODEL.ANCHOR_GENERATOR gives a different number of anchors per level "
                f"({num_anchors}); the shared head needs the same number on every level"
            )
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.RETINANET.NUM_CLASSES,
            "num_anchors": num_anchors[0],
            "conv_dims": [input_shape[0].channels] * cfg.MODEL.RETINANET.NUM_CONVS,
            "norm": cfg.MODEL.RETINANET.NORM,
            "prior_prob": cfg.MODEL.RETINANET.PRIOR_PROB,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """One (N, C, Hi, Wi) feature per level, high to low resolution -> per level, (N, A*K,
        Hi, Wi) logits and (N, A*4, Hi, Wi) deltas, (dx, dy, dw, dh) per anchor."""
        if len(features) != self._num_levels:
            raise ValueError(f"head built for {self._num_levels} levels, got {len(features)}")
        logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        deltas = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return logits, deltas
