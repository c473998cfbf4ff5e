"""From a model's detections to a dataset's ids and names: COCO results entries, the contiguous
class index -> category id map, image ids, and the class names to draw.

Category ids: when the dataset has COCO metadata (``thing_dataset_id_to_contiguous_id``, or a
``json_file`` whose categories give it, as detectron2's COCO loader does), the model's
contiguous class index is mapped back to the dataset's category id; otherwise the contiguous
index is kept.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import retinafocal  # noqa: F401  (first: compat for old detectron2)
from config_loading import ToolError
from detectron2.structures import Instances

__all__ = [
    "coco_json_of",
    "drawing_metadata",
    "category_id_map",
    "image_id_map",
    "instances_to_coco",
]


def coco_json_of(metadata) -> Optional[dict]:
    """The parsed COCO json named by ``metadata.json_file``, None without a readable one."""
    json_file = getattr(metadata, "json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    with open(json_file, encoding="utf-8") as f:
        return json.load(f)


def drawing_metadata(metadata, coco_json: Optional[dict] = None):
    """Metadata for the ``Visualizer``: the dataset's own when it has class names, else a new
    one with the names of ``coco_json``'s categories (in the order of their ids, as detectron2's
    COCO loader orders classes), else the dataset's (classes are then drawn as numbers)."""
    from detectron2.data.catalog import Metadata

    if getattr(metadata, "thing_classes", None) or not coco_json:
        return metadata
    categories = sorted(coco_json.get("categories", []), key=lambda c: int(c["id"]))
    if not categories:
        return metadata
    return Metadata(name=metadata.name, thing_classes=[str(c["name"]) for c in categories])


def category_id_map(metadata, coco_json: Optional[dict] = None) -> Optional[Dict[int, int]]:
    """Contiguous class index -> dataset category id, or None when the metadata has no ids.

    Uses ``metadata.thing_dataset_id_to_contiguous_id`` when set (detectron2's COCO loader sets
    it once the dataset is loaded), else the categories of ``coco_json`` in increasing id order,
    which is the order detectron2's COCO loader assigns contiguous indices in.
    """
    forward = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    if forward:
        return {int(c): int(d) for d, c in forward.items()}
    if coco_json and coco_json.get("categories"):
        ids = sorted(int(c["id"]) for c in coco_json["categories"])
        return {i: d for i, d in enumerate(ids)}
    return None


def image_id_map(coco_json: Optional[dict]) -> Dict[str, int]:
    """File base name -> image id of the images listed in ``coco_json`` (empty without one)."""
    if not coco_json:
        return {}
    return {os.path.basename(im["file_name"]): int(im["id"]) for im in coco_json.get("images", [])}


def instances_to_coco(
    instances: Instances,
    image_id: int,
    *,
    category_ids: Optional[Dict[int, int]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> List[Dict[str, Any]]:
    """COCO results entries of one image.

    Args:
        instances: detections with ``pred_boxes`` (D, 4) XYXY, ``scores`` (D,), ``pred_classes``
            (D,) contiguous indices.
        image_id: the image's id.
        category_ids: contiguous index -> category id; None keeps the contiguous index.
        extra: keys added to every entry (e.g. "file_name").

    Returns:
        D dicts with "image_id", "category_id", "bbox" (x, y, w, h floats), "score".
    """
    boxes = instances.pred_boxes.tensor.detach().cpu().double().clone()
    boxes[:, 2:] -= boxes[:, :2]
    entries = []
    for box, score, cls in zip(
        boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
    ):
        if category_ids is not None:
            if cls not in category_ids:
                raise ToolError(
                    f"the model predicted class index {cls}, which the dataset metadata does not "
                    f"map to a category id (it maps {sorted(category_ids)})"
                )
            cls = category_ids[cls]
        entry = {"image_id": image_id, "category_id": int(cls), "bbox": box, "score": score}
        entry.update(extra or {})
        entries.append(entry)
    return entries
