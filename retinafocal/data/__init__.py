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

# As detectron2.data and detectron2.engine: the public names are those imported above.
__all__ = [k for k in globals().keys() if not k.startswith("_")]
