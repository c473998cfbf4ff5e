"""The LazyConfig form of retinanet_R18_FPN_shapes.yaml (the ``make train`` recipe): RetinaNet
with a ResNet-18-FPN trained from scratch on the embedded shapes dataset on 2 CPU cores.
See the yaml for why each value."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..common.data.constants import constants
from ..common.data.shapes import dataloader, datasets  # noqa: F401
from ..common.models.retinanet import model
from ..common.optim import SGD as optimizer
from ..common.schedules import cosine_schedule
from ..common.train import train

bottom_up = model.backbone.bottom_up
bottom_up.stem.norm = "BN"
bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="BN")
bottom_up.freeze_at = 0
bottom_up.out_features = ["res3", "res4", "res5"]
model.backbone.in_features = ["res3", "res4", "res5"]
model.backbone.out_channels = 64
# As build_resnet_fpn_backbone: P6 is a max-pool of P5 (no parameters) that the head ignores.
model.backbone.top_block = L(LastLevelMaxPool)()

model.head_in_features = ["p3", "p4", "p5"]
model.head.input_shape = [ShapeSpec(channels=64)] * 3
model.head.conv_dims = [64, 64]
model.head.norm = "BN"
model.anchor_generator.sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [12, 24, 48]]
model.anchor_generator.strides = [8, 16, 32]
model.num_classes = 5
# 0.1, not the COCO recipes' 0.11: the yaml's seeded `make train` AP was measured with it.
model.smooth_l1_beta = 0.1
model.pixel_std = constants["unit_bgr256_std"]
# The yaml keeps the key's default layout, NCHW, as the recipe was measured with.
model.memory_format = "NCHW"
# Its backbone trains BatchNorm, so there is no frozen BatchNorm to fold; off, as in the yaml.
model.fold_frozen_bn = False

optimizer.lr = 0.02
train.max_iter = 1000
lr_multiplier = cosine_schedule(train.max_iter, warmup_iters=100)
train.checkpointer.period = 250
train.device = "cpu"
train.seed = 0
train.output_dir = "output/shapes_R18_FPN_lazy"
