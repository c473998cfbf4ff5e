"""Dataset registration: the embedded shapes splits, COCO 2017 and COCO-format json from configs.

Every COCO-format dataset that retinafocal registers loads through one function,
:func:`load_coco_dataset`, so all of them get the same checks.

Roots follow detectron2's convention: ``$DETECTRON2_DATASETS`` (default ``datasets``, relative to
the working directory), read when this module is imported. See ``datasets/README.md``.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .shapes import DEFAULT_SPLITS, SHAPE_CLASSES, ShapesSpec, ensure_shapes_split, shapes_json_path
from .validation import load_coco_json_checked

__all__ = [
    "datasets_root",
    "load_coco_dataset",
    "register_coco_dataset",
    "register_coco_json_datasets",
    "register_shapes",
    "register_coco_2017",
    "ensure_dataset_files",
    "COCO_2017_SPLITS",
]

logger = logging.getLogger(__name__)

# Registered datasets whose files are generated on first use: name -> (root, split, count, spec).
_GENERATED: Dict[str, Tuple[str, str, int, ShapesSpec]] = {}

#: detectron2's builtin COCO 2017 detection splits, re-registered to load through
#: :func:`load_coco_dataset`. Their metadata (classes, json_file, image_root) stays detectron2's.
COCO_2017_SPLITS = (
    "coco_2017_train",
    "coco_2017_val",
    "coco_2017_test",
    "coco_2017_test-dev",
    "coco_2017_val_100",
)


def datasets_root() -> str:
    """The directory that holds all datasets: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def load_coco_dataset(json_file: str, image_root: str, dataset_name: str) -> List[Dict[str, Any]]:
    """Load a COCO-format json into detectron2's dataset dicts (and fill the dataset's
    ``thing_classes`` metadata), after :func:`~retinafocal.data.validation.load_coco_json_checked`
    has checked it. The single loader of every dataset registered here."""
    return load_coco_json_checked(json_file, image_root, dataset_name)


def _registered_files(name: str) -> tuple:
    meta = MetadataCatalog.get(name)
    return (getattr(meta, "json_file", None), getattr(meta, "image_root", None))


def register_coco_dataset(
    name: str, json_file: str, image_root: str, metadata: Dict[str, Any] | None = None
) -> None:
    """Register a COCO-format detection dataset under ``name``, evaluated by COCO AP.

    Registering the same name again with the same files does nothing, so a config can be set up
    twice in one process; another dataset already registered under ``name`` is an error.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        if _registered_files(name) == (json_file, image_root):
            return
        raise ValueError(
            f"Cannot register dataset {name!r} with json_file={json_file!r}, "
            f"image_root={image_root!r}: that name is already registered with json_file, "
            f"image_root = {_registered_files(name)}. Pick another name."
        )
    DatasetCatalog.register(name, lambda: load_coco_dataset(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def register_coco_json_datasets(entries: Sequence[Sequence[str]]) -> List[str]:
    """Register the datasets listed in a config's ``DATASETS.COCO_JSON`` (or the LazyConfig
    ``datasets.coco_json``): ``[[name, json_file, image_root], ...]``.

    Returns:
        the registered names, in order.
    """
    names = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str) or len(entry) != 3:
            raise ValueError(
                f"DATASETS.COCO_JSON[{i}] must be [name, json_file, image_root], got {entry!r}"
            )
        name, json_file, image_root = (str(x) for x in entry)
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON[{i}] ({name!r}): json file {json_file!r} does not exist"
            )
        if not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"DATASETS.COCO_JSON[{i}] ({name!r}): image root {image_root!r} is not a directory"
            )
        register_coco_dataset(name, json_file, image_root)
        names.append(name)
    return names


def _shapes_loader(name: str):
    def load() -> List[Dict[str, Any]]:
        ensure_dataset_files(name)
        root, split, _, _ = _GENERATED[name]
        return load_coco_dataset(shapes_json_path(root, split), os.path.join(root, split), name)

    return load


def register_shapes(
    root: str | None = None,
    prefix: str = "shapes",
    splits: Dict[str, Tuple[int, ShapesSpec]] | None = None,
) -> List[str]:
    """Register the embedded dataset's splits as ``{prefix}_{split}``.

    Nothing is generated here: a split is written under ``root`` (default
    ``$DETECTRON2_DATASETS/shapes``) the first time it is loaded, which takes seconds.

    Args:
        splits: split name -> (number of images, spec); default
            :data:`~retinafocal.data.shapes.DEFAULT_SPLITS` (``train`` and ``val``).

    Returns:
        the dataset names, in the order of ``splits``.
    """
    root = os.path.join(datasets_root(), "shapes") if root is None else root
    names = []
    for split, (num_images, spec) in (DEFAULT_SPLITS if splits is None else splits).items():
        name = f"{prefix}_{split}"
        json_file, image_root = shapes_json_path(root, split), os.path.join(root, split)
        if name in DatasetCatalog.list():
            if _registered_files(name) != (json_file, image_root):
                raise ValueError(
                    f"Cannot register the shapes split {name!r} under {root!r}: that name is "
                    f"already registered with json_file, image_root = {_registered_files(name)}."
                )
        else:
            _GENERATED[name] = (root, split, num_images, spec)
            DatasetCatalog.register(name, _shapes_loader(name))
            MetadataCatalog.get(name).set(
                json_file=json_file,
                image_root=image_root,
                evaluator_type="coco",
                thing_classes=list(SHAPE_CLASSES),
            )
        names.append(name)
    return names


def register_coco_2017() -> None:
    """Make detectron2's builtin COCO 2017 splits load through :func:`load_coco_dataset`.

    detectron2 registers them when ``detectron2.data`` is imported, under
    ``$DETECTRON2_DATASETS/coco``; their metadata (json_file, image_root, classes) is kept.
    """
    import detectron2.data.datasets.builtin  # noqa: F401  (registers the coco_* names)

    for name in COCO_2017_SPLITS:
        if name not in DatasetCatalog.list():
            continue
        json_file, image_root = _registered_files(name)
        if json_file is None or image_root is None:
            continue
        DatasetCatalog.remove(name)
        DatasetCatalog.register(
            name, lambda j=json_file, r=image_root, n=name: load_coco_dataset(j, r, n)
        )


def ensure_dataset_files(name: str) -> None:
    """Generate the files of a registered embedded (shapes) dataset if they are missing or stale;
    nothing for other datasets.

    Evaluators read a dataset's json when they are built, possibly before any loader has run,
    and in multi-process training one process should generate while the others wait (see
    :func:`retinafocal.engine.defaults.prepare_datasets`).
    """
    if name in _GENERATED:
        root, split, num_images, spec = _GENERATED[name]
        ensure_shapes_split(root, split, num_images, spec)
