"""The embedded shapes dataset (retinafocal/data/shapes.py), generated under
``$DETECTRON2_DATASETS/shapes`` on first use: 128 px images, horizontal flip, 16 images per
batch, COCO AP on ``shapes_val``. CPU-sized: one loader worker.

The loaders, mapper and evaluator are those of ``coco.py``; only the data and sizes differ.
"""
from .coco import dataloader, datasets  # noqa: F401

dataloader.train.dataset.names = "shapes_train"
# As the embedded yaml (detectron2's default); every generated image has objects, so none go.
dataloader.train.dataset.filter_empty = True
dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.train.mapper.augmentations[0].max_size = 128
dataloader.train.num_workers = 1

dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations[0].short_edge_length = 128
dataloader.test.mapper.augmentations[0].max_size = 128
dataloader.test.num_workers = 1
