"""Checked loading of a COCO json: detectron2's ``load_coco_json`` behind the dataset check,
made once per process for a json (path, size, mtime) and image folder (path, mtime)."""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from detectron2.data.datasets import load_coco_json
from detectron2.utils.logger import log_first_n

from .checks import check_coco_json, fix_coco_box, inspect_image, segmentation_is_valid
from .report import DatasetValidationError, ValidationReport

__all__ = ["checked_report", "load_coco_json_checked"]

logger = logging.getLogger(__name__)

_REPORTS: Dict[Tuple, ValidationReport] = {}
_BOX_FIXES = ("box_clipped", "box_empty", "box_invalid", "box_outside")


def _stamp(path: str) -> Tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (os.path.abspath(path), None)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def checked_report(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    on_unreadable: Optional[str] = None,
    check_images: bool = True,
    purpose: str = "training",
) -> ValidationReport:
    """Check a COCO json (arguments as for ``load_coco_json``) and, with ``check_images``, its
    image files, logging the report; raise :class:`DatasetValidationError` for what ``purpose``
    ("training", "evaluation" or "loading": by the registered loader) cannot use: fatal problems,
    annotations that pycocotools cannot evaluate (evaluation), and unreadable images as
    ``on_unreadable`` (``DATALOADER.ON_UNREADABLE_IMAGE``) says: "error" refuses any, "skip" (the
    caller leaves them out) refuses when no image with a box is left, None lets them through."""
    if on_unreadable not in (None, "error", "skip"):
        raise ValueError(f"on_unreadable must be 'error', 'skip' or None, got {on_unreadable!r}")
    if purpose not in ("training", "evaluation", "loading"):
        raise ValueError(f"purpose must be 'training', 'evaluation' or 'loading', got {purpose!r}")
    role = "Test dataset" if purpose == "evaluation" else "Dataset"
    name = f"{role} '{dataset_name}'" if dataset_name else role
    key = (_stamp(json_file), _stamp(image_root), check_images)
    report = _REPORTS.get(key)
    if report is None:
        inspect = inspect_image if check_images else None
        report = _REPORTS[key] = check_coco_json(json_file, image_root, inspect=inspect)
        quiet = not report.problems.keys() - {"background_image"}
        logger.log(logging.INFO if quiet else logging.WARNING, f"{name}:\n{report.format()}")
    # A test set without annotations (COCO test-dev's image info): COCOEvaluator writes the
    # predictions (for an evaluation server) and computes no AP, so it needs no box.
    predict_only = purpose != "training" and report.num_annotations == 0
    if any(not (predict_only and k == "no_usable_box") for k in report.kinds("fatal")):
        raise DatasetValidationError(f"{name} cannot be loaded:\n{report.format()}")
    unreadable_by_cocoeval = [k for k in ("box_invalid", "eval_field_missing") if report.count(k)]
    if purpose == "evaluation" and unreadable_by_cocoeval:  # it would raise after training
        raise DatasetValidationError(
            f"{name} cannot be evaluated: COCO evaluation (pycocotools) reads the bbox, area and "
            f"iscrowd of each annotation in the json, unfixed, and cannot use the "
            f"{' and '.join(unreadable_by_cocoeval)} ones. Fix the json.\n{report.format()}"
        )
    # detectron2's test loader fails on an empty list, and only after the training.
    if predict_only and report.num_images <= len(report.unreadable_files):
        raise DatasetValidationError(
            f"{name} has no readable image to predict on: {report.num_images} listed, "
            f"{len(report.unreadable_files)} unreadable.\n{report.format()}"
        )
    if on_unreadable == "error" and report.num_unreadable_images:
        if purpose == "evaluation":
            rest = "evaluate on the other images (AP then covers those only)"
        else:
            rest = "train without them"
        raise DatasetValidationError(
            f"{name}: {report.unreadable_summary()}. DATALOADER.ON_UNREADABLE_IMAGE is 'error', "
            f"so {purpose} stops before it starts. Fix or remove them, or set "
            f"DATALOADER.ON_UNREADABLE_IMAGE to 'skip' to {rest}.\n{report.format()}"
        )
    # "skip" leaves them out; what is left must have a box, but for a test set that needs none.
    if on_unreadable == "skip" and not predict_only and not report.usable("skip"):
        raise DatasetValidationError(
            f"{name}: {report.unreadable_summary()}. DATALOADER.ON_UNREADABLE_IMAGE is 'skip', "
            f"which leaves them out, but then no image with a box is left for {purpose}. Fix or "
            f"replace the image files.\n{report.format()}"
        )
    return copy.deepcopy(report)  # the callers' to change; the memo keeps its own


