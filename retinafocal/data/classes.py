"""How many classes a dataset has (its metadata's ``thing_classes``), and the check that a
model has as many: detectron2 maps a json's categories to classes 0 .. C-1 and RetinaNet takes
K = ``NUM_CLASSES`` as background, so with K < C the last categories train as background, and
with K > C COCO evaluation fails after training.
"""
from __future__ import annotations

import logging
from typing import Dict, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["NumClassesError", "check_num_classes", "num_classes_from_datasets"]

logger = logging.getLogger(__name__)


class NumClassesError(ValueError):
    """The model's number of classes does not fit the datasets (message: numbers, key, fix)."""


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
    """Check that every dataset of ``names`` has the model's ``num_classes`` classes; else raise
    :class:`NumClassesError` naming each dataset that differs, both numbers, the config ``key``
    and the fix (``opt_in`` takes the number from the datasets)."""
    wrong = {name: n for name, n in _counts(names).items() if n != num_classes}
    if not wrong:
        return
    lines = []
    for name, n in wrong.items():
        effect = (
            f"its last {n - num_classes} class(es) would train as background"
            if n > num_classes
            else f"the model would predict {num_classes - n} class(es) it does not have"
        )
        lines.append(f"  dataset '{name}' has {n} classes (categories): {effect}")
    fix = ", ".join(sorted({str(n) for n in wrong.values()}))
    raise NumClassesError(
        f"{key} is {num_classes}, but the datasets do not have {num_classes} classes:\n"
        + "\n".join(lines)
        + f"\nSet {key} to {fix}, or set {opt_in} to take it from the training datasets."
    )


def num_classes_from_datasets(names: Sequence[str], *, key: str) -> int:
    """The class count shared by the datasets ``names``, for the opt-in ``key``; raises
    :class:`NumClassesError` when they disagree or none lists its classes."""
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
