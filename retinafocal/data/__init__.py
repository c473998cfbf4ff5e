"""Data: the embedded shapes dataset, dataset registration and checks, a robust mapper.
Importing this registers ``shapes_train`` and ``shapes_val`` (generated on first use) only."""
from .checks import check_coco_json, fix_coco_box
from .datasets import (
    NumClassesError,
    check_datasets,
    checked_dataset_dicts,
    register_coco_dataset,
    register_coco_json_datasets,
    register_shapes,
)
from .loading import checked_report, load_coco_json_checked
from .mapper import RobustDatasetMapper, UnreadableImageError
from .report import DatasetValidationError, ValidationReport
from .shapes import SHAPE_CLASSES, ShapesSpec

register_shapes()

__all__ = [
    "DatasetValidationError",
    "NumClassesError",
    "RobustDatasetMapper",
    "SHAPE_CLASSES",
    "ShapesSpec",
    "UnreadableImageError",
    "ValidationReport",
    "check_coco_json",
    "check_datasets",
    "checked_dataset_dicts",
    "checked_report",
    "fix_coco_box",
    "load_coco_json_checked",
    "register_coco_dataset",
    "register_coco_json_datasets",
    "register_shapes",
]
