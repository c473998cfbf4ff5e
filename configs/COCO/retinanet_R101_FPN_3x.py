"""3x with ResNet-101-FPN (see retinanet_R50_FPN_3x.py)."""
from .retinanet_R50_FPN_3x import (  # noqa: F401
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/coco/retinanet_R101_FPN_3x"
