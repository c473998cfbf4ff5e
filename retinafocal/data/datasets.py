"""Datasets by name: registration of retinafocal's own (the shapes splits, ``DATASETS.COCO_JSON``)
and the checks training runs on any registered COCO json, its number of classes included."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

from .loading import checked_report, load_coco_json_checked
from .report import DatasetValidationError, ValidationReport
from .shapes import DEFAULT_SPLITS, SHAPE_CLASSES, ShapesSpec, ensure_shapes_split, shapes_json_path

__all__ = [
    "NumClassesError",
    "check_num_classes",
    "num_classes_from_datasets",
    "datasets_root",
    "register_coco_dataset",
    "register_coco_json_datasets",
    "register_shapes",
    "ensure_dataset_files",
    "check_datasets",
    "checked_dataset_dicts",
]

logger = logging.getLogger(__name__)

# Shapes datasets, generated on first use: name -> (root, split, count, spec).
_GENERATED: Dict[str, Tuple[str, str, int, ShapesSpec]] = {}
_REGISTERED_HERE: set = set()  # loaded by load_coco_json_checked, which fixes boxes


def datasets_root() -> str:
    """The directory that holds all datasets: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def _registered_files(name: str) -> tuple:
    meta = MetadataCatalog.get(name)
    return (getattr(meta, "json_file", None), getattr(meta, "image_root", None))


def _load(name: str, json_file: str, image_root: str) -> List[Dict[str, Any]]:
    ensure_dataset_files(name)
    return load_coco_json_checked(json_file, image_root, name)


def register_coco_dataset(
    name: str, json_file: str, image_root: str, metadata: Dict[str, Any] | None = None
) -> bool:
    """Register a COCO-format detection dataset (COCO AP, :func:`~.loading.load_coco_json_checked`)
    under ``name``; the same name again does nothing (returns False), with other files it raises."""
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        if _registered_files(name) == (json_file, image_root):
            return False
        raise ValueError(
            f"Cannot register dataset {name!r} with json_file={json_file!r}, "
            f"image_root={image_root!r}: that name is already registered with json_file, "
            f"image_root = {_registered_files(name)}. Pick another name."
        )
    DatasetCatalog.register(name, lambda: _load(name, json_file, image_root))
    _REGISTERED_HERE.add(name)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )
    return True


def register_coco_json_datasets(entries: Sequence[Sequence[str]]) -> List[str]:
    """Register ``DATASETS.COCO_JSON``: ``[[name, json_file, image_root]]``; returns the names."""
    names = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str) or len(entry) != 3:
            raise ValueError(
                f"DATASETS.COCO_JSON[{i}] must be [name, json_file, image_root], got {entry!r}"
            )
        name, json_file, image_root = (str(x) for x in entry)
        for missing, what in [
            (not os.path.isfile(json_file), f"json file {json_file!r} does not exist"),
            (not os.path.isdir(image_root), f"image root {image_root!r} is not a directory"),
        ]:
            if missing:
                raise FileNotFoundError(f"DATASETS.COCO_JSON[{i}] ({name!r}): {what}")
        register_coco_dataset(name, json_file, image_root)
        names.append(name)
    return names


def register_shapes(
    root: str | None = None,
    prefix: str = "shapes",
    splits: Dict[str, Tuple[int, ShapesSpec]] | None = None,
) -> List[str]:
    """Register the shapes ``splits`` (name -> (images, spec); default :data:`DEFAULT_SPLITS`) as
    ``{prefix}_{split}``, generated on first load in ``root`` (default: datasets_root()/shapes)."""
    root = os.path.join(datasets_root(), "shapes") if root is None else root
    names = []
    for split, (num_images, spec) in (DEFAULT_SPLITS if splits is None else splits).items():
        name = f"{prefix}_{split}"
        json_file, image_root = shapes_json_path(root, split), os.path.join(root, split)
        classes = {"thing_classes": list(SHAPE_CLASSES)}
        if register_coco_dataset(name, json_file, image_root, classes):
            _GENERATED[name] = (root, split, num_images, spec)
        names.append(name)
    return names


def ensure_dataset_files(name: str) -> None:
    """Generate a shapes dataset's files if missing or stale (evaluators read the json first)."""
    if name in _GENERATED:
        ensure_shapes_split(*_GENERATED[name])


def check_datasets(
    names: Union[str, Sequence[str]],
    *,
    on_unreadable: Optional[str] = None,
    purpose: str = "training",
) -> Dict[str, ValidationReport]:
    """:func:`~.loading.checked_report` of each named dataset registered as a COCO json (metadata
    ``json_file``, ``image_root``, ``evaluator_type`` "coco"), by whoever; returns name -> report.
    Also raises :class:`DatasetValidationError` for malformed boxes another loader would read."""
    reports = {}
    for name in [names] if isinstance(names, str) else names:
        if name not in DatasetCatalog.list():
            continue  # detectron2 names the unknown dataset when it is loaded
        ensure_dataset_files(name)
        json_file, image_root = _registered_files(name)
        coco = getattr(MetadataCatalog.get(name), "evaluator_type", None) == "coco"
        if json_file is None or image_root is None or not coco:
            logger.info(f"Dataset '{name}' is not registered as a COCO json: not checked.")
            continue
        reports[name] = checked_report(
            json_file, image_root, name, on_unreadable=on_unreadable, purpose=purpose
        )
        if name not in _REGISTERED_HERE:
            _refuse_what_detectron2_mishandles(name, reports[name])
    return reports


