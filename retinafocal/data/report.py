"""A dataset check's findings (:class:`ValidationReport`). The severity of a kind of problem
(:data:`PROBLEM_KINDS`) says what the run does: "fatal": loading raises
:class:`DatasetValidationError`; "unreadable" image files: it stops or leaves them out
(``DATALOADER.ON_UNREADABLE_IMAGE``, :meth:`ValidationReport.usable`); "fixed"; "info"."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["PROBLEM_KINDS", "DatasetValidationError", "ProblemRecord", "ValidationReport"]

#: Every kind of problem, worst first: kind -> (severity, what it means and what is done).
PROBLEM_KINDS: Dict[str, Tuple[str, str]] = {
    "malformed_json": ("fatal", "the json file cannot be read or parsed"),
    "bad_structure": ("fatal", "not a COCO instances json (top-level lists or category entries)"),
    "malformed_image": ("fatal", "image entries lacking a valid id, file_name, width or height"),
    "malformed_annotation": ("fatal", "annotations lacking a valid id, image_id or category_id"),
    "duplicate_category_id": ("fatal", "category ids used by more than one category"),
    "duplicate_image_id": ("fatal", "image ids used by more than one image entry"),
    "duplicate_annotation_id": ("fatal", "annotation ids used by more than one annotation"),
    "mixed_id_types": ("fatal", "image or category ids mixing integers and strings"),
    "unknown_category_id": ("fatal", "annotations whose category_id is not among the categories"),
    "duplicate_file_name": ("fatal", "image entries naming a file that another image id names"),
    "ignore_flag": ("fatal", "annotations with a true 'ignore' (detectron2's loader refuses them)"),
    "no_usable_box": ("fatal", "no image has a box to train on (all dropped, crowd, or none)"),
    "missing_file": ("unreadable", "image files that do not exist"),
    "unreadable_image": ("unreadable", "files that are not a decodable image (corrupt/truncated)"),
    "size_mismatch": ("unreadable", "images whose size differs from the json width/height"),
    "converted_16bit": ("fixed", "16-bit or float images (rescaled to 8 bits when read)"),
    "converted_alpha": ("fixed", "images with an alpha channel (alpha dropped when read)"),
    "converted_grayscale": ("fixed", "grayscale images (converted to the input format)"),
    "converted_other_mode": ("fixed", "palette, CMYK or other modes (converted when read)"),
    "box_clipped": ("fixed", "boxes partly outside the image (clipped to it)"),
    "box_empty": ("fixed", "boxes with zero or negative width or height (dropped)"),
    "box_outside": ("fixed", "boxes entirely outside the image (dropped)"),
    "box_invalid": ("fixed", "bbox missing or not 4 finite numbers (annotation dropped)"),
    "orphan_annotation": ("fixed", "annotations whose image_id matches no image (dropped)"),
    "segmentation_invalid": ("fixed", "segmentations detectron2 rejects (dropped, box kept)"),
    "eval_field_missing": ("info", "annotations lacking numeric area or iscrowd (test sets stop)"),
    "background_image": ("info", "images with no usable annotation (kept, trained as background)"),
}

MAX_EXAMPLES = 5  # offending ids / examples kept per kind


def _known(kind: str) -> str:
    if kind not in PROBLEM_KINDS:
        raise KeyError(f"Unknown problem kind {kind!r}; known: {sorted(PROBLEM_KINDS)}")
    return kind


class DatasetValidationError(ValueError):
    """A dataset cannot be used as it is; the message holds the dataset report."""


@dataclass
class ProblemRecord:
    """One kind's count and first :data:`MAX_EXAMPLES` offending ids and descriptions (examples)."""

    count: int = 0
    first_ids: List[Any] = field(default_factory=list)
    examples: List[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """What :func:`~.checks.check_coco_json` found in one COCO json. ``image_check``: "none",
    "quick" or "full"; ``problems``: kind -> record, for the kinds that occurred;
    ``unreadable_files``: the path of **every** unreadable image, as the dataset dicts name it."""

    json_file: str
    image_root: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    image_check: str = "none"
    problems: Dict[str, ProblemRecord] = field(default_factory=dict)
    num_images_with_boxes: int = 0  # with a box that trains (kept, not crowd)
    unreadable_files: List[str] = field(default_factory=list)
    num_unreadable_with_boxes: int = 0

    def add(self, kind: str, offending_id: Any = None, example: Optional[str] = None) -> None:
        """Count one occurrence of ``kind``, keeping its id and example if among the first."""
        record = self.problems.setdefault(_known(kind), ProblemRecord())
        record.count += 1
        if offending_id is not None and len(record.first_ids) < MAX_EXAMPLES:
            record.first_ids.append(offending_id)
        if example is not None and len(record.examples) < MAX_EXAMPLES:
            record.examples.append(example)

    def count(self, kind: str) -> int:
        """Occurrences of ``kind`` (0 if none)."""
        return self.problems[kind].count if _known(kind) in self.problems else 0

    def first_ids(self, kind: str) -> List[Any]:
        """The first offending ids of ``kind`` (empty if none)."""
        return list(self.problems[kind].first_ids) if kind in self.problems else []

    def kinds(self, severity: str) -> List[str]:
        """Kinds of the given severity that occurred, in :data:`PROBLEM_KINDS` order."""
        return [k for k in PROBLEM_KINDS if k in self.problems and PROBLEM_KINDS[k][0] == severity]

    @property
    def has_fatal(self) -> bool:
        """True when the dataset cannot be loaded."""
        return bool(self.kinds("fatal"))

    @property
    def num_unreadable_images(self) -> int:
        """Images that training cannot read (missing, undecodable or of the wrong size)."""
        return sum(self.problems[k].count for k in self.kinds("unreadable"))

    def usable(self, on_unreadable: str) -> bool:
        """Whether training runs with ``DATALOADER.ON_UNREADABLE_IMAGE`` = ``on_unreadable``:
        nothing fatal, and no unreadable image ("error") or a readable image with a box ("skip")."""
        if on_unreadable not in ("error", "skip"):
            raise ValueError(f"on_unreadable must be 'error' or 'skip', got {on_unreadable!r}")
        if on_unreadable == "error":
            return not self.has_fatal and not self.num_unreadable_images
        return not self.has_fatal and self.num_images_with_boxes > self.num_unreadable_with_boxes

    def unreadable_summary(self, max_files: int = 5) -> str:
        """One line: how many images cannot be read, of how many, why, and the first files."""
        n = len(self.unreadable_files)
        why = ", ".join(f"{k} {self.count(k)}" for k in self.kinds("unreadable"))
        shown = ", ".join(self.unreadable_files[:max_files])
        more = f" and {n - max_files} more" if n > max_files else ""
        return f"{n} of {self.num_images} image(s) cannot be read ({why}): {shown}{more}"

    def format(self) -> str:
        """One line per problem kind, worst first, with its first ids and examples."""
        lines = [
            f"Dataset check of {self.json_file} (images under {self.image_root}): "
            f"{self.num_images} images, {self.num_annotations} annotations, "
            f"{self.num_categories} categories; image files checked: {self.image_check}."
        ]
        if not self.problems:
            lines.append("  no problems found.")
        for kind in (k for k in PROBLEM_KINDS if k in self.problems):
            (severity, description), record = PROBLEM_KINDS[kind], self.problems[kind]
            lines.append(f"  [{severity.upper():<10}] {kind:<23} {record.count:>7}  {description}")
            if record.first_ids:
                shown = ", ".join(repr(i) for i in record.first_ids)
                more = " ..." if record.count > len(record.first_ids) else ""
                lines.append(f"{'':>16}first ids: {shown}{more}")
            lines.extend(f"{'':>16}- {example}" for example in record.examples)
        return "\n".join(lines)
