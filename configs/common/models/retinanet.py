"""LazyConfig model: the paper's RetinaNet, R50-FPN on P3-P7, built as retinafocal's FocalRetinaNet.

The same module as the yacs path (MODEL.META_ARCHITECTURE = "FocalRetinaNet" with the
Base-RetinaNet keys): configs import this file and override fields, e.g.
``model.backbone.bottom_up.stages.depth = 101`` or
``model.classification_loss = L(BalancedCELoss)(alpha=0.75)``.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform

from retinafocal.losses import FocalLoss
from retinafocal.modeling import ChunkedIoUMatcher, FocalRetinaNet, RetinaFocalHead

model = L(FocalRetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        # P6 from C5, as the paper and detectron2's build_retinanet_resnet_fpn_backbone do.
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
    ),
    head=L(RetinaFocalHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        num_anchors=9,
        conv_dims=[256, 256, 256, 256],
        norm="",
        prior_prob=0.01,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    # 3 scales x 3 aspect ratios per level; areas 32^2 .. 512^2 on P3..P7 (paper, Sec. 4).
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(ChunkedIoUMatcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    classification_loss=L(FocalLoss)(alpha=0.25, gamma=2.0),
    num_classes=80,
    # Smooth L1 with beta 0.11 as Detectron's RetinaNet (RETINANET.BBOX_REG_BETA in
    # facebookresearch/Detectron, detectron/core/config.py); Base-RetinaNet.yaml says why.
    smooth_l1_beta=0.11,
    box_reg_loss_type="smooth_l1",
    loss_normalizer="num_pos",
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.5,
    max_detections_per_image=100,
    # detectron2's ImageNet BGR mean; std 1 for MSRA-style weights (as detectron2's model zoo).
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    diagnostics_period=20,
    input_format="BGR",
    # Channels-last weights and images (MODEL.RETINAFOCAL.MEMORY_FORMAT in Base-RetinaNet.yaml).
    memory_format="NHWC",
    # Backbone and head in float32 (MODEL.RETINAFOCAL.PRECISION); "bf16" on CPUs with native
    # bf16 and on GPUs, "fp16" on GPUs (training it needs train.amp.enabled=True).
    precision="fp32",
    # Frozen BatchNorm folded into the convs before it (MODEL.RETINAFOCAL.FOLD_FROZEN_BN in
    # Base-RetinaNet.yaml): same parameters, results equal up to float rounding, faster.
    fold_frozen_bn=True,
)
