"""Checks of COCO-format detection datasets, and a loader that applies the fixes they allow.

:func:`validate_coco_json` reads a COCO instances json and (optionally) the image files it names,
and reports **every** problem at once in a :class:`ValidationReport`: a count per kind of problem
and the first offending ids. :func:`load_coco_json_checked` runs that check when a dataset is first
used (cached, see below), refuses datasets with fatal problems, and returns detectron2 dataset
dicts with the fixable problems fixed.

Problems fall into four severities:

* ``fatal``: the dataset cannot be used as it is, because the fix would have to guess what the
  author meant: malformed json (reported with file, line and column), missing or ill-typed
  required fields, duplicate category / image / annotation ids (annotations could be attributed
  to the wrong image, and COCO evaluation silently keeps only one of the duplicates), category
  ids that are not among the ``categories`` (usually a wrong category list, which would shift
  every class). Loading raises :class:`DatasetValidationError`.
* ``unreadable``: an image file that is missing, is not a decodable image (corrupt, truncated,
  unknown format) or whose size differs from the json's ``width``/``height``. What happens at
  training time is ``cfg.DATALOADER.ON_UNREADABLE_IMAGE``: stop with an error naming the file
  (default) or skip the image, counted (:class:`retinafocal.data.mapper.RobustDatasetMapper`).
* ``fixed``: handled automatically, counted: grayscale, alpha-channel, palette/CMYK and 16-bit
  images are converted to the model's input format by the mapper; boxes partly outside the
  image are clipped to it; boxes with zero or negative size, boxes entirely outside the image,
  malformed boxes and annotations of unknown images are dropped.
* ``info``: images with no (remaining) annotations. They are kept and trained as background.

How deep images are checked (``check_images`` / ``full_decode``):

* header mode (the default when loading): each file is opened and its header parsed (format,
  mode, size, EXIF orientation); JPEG and PNG files must also end with their end marker
  (``FFD9`` / ``IEND``), which catches truncated files without decoding them. A file that lacks
  it is decoded to confirm. Cost: one open and two small reads per image.
* full mode (``full_decode=True``, the default of ``tools/validate_dataset.py``): every image is
  fully decoded, which also finds corrupt data in the middle of a file. Several times slower.

Caching: :func:`load_coco_json_checked` keeps each report in memory and in
``$RETINAFOCAL_CACHE_DIR`` (default ``~/.cache/retinafocal``) under ``dataset_checks/``, keyed
by the json's path, size and modification time, the image folder's path and modification time
and the check mode. Only the first use of a dataset pays for the check. Replacing an image file
in place does not change the key: delete the cache entry (or set
``RETINAFOCAL_VALIDATION_CACHE=0``) after such a repair.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

__all__ = [
    "FATAL",
    "UNREADABLE",
    "FIXED",
    "INFO",
    "PROBLEM_KINDS",
    "DatasetValidationError",
    "ProblemRecord",
    "ValidationReport",
    "ImageInfo",
    "inspect_image",
    "fix_coco_box",
    "validate_coco_json",
    "cached_validate_coco_json",
    "load_coco_json_checked",
]

logger = logging.getLogger(__name__)

FATAL = "fatal"
UNREADABLE = "unreadable"
FIXED = "fixed"
INFO = "info"
_SEVERITY_ORDER = (FATAL, UNREADABLE, FIXED, INFO)

#: Every kind of problem: kind -> (severity, what it means and what is done about it).
PROBLEM_KINDS: Dict[str, Tuple[str, str]] = {
    "malformed_json": (FATAL, "the json file cannot be read or parsed"),
    "bad_structure": (FATAL, "not a COCO instances json (top-level lists or category entries)"),
    "malformed_image": (FATAL, "image entries lacking a valid id, file_name, width or height"),
    "malformed_annotation": (FATAL, "annotations lacking a valid id, image_id or category_id"),
    "duplicate_category_id": (FATAL, "category ids used by more than one category"),
    "duplicate_image_id": (FATAL, "image ids used by more than one image entry"),
    "duplicate_annotation_id": (FATAL, "annotation ids used by more than one annotation"),
    "unknown_category_id": (FATAL, "annotations whose category_id is not among the categories"),
    "missing_file": (UNREADABLE, "image files that do not exist"),
    "unreadable_image": (UNREADABLE, "files that are not a decodable image (corrupt/truncated)"),
    "size_mismatch": (UNREADABLE, "images whose size differs from the json width/height"),
    "converted_16bit": (FIXED, "16-bit or float images (rescaled to 8 bits when read)"),
    "converted_alpha": (FIXED, "images with an alpha channel (alpha dropped when read)"),
    "converted_grayscale": (FIXED, "grayscale images (converted to the input format)"),
    "converted_other_mode": (FIXED, "palette, CMYK or other modes (converted when read)"),
    "box_clipped": (FIXED, "boxes partly outside the image (clipped to it)"),
    "box_empty": (FIXED, "boxes with zero or negative width or height (dropped)"),
    "box_outside": (FIXED, "boxes entirely outside the image (dropped)"),
    "box_invalid": (FIXED, "bbox missing or not 4 finite numbers (annotation dropped)"),
    "orphan_annotation": (FIXED, "annotations whose image_id matches no image (dropped)"),
    "background_image": (INFO, "images with no usable annotation (kept, trained as background)"),
}

#: How many offending ids / examples a report keeps per kind.
MAX_EXAMPLES = 5

# Outcomes of fix_coco_box; the non-"ok" ones are also problem kinds.
BOX_OK = "ok"
BOX_CLIPPED = "box_clipped"
BOX_EMPTY = "box_empty"
BOX_OUTSIDE = "box_outside"
BOX_INVALID = "box_invalid"
_BOX_DROPPED = (BOX_EMPTY, BOX_OUTSIDE, BOX_INVALID)

# Bump when the report's content or meaning changes, so that old cache entries are ignored.
_REPORT_VERSION = 1


class DatasetValidationError(ValueError):
    """A dataset cannot be used as it is; the message holds the validation report."""


@dataclass
class ProblemRecord:
    """How often one kind of problem occurs, with the first offenders.

    Attributes:
        kind: a key of :data:`PROBLEM_KINDS`.
        count: number of occurrences (images, annotations or entries, depending on the kind).
        first_ids: the first offending image / annotation / category ids (at most
            :data:`MAX_EXAMPLES`); empty for problems that have no id (malformed json).
        examples: human-readable descriptions of the first occurrences, e.g.
            ``"image 7 (a.jpg): truncated"``.
    """

    kind: str
    count: int = 0
    first_ids: List[Any] = field(default_factory=list)
    examples: List[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return PROBLEM_KINDS[self.kind][0]


@dataclass
class ValidationReport:
    """Everything :func:`validate_coco_json` found in one COCO json.

    Attributes:
        json_file, image_root: what was checked.
        num_images, num_annotations, num_categories: entries in the json (0 when it is malformed).
        image_check: "none" (images not opened), "header" or "full" (see the module docstring).
        problems: kind -> :class:`ProblemRecord`, only for kinds that occurred.
    """

    json_file: str
    image_root: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    image_check: str = "none"
    problems: Dict[str, ProblemRecord] = field(default_factory=dict)

    def add(self, kind: str, offending_id: Any = None, example: Optional[str] = None) -> None:
        """Count one occurrence of ``kind``, remembering its id and example if among the first."""
        if kind not in PROBLEM_KINDS:
            raise KeyError(f"Unknown problem kind {kind!r}; known: {sorted(PROBLEM_KINDS)}")
        record = self.problems.setdefault(kind, ProblemRecord(kind))
        record.count += 1
        if offending_id is not None and len(record.first_ids) < MAX_EXAMPLES:
            record.first_ids.append(offending_id)
        if example is not None and len(record.examples) < MAX_EXAMPLES:
            record.examples.append(example)

    def count(self, kind: str) -> int:
        """Occurrences of ``kind`` (0 if none)."""
        if kind not in PROBLEM_KINDS:
            raise KeyError(f"Unknown problem kind {kind!r}; known: {sorted(PROBLEM_KINDS)}")
        record = self.problems.get(kind)
        return record.count if record is not None else 0

    def first_ids(self, kind: str) -> List[Any]:
        """The first offending ids of ``kind`` (empty if none)."""
        record = self.problems.get(kind)
        return list(record.first_ids) if record is not None else []

    def kinds(self, severity: str) -> List[str]:
        """Kinds of the given severity that occurred, in :data:`PROBLEM_KINDS` order."""
        return [k for k in PROBLEM_KINDS if k in self.problems and PROBLEM_KINDS[k][0] == severity]

    def num_with_severity(self, severity: str) -> int:
        return sum(self.problems[k].count for k in self.kinds(severity))

    @property
    def has_fatal(self) -> bool:
        """True when the dataset cannot be loaded (see the module docstring)."""
        return bool(self.kinds(FATAL))

    @property
    def num_unreadable_images(self) -> int:
        """Images that training cannot read (missing, undecodable or of the wrong size)."""
        return self.num_with_severity(UNREADABLE)

    def format(self) -> str:
        """A multi-line summary: one line per problem kind, worst first, then a verdict."""
        lines = [
            f"Dataset check of {self.json_file} (images under {self.image_root}): "
            f"{self.num_images} images, {self.num_annotations} annotations, "
            f"{self.num_categories} categories; image files checked: {self.image_check}."
        ]
        if not self.problems:
            lines.append("  no problems found.")
        for severity in _SEVERITY_ORDER:
            for kind in self.kinds(severity):
                record = self.problems[kind]
                description = PROBLEM_KINDS[kind][1]
                lines.append(f"  [{severity:<10}] {kind:<23} {record.count:>7}  {description}")
                if record.first_ids:
                    shown = ", ".join(repr(i) for i in record.first_ids)
                    more = " ..." if record.count > len(record.first_ids) else ""
                    lines.append(f"{'':>16}first ids: {shown}{more}")
                for example in record.examples:
                    lines.append(f"{'':>16}- {example}")
        lines.append("  " + self.verdict())
        return "\n".join(lines)

    def verdict(self) -> str:
        """One sentence saying what happens to this dataset."""
        if self.has_fatal:
            return (
                f"FATAL: {self.num_with_severity(FATAL)} problem(s) ("
                + ", ".join(self.kinds(FATAL))
                + ") must be fixed in the json before it can be used."
            )
        n = self.num_unreadable_images
        if n:
            return (
                f"{n} image(s) cannot be read: training stops on the first one unless "
                "DATALOADER.ON_UNREADABLE_IMAGE is 'skip'. Other problems are fixed on loading."
            )
        return "Usable: the problems listed (if any) are fixed on loading."

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ValidationReport":
        d = dict(d)
        problems = {k: ProblemRecord(**v) for k, v in d.pop("problems", {}).items()}
        return cls(problems=problems, **d)


# ------------------------------------------------------------------------------------------
# Boxes
# ------------------------------------------------------------------------------------------


def fix_coco_box(bbox: Any, width: float, height: float) -> Tuple[str, Optional[List[float]]]:
    """Check one COCO ``[x, y, w, h]`` box against an image of ``width`` x ``height`` pixels.

    Returns:
        (outcome, box): outcome is "ok" (box returned as floats), "box_clipped" (the part inside
        the image is returned), or one of "box_empty" (w <= 0 or h <= 0), "box_outside" (no area
        inside the image), "box_invalid" (not 4 finite numbers), for which box is None.

    Example: ``fix_coco_box([-5, 2, 10, 3], 8, 8) == ("box_clipped", [0.0, 2.0, 5.0, 3.0])``.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return BOX_INVALID, None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return BOX_INVALID, None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return BOX_INVALID, None
    if w <= 0 or h <= 0:
        return BOX_EMPTY, None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return BOX_OUTSIDE, None
    clipped = [x0, y0, x1 - x0, y1 - y0]
    # A tolerance, so that float round-off in x + w does not count as "outside".
    if max(abs(a - b) for a, b in zip(clipped, (x, y, w, h))) > 1e-6:
        return BOX_CLIPPED, clipped
    return BOX_OK, [x, y, w, h]


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------

