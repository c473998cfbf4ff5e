"""torchvision's RetinaNet set up as the benchmark and the analysis compare against it."""
from __future__ import annotations

from torch import nn

__all__ = ["torchvision_retinanet", "replace_batchnorm"]


def replace_batchnorm(module: nn.Module, frozen_cls: type) -> None:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by ``frozen_cls(num_features, eps)``
    (identity statistics), in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, frozen_cls(child.num_features, eps=child.eps))
        else:
            replace_batchnorm(child, frozen_cls)


def torchvision_retinanet(num_classes: int = 91, **kwargs) -> nn.Module:
    """``torchvision.models.detection.retinanet_resnet50_fpn``, randomly initialised, built as
    it is with ImageNet or COCO weights: its ResNet's BatchNorm layers frozen and its stem and
    ``layer1`` not trained (trainable_backbone_layers=3).

    torchvision's builder only does that when it is given weights; without, it trains BatchNorm
    and every stage, which is neither the paper's setting nor how its COCO model was trained.

    Args:
        num_classes: 91 for the layout of torchvision's COCO weights (80 classes + unused ids).
        kwargs: passed to ``RetinaNet`` (``min_size``, ``score_thresh``, ...).
    """
    from torchvision.models.detection import retinanet_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, **kwargs
    )
    body = model.backbone.body
    replace_batchnorm(body, FrozenBatchNorm2d)
    for name, param in body.named_parameters():
        if not name.startswith(("layer2", "layer3", "layer4")):
            param.requires_grad_(False)
    return model