def _rejected_by_detectron2(annotation: dict) -> bool:
    """``load_coco_json`` (v0.6 to main) stops the whole load at a ``bbox`` empty or no sequence."""
    bbox = annotation.get("bbox", ())
    return "bbox" in annotation and (not hasattr(bbox, "__len__") or len(bbox) == 0)


def _load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str]) -> List[dict]:
    """``load_coco_json`` on a copy of the json (it takes a path) without what it mishandles: boxes
    that stop the whole load, segmentations that drop their box, orphans (a warning per load)."""
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    annotations = data.get("annotations", [])
    image_ids = {image["id"] for image in data["images"]}
    kept = [a for a in annotations if a["image_id"] in image_ids and not _rejected_by_detectron2(a)]
    invalid = [a for a in kept if not segmentation_is_valid(a.get("segmentation"))]
    if len(kept) == len(annotations) and not invalid:
        return load_coco_json(json_file, image_root, dataset_name)
    for annotation in invalid:
        del annotation["segmentation"]
    data["annotations"] = kept
    with tempfile.TemporaryDirectory(prefix="retinafocal_") as tmp_dir:
        # The original's file name, which load_coco_json looks at ("minival").
        tmp = os.path.join(tmp_dir, os.path.basename(json_file))
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        return load_coco_json(tmp, image_root, dataset_name)


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: Optional[str] = None, **checks: Any
) -> List[dict]:
    """detectron2's dataset dicts (``bbox_mode`` XYWH_ABS) of a COCO json that
    :func:`checked_report` (given ``checks``) passed, with the box, orphan and segmentation fixes
    it counted (logged once per process); images without annotations or unreadable are kept."""
    checks.setdefault("purpose", "loading")
    report = checked_report(json_file, image_root, dataset_name, **checks)
    if any(report.count(k) for k in ("box_invalid", "segmentation_invalid", "orphan_annotation")):
        dataset_dicts = _load_coco_json(json_file, image_root, dataset_name)
    else:  # the usual case: no need to read the json twice
        dataset_dicts = load_coco_json(json_file, image_root, dataset_name)
    for record in dataset_dicts:
        annos = record.get("annotations", [])
        boxes = [fix_coco_box(a.get("bbox"), record["width"], record["height"])[1] for a in annos]
        record["annotations"] = [{**a, "bbox": b} for a, b in zip(annos, boxes) if b is not None]
    # The check counted every box these dicts hold, and the malformed ones that never reach them.
    counted = ", ".join(f"{report.count(k)} {k[4:]}" for k in _BOX_FIXES if report.count(k))
    fixes = [f"{counted} box(es): clipped ones are kept, the others dropped"] if counted else []
    n = report.count("segmentation_invalid")
    if n:
        fixes.append(f"{n} invalid segmentation(s) dropped, their boxes kept")
    if fixes:  # once: every loader, evaluation and figure loads the dataset again
        name = f"Dataset '{dataset_name}'" if dataset_name else "Dataset"
        log_first_n(logging.WARNING, f"{name}: " + "; ".join(fixes) + ".", key="message")
    return dataset_dicts