_EXIF_ORIENTATION_TAG = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Modes that need more than dropping nothing when converted to RGB / BGR.
_MODES_16BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_MODES_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_MODES_GRAY = ("1", "L")
_MODES_PLAIN = ("RGB",)


@dataclass
class ImageInfo:
    """What :func:`inspect_image` learnt about one file.

    Attributes:
        readable: False when the file cannot be decoded; ``reason`` then says why.
        width, height: the size after applying the EXIF orientation, as detectron2's
            ``read_image`` returns it (0 when unreadable).
        conversion: the problem kind of the conversion the mapper will apply
            ("converted_16bit", "converted_alpha", ...), or None for plain 8-bit RGB.
    """

    readable: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    conversion: Optional[str] = None


def _has_end_marker(f, image_format: str) -> bool:
    """Whether a JPEG / PNG file ends as a complete file does, judged from its last bytes."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 1024))
    tail = f.read()
    if image_format == "PNG":
        return b"IEND" in tail[-64:]
    # Some writers pad JPEG files with zero bytes after the end-of-image marker.
    return tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def _png_bit_depth(f) -> int:
    """The bit depth stored in a PNG's IHDR chunk (byte 24), which Pillow does not report for
    16-bit RGB files (it reads them as 8-bit "RGB")."""
    f.seek(0)
    head = f.read(25)
    if len(head) < 25 or not head.startswith(_PNG_SIGNATURE):
        return 8
    return head[24]


def _exif_orientation(im: Image.Image, image_format: str) -> Optional[int]:
    """The EXIF orientation tag, read without decoding pixels."""
    try:
        if image_format == "PNG":
            # Pillow's PngImageFile.getexif() decodes the whole image to look for an eXIf chunk
            # after the pixel data; use only what the header held.
            exif = Image.Exif()
            if "exif" in im.info:
                exif.load(im.info["exif"])
        else:
            exif = im.getexif()
        return exif.get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 -- broken EXIF blocks do not stop detectron2's read_image
        return None


def _conversion_kind(mode: str, bit_depth: int, has_transparency: bool) -> Optional[str]:
    if mode in _MODES_16BIT or bit_depth == 16:
        return "converted_16bit"
    if mode in _MODES_ALPHA or has_transparency:
        return "converted_alpha"
    if mode in _MODES_GRAY:
        return "converted_grayscale"
    if mode in _MODES_PLAIN:
        return None
    return "converted_other_mode"


def inspect_image(path: str, *, full_decode: bool = False) -> ImageInfo:
    """Open one image file and report whether and how the training data loader can read it.

    Args:
        path: a local file path.
        full_decode: decode all pixels; otherwise only the header is parsed, plus the end-marker
            check of JPEG / PNG files described in the module docstring.
    """
    try:
        with open(path, "rb") as f:
            with Image.open(f) as im:
                image_format = im.format or ""
                mode = im.mode
                width, height = im.size
                has_transparency = "transparency" in im.info
                orientation = _exif_orientation(im, image_format)
            must_decode = full_decode or image_format not in ("JPEG", "PNG")
            if not must_decode and not _has_end_marker(f, image_format):
                must_decode = True  # maybe truncated, maybe trailing bytes: decoding tells
            bit_depth = _png_bit_depth(f) if image_format == "PNG" else 8
        if must_decode:
            with Image.open(path) as im:
                im.load()
    except UnidentifiedImageError:
        return ImageInfo(readable=False, reason="not an image in any format Pillow knows")
    except Exception as e:  # noqa: BLE001 -- any failure to decode makes the file unreadable
        return ImageInfo(readable=False, reason=f"{type(e).__name__}: {e}")
    if orientation in (5, 6, 7, 8):  # transposed / rotated by 90 degrees: width and height swap
        width, height = height, width
    return ImageInfo(
        readable=True,
        width=width,
        height=height,
        conversion=_conversion_kind(mode, bit_depth, has_transparency),
    )


# ------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------


def _is_id(value: Any) -> bool:
    """COCO ids are integers; strings are tolerated (pycocotools accepts any hashable)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _read_json(json_file: str, report: ValidationReport) -> Optional[Any]:
    try:
        with open(json_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        report.add("malformed_json", example=f"{json_file}: cannot be read ({e})")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        report.add(
            "malformed_json",
            example=f"{json_file}: line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}",
        )
        return None


def _check_structure(data: Any, report: ValidationReport) -> bool:
    """Top-level shape: a dict with 'images', 'categories' and (optionally) 'annotations' lists."""
    if not isinstance(data, dict):
        report.add("bad_structure", example=f"top level is a {type(data).__name__}, not an object")
        return False
    ok = True
    for key in ("images", "annotations", "categories"):
        if key == "annotations" and key not in data:
            continue  # an image-only json: every image is background
        if not isinstance(data.get(key), list):
            found = type(data[key]).__name__ if key in data else "missing"
            report.add("bad_structure", example=f"'{key}' must be a list, found {found}")
            ok = False
    if isinstance(data.get("categories"), list) and not data["categories"]:
        report.add("bad_structure", example="'categories' is empty")
        ok = False
    return ok


def _check_categories(categories: List[Any], report: ValidationReport) -> set:
    seen: set = set()
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or "name" not in cat:
            report.add("bad_structure", example=f"categories[{i}] lacks an integer 'id' or 'name'")
            continue
        if cat["id"] in seen:
            example = f"categories[{i}] repeats id {cat['id']}"
            report.add("duplicate_category_id", cat["id"], example)
        seen.add(cat["id"])
    return seen


def _check_images(images: List[Any], report: ValidationReport) -> Dict[Any, dict]:
    """Returns image id -> entry, for the first entry of each valid id."""
    by_id: Dict[Any, dict] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            report.add("malformed_image", example=f"images[{i}] is not an object")
            continue
        missing = [k for k in ("id", "file_name") if k not in img]
        missing += [k for k in ("width", "height") if not _is_positive_number(img.get(k))]
        if missing or not _is_id(img["id"]) or not isinstance(img["file_name"], str):
            what = ", ".join(missing) if missing else "id/file_name type"
            report.add("malformed_image", img.get("id"), f"images[{i}]: invalid or missing {what}")
            continue
        if img["id"] in by_id:
            report.add(
                "duplicate_image_id",
                img["id"],
                f"images[{i}] ({img['file_name']}) repeats the id of "
                f"{by_id[img['id']]['file_name']}",
            )
            continue
        by_id[img["id"]] = img
    return by_id


def _check_annotations(
    annotations: List[Any],
    images: Dict[Any, dict],
    category_ids: set,
    report: ValidationReport,
) -> None:
    """Ids, categories, images and boxes of every annotation; then the background images."""
    seen: set = set()
    images_with_boxes: set = set()
    known_categories = sorted(category_ids, key=str)[:10]  # shown in messages
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not all(
            _is_id(ann.get(k)) for k in ("id", "image_id", "category_id")
        ):
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            example = f"annotations[{i}] lacks an integer id, image_id or category_id"
            report.add("malformed_annotation", ann_id, example)
            continue
        ann_id = ann["id"]
        if ann_id in seen:
            report.add("duplicate_annotation_id", ann_id, f"annotations[{i}] repeats id {ann_id}")
            continue
        seen.add(ann_id)
        if ann["category_id"] not in category_ids:
            report.add(
                "unknown_category_id",
                ann_id,
                f"annotation {ann_id}: category_id {ann['category_id']!r} not among "
                f"{known_categories}",
            )
            continue
        img = images.get(ann["image_id"])
        if img is None:
            example = f"annotation {ann_id}: image_id {ann['image_id']!r} matches no image"
            report.add("orphan_annotation", ann_id, example)
            continue
        outcome, _ = fix_coco_box(ann.get("bbox"), img["width"], img["height"])
        if outcome != BOX_OK:
            report.add(
                outcome,
                ann_id,
                f"annotation {ann_id} of image {img['id']} ({img['width']}x{img['height']}): "
                f"bbox {ann.get('bbox')!r}",
            )
        if outcome not in _BOX_DROPPED:
            images_with_boxes.add(img["id"])
    for img_id, img in images.items():
        if img_id not in images_with_boxes:
            report.add("background_image", img_id, f"image {img_id} ({img['file_name']})")


def _check_image_files(
    images: Dict[Any, dict],
    image_root: str,
    report: ValidationReport,
    full_decode: bool,
    num_workers: int,
) -> None:
    entries = list(images.values())

    def inspect(img: dict) -> Optional[ImageInfo]:
        path = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(path):
            return None
        return inspect_image(path, full_decode=full_decode)

    # Opening files is I/O bound and Pillow's header parsing is short, so threads suffice.
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        infos = list(pool.map(inspect, entries, chunksize=64))
    for img, info in zip(entries, infos):
        name = f"image {img['id']} ({img['file_name']})"
        if info is None:
            report.add(
                "missing_file", img["id"], f"{name}: {os.path.join(image_root, img['file_name'])}"
            )
        elif not info.readable:
            report.add("unreadable_image", img["id"], f"{name}: {info.reason}")
        elif (info.width, info.height) != (img["width"], img["height"]):
            report.add(
                "size_mismatch",
                img["id"],
                f"{name}: file is {info.width}x{info.height}, json says "
                f"{img['width']}x{img['height']}",
            )
        elif info.conversion is not None:
            report.add(info.conversion, img["id"], name)


def validate_coco_json(
    json_file: str,
    image_root: str,
    *,
    check_images: bool = True,
    full_decode: bool = False,
    num_workers: int = 8,
) -> ValidationReport:
    """Check a COCO instances json, and the image files it names, for every known problem.

    Nothing raises for a bad dataset: all problems are collected in the returned report (see
    the module docstring for the kinds and their severities).

    Args:
        json_file: path of the COCO json.
        image_root: folder that the images' ``file_name`` are relative to.
        check_images: open the image files (else only the json is checked).
        full_decode: decode every image fully instead of the header check.
        num_workers: threads that open image files.
    """
    report = ValidationReport(json_file=json_file, image_root=image_root)
    data = _read_json(json_file, report)
    if data is None or not _check_structure(data, report):
        return report
    annotations = data.get("annotations", [])
    report.num_images = len(data["images"])
    report.num_annotations = len(annotations)
    report.num_categories = len(data["categories"])

    category_ids = _check_categories(data["categories"], report)
    images = _check_images(data["images"], report)
    _check_annotations(annotations, images, category_ids, report)
    if check_images:
        report.image_check = "full" if full_decode else "header"
        _check_image_files(images, image_root, report, full_decode, num_workers)
    return report


# ------------------------------------------------------------------------------------------
# Loading, with a cached check
# ------------------------------------------------------------------------------------------

_MEMORY_CACHE: Dict[str, ValidationReport] = {}


def _cache_dir() -> str:
    root = os.environ.get("RETINAFOCAL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "retinafocal"
    )
    return os.path.join(root, "dataset_checks")


def _cache_enabled() -> bool:
    return os.environ.get("RETINAFOCAL_VALIDATION_CACHE", "1") not in ("0", "false", "no")


def _cache_key(json_file: str, image_root: str, check_images: bool) -> str:
    def stamp(path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path}:absent"
        return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"

    parts = [str(_REPORT_VERSION), stamp(json_file), stamp(image_root), str(check_images)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def _load_cached_report(key: str) -> Optional[ValidationReport]:
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    path = os.path.join(_cache_dir(), key + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            report = ValidationReport.from_dict(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # absent, unreadable or from an incompatible version: check again
    _MEMORY_CACHE[key] = report
    return report


def _store_cached_report(key: str, report: ValidationReport) -> None:
    _MEMORY_CACHE[key] = copy.deepcopy(report)
    directory = _cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
        # Written to a temporary file and renamed, so that concurrent ranks never read half.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f)
        os.replace(tmp, os.path.join(directory, key + ".json"))
    except OSError as e:  # a read-only home must not stop training
        logger.debug(f"Cannot cache the dataset check in {directory}: {e}")


def cached_validate_coco_json(
    json_file: str, image_root: str, *, check_images: bool = True
) -> ValidationReport:
    """:func:`validate_coco_json` in header mode, cached as the module docstring describes."""
    use_cache = _cache_enabled()
    key = _cache_key(json_file, image_root, check_images)
    if use_cache:
        report = _load_cached_report(key)
        if report is not None:
            return copy.deepcopy(report)  # callers may modify it; the cache keeps its own
    report = validate_coco_json(json_file, image_root, check_images=check_images)
    if use_cache and not report.has_fatal:
        _store_cached_report(key, report)
    return report


def _load_without_invalid_boxes(json_file: str, image_root: str, dataset_name: str) -> List[dict]:
    """detectron2's ``load_coco_json`` raises on an empty ``bbox`` list; give it a copy of the
    json without the annotations whose bbox is malformed (they are dropped anyway)."""
    from detectron2.data.datasets import load_coco_json

    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    data["annotations"] = [
        a
        for a in data.get("annotations", [])
        if fix_coco_box(a.get("bbox"), 1, 1)[0] != BOX_INVALID
    ]
    fd, tmp = tempfile.mkstemp(prefix="retinafocal_", suffix="_" + os.path.basename(json_file))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        return load_coco_json(tmp, image_root, dataset_name)
    finally:
        os.remove(tmp)


def _apply_box_fixes(dataset_dicts: List[dict]) -> Dict[str, int]:
    """Clip and drop boxes in place as :func:`fix_coco_box` says; returns counts per outcome."""
    counts: Dict[str, int] = {}
    for record in dataset_dicts:
        kept = []
        for anno in record.get("annotations", []):
            outcome, box = fix_coco_box(anno.get("bbox"), record["width"], record["height"])
            counts[outcome] = counts.get(outcome, 0) + 1
            if box is None:
                continue
            anno["bbox"] = box
            kept.append(anno)
        record["annotations"] = kept
    return counts


def load_coco_json_checked(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    on_unreadable: Optional[str] = None,
    check_images: bool = True,
) -> List[dict]:
    """Load a COCO json as detectron2 dataset dicts, after checking it.

    The check (:func:`validate_coco_json`, header mode, cached) is logged. Then:

    * fatal problems raise :class:`DatasetValidationError` with the full report;
    * boxes are clipped to their image, and empty / outside / malformed boxes dropped (counted in
      a warning); annotations of unknown images are dropped (as detectron2 does);
    * images with no annotation left are kept (they train as background; note that detectron2
      drops them when ``cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is True);
    * unreadable images are kept by default, for the data loader's mapper to handle
      (:class:`~retinafocal.data.mapper.RobustDatasetMapper`).

    Args:
        json_file, image_root, dataset_name: as for detectron2's ``load_coco_json``.
        on_unreadable: ``cfg.DATALOADER.ON_UNREADABLE_IMAGE`` when known. "error" raises here,
            before training starts, if any image cannot be read; "skip" and None keep them.
        check_images: also check the image files (else only the json).

    Returns:
        list[dict] in detectron2's standard dataset format, ``bbox_mode`` XYWH_ABS.
    """
    if on_unreadable not in (None, "error", "skip"):
        raise ValueError(f"on_unreadable must be 'error', 'skip' or None, got {on_unreadable!r}")
    report = cached_validate_coco_json(json_file, image_root, check_images=check_images)
    name = f"Dataset '{dataset_name}'" if dataset_name else "Dataset"
    if report.has_fatal:
        raise DatasetValidationError(f"{name} cannot be loaded:\n{report.format()}")
    if report.problems.keys() - {"background_image"}:
        logger.warning(f"{name}:\n{report.format()}")
    else:
        logger.info(f"{name}:\n{report.format()}")
    if on_unreadable == "error" and report.num_unreadable_images:
        raise DatasetValidationError(
            f"{name}: {report.num_unreadable_images} image(s) cannot be read and "
            "DATALOADER.ON_UNREADABLE_IMAGE is 'error'. Fix or remove them, or set it to 'skip' "
            f"to train without them:\n{report.format()}"
        )

    if report.count("box_invalid"):
        dataset_dicts = _load_without_invalid_boxes(json_file, image_root, dataset_name)
    else:
        from detectron2.data.datasets import load_coco_json

        dataset_dicts = load_coco_json(json_file, image_root, dataset_name)
    counts = _apply_box_fixes(dataset_dicts)
    counts[BOX_INVALID] = counts.get(BOX_INVALID, 0) + report.count("box_invalid")
    changed = {k: v for k, v in counts.items() if k != BOX_OK and v}
    if changed:
        logger.warning(
            f"{name}: "
            + ", ".join(f"{v} {k.replace('box_', '')}" for k, v in sorted(changed.items()))
            + " box(es): clipped ones are kept, the others dropped."
        )
    return dataset_dicts


