"""3x: 270k iterations, LR / 10 at 210k and 250k, shorter side jittered in 640-800 px."""
from ..common.schedules import lr_multiplier_3x as lr_multiplier  # noqa: F401
from .retinanet_R50_FPN_1x import dataloader, datasets, model, optimizer, train  # noqa: F401

dataloader.train.mapper.augmentations[0].short_edge_length = (640, 672, 704, 736, 768, 800)
train.max_iter = 270000
train.output_dir = "output/coco/retinanet_R50_FPN_3x"