def _refuse_what_detectron2_mishandles(name: str, report: ValidationReport) -> None:
    """For a dataset that detectron2's loader reads: raise on malformed boxes (only ours drops
    them), warn about the segmentations whose boxes it drops."""
    if report.count("box_invalid"):
        raise DatasetValidationError(
            f"Dataset '{name}' has {report.count('box_invalid')} malformed bbox(es) "
            f"(annotation ids {report.first_ids('box_invalid')}...) and loads through the "
            "loader it was registered with, which cannot drop them. Fix the json, or "
            "register it with retinafocal (DATASETS.COCO_JSON, register_coco_dataset)."
        )
    if report.count("segmentation_invalid"):
        logger.warning(
            f"Dataset '{name}': detectron2's loader, which it was registered with, drops the "
            f"{report.count('segmentation_invalid')} annotation(s) with an invalid segmentation "
            f"(ids {report.first_ids('segmentation_invalid')}...), boxes included. Register it "
            "with retinafocal (DATASETS.COCO_JSON, register_coco_dataset) to train on their boxes."
        )


def checked_dataset_dicts(
    names: Union[str, Sequence[str]],
    *,
    on_unreadable: Optional[str] = None,
    purpose: str = "training",
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """detectron2's ``get_detection_dataset_dicts(names, **kwargs)`` once :func:`check_datasets`
    passed ``names``, without the unreadable images (in a warning) if ``on_unreadable="skip"``."""
    reports = check_datasets(names, on_unreadable=on_unreadable, purpose=purpose)
    dataset_dicts = get_detection_dataset_dicts(names, **kwargs)
    if on_unreadable != "skip":
        return dataset_dicts
    unreadable = {path for report in reports.values() for path in report.unreadable_files}
    for name, report in reports.items():
        if report.unreadable_files:
            role = "Test dataset" if purpose == "evaluation" else "Dataset"
            logger.warning(
                f"{role} '{name}': {report.unreadable_summary()}. DATALOADER.ON_UNREADABLE_IMAGE "
                f"is 'skip': they are left out of {purpose}."
            )
    return [d for d in dataset_dicts if d["file_name"] not in unreadable]


class NumClassesError(ValueError):
    """The model's number of classes K does not fit the C ``thing_classes`` of its datasets
    (mapped to classes 0 .. C-1; RetinaNet takes K as background): with K < C the last categories
    train as background, with K > C COCO evaluation fails after training."""


def _counts(names: Sequence[str]) -> Dict[str, int]:
    """Dataset name -> ``len(thing_classes)``, for the datasets whose metadata lists them."""
    counts: Dict[str, int] = {}
    for name in names:
        metadata = MetadataCatalog.get(name)
        if metadata.get("thing_classes", None) is None and name in DatasetCatalog.list():
            DatasetCatalog.get(name)  # detectron2's load_coco_json sets thing_classes
        classes = metadata.get("thing_classes", None)
        if classes is None:
            logger.info(f"Dataset '{name}' does not list its classes: NUM_CLASSES not checked.")
        else:
            counts[name] = len(classes)
    return counts


def check_num_classes(num_classes: int, names: Sequence[str], *, key: str, opt_in: str) -> None:
    """Raise :class:`NumClassesError`, naming the config ``key`` and the fix (``opt_in``), unless
    every dataset of ``names`` that lists its classes has ``num_classes`` classes."""
    wrong = {name: n for name, n in _counts(names).items() if n != num_classes}
    if not wrong:
        return
    lines = []
    for name, n in wrong.items():
        if n > num_classes:
            effect = f"its last {n - num_classes} class(es) would train as background"
        else:
            effect = f"the model would predict {num_classes - n} class(es) it does not have"
        lines.append(f"  dataset '{name}' has {n} classes (categories): {effect}")
    fix = ", ".join(sorted({str(n) for n in wrong.values()}))
    raise NumClassesError(
        f"{key} is {num_classes}, but the datasets do not have {num_classes} classes:\n"
        + "\n".join(lines)
        + f"\nSet {key} to {fix}, or set {opt_in} to take it from the training datasets."
    )


def num_classes_from_datasets(names: Sequence[str], *, key: str) -> int:
    """The class count shared by ``names`` (for the opt-in ``key``); else raises NumClassesError."""
    counts = _counts(names)
    if not counts:
        raise NumClassesError(
            f"{key} asks for the number of classes of the training datasets {list(names)}, but "
            "none lists its classes (metadata 'thing_classes'). Set the number yourself."
        )
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"'{name}': {n}" for name, n in counts.items())
        raise NumClassesError(
            f"{key} asks for the number of classes of the training datasets, but they differ "
            f"({listed}). Give them the same categories, or train on one."
        )
    return next(iter(counts.values()))
