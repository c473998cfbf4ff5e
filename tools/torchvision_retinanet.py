"""torchvision's RetinaNet as the benchmark and the analysis compare against it."""
from __future__ import annotations

from torch import nn

__all__ = ["TRAINABLE_STAGES", "torchvision_retinanet"]

#: ResNet stages torchvision trains when it builds RetinaNet from pretrained weights
#: (``trainable_backbone_layers=3``); the stem and ``layer1`` stay frozen.
TRAINABLE_STAGES = ("layer2", "layer3", "layer4")


def torchvision_retinanet(num_classes: int = 91, **kwargs) -> nn.Module:
    """torchvision's ``retinanet_resnet50_fpn``, randomly initialised, as that builder makes it
    with ImageNet or COCO weights: ``FrozenBatchNorm2d`` in the ResNet and only
    :data:`TRAINABLE_STAGES` trained. Without weights the builder trains plain BatchNorm and
    every stage, which is neither the paper's setting nor how its COCO model was trained.

    It is put together from torchvision's public parts in the builder's order (ResNet-50, then
    the FPN with P6/P7, then the heads), so a given seed draws the same weights as
    ``retinanet_resnet50_fpn(weights=None)`` does, and nothing is replaced afterwards.

    Args:
        num_classes: 91 for the layout of torchvision's COCO weights (80 classes + unused ids).
        kwargs: passed to ``RetinaNet`` (``min_size``, ``score_thresh``, ...).
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    for name, param in body.named_parameters():
        if not name.startswith(TRAINABLE_STAGES):
            param.requires_grad_(False)
    # C3-C5 (layer2-4) into the FPN; P6 from P5, as torchvision's RetinaNet does (not P2: too
    # many anchors, the paper says).
    backbone = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[512, 1024, 2048],
        out_channels=256,
        extra_blocks=LastLevelP6P7(256, 256),
    )
    return RetinaNet(backbone, num_classes, **kwargs)
