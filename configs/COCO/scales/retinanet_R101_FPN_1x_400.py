"""Paper Table 1e: ResNet-101-FPN, 1x, trained and tested at shorter side 400 px (longer side at
most 666 px, the 800/1333 ratio of the 800 px recipe)."""
from ..retinanet_R101_FPN_1x import (  # noqa: F401
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    train,
)

dataloader.train.mapper.augmentations[0].short_edge_length = (400,)
dataloader.train.mapper.augmentations[0].max_size = 666
dataloader.test.mapper.augmentations[0].short_edge_length = 400
dataloader.test.mapper.augmentations[0].max_size = 666
train.output_dir = "output/coco/retinanet_R101_FPN_1x_400"
