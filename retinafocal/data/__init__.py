"""Data: the embedded shapes dataset, dataset registration, a robust mapper, dataset checks.

Importing this package registers the embedded dataset's splits (``shapes_train``,
``shapes_val``; generated under ``$DETECTRON2_DATASETS/shapes`` on first use) and makes
detectron2's COCO 2017 splits load through the checked loader.
"""
from .datasets import (
    load_coco_dataset,
    register_coco_2017,
    register_coco_dataset,
    register_coco_json_datasets,
    register_shapes,
)
from .mapper import RobustDatasetMapper
from .shapes import SHAPE_CLASSES, ShapesSpec, ensure_shapes_split, generate_shapes_split

register_shapes()
register_coco_2017()

__all__ = [
    "RobustDatasetMapper",
    "SHAPE_CLASSES",
    "ShapesSpec",
    "ensure_shapes_split",
    "generate_shapes_split",
    "load_coco_dataset",
    "register_coco_2017",
    "register_coco_dataset",
    "register_coco_json_datasets",
    "register_shapes",
]
