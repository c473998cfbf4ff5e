"""Checks of a COCO-format detection dataset: its json, its boxes and its image files; the
checked loader and ``tools/validate_dataset.py`` both run :func:`check_coco_json`."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from .report import ValidationReport

__all__ = ["ImageInfo", "check_coco_json", "fix_coco_box", "inspect_image", "segmentation_is_valid"]


def fix_coco_box(bbox: Any, width: float, height: float) -> Tuple[str, Optional[List[float]]]:
    """Check one COCO ``[x, y, w, h]`` box against a ``width`` x ``height`` image; returns
    (outcome, box): "ok" (box as floats), "box_clipped" (the part inside), or, with box None,
    "box_empty" (w or h <= 0), "box_outside", "box_invalid" (not 4 finite numbers). E.g.
    ``fix_coco_box([-5, 2, 10, 3], 8, 8) == ("box_clipped", [0.0, 2.0, 5.0, 3.0])``."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "box_invalid", None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "box_invalid", None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "box_invalid", None
    if w <= 0 or h <= 0:
        return "box_empty", None
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x1 <= x0 or y1 <= y0:
        return "box_outside", None
    clipped = [x0, y0, x1 - x0, y1 - y0]
    # A tolerance, so that float round-off in x + w does not count as "outside".
    if max(abs(a - b) for a, b in zip(clipped, (x, y, w, h))) > 1e-6:
        return "box_clipped", clipped
    return "ok", [x, y, w, h]


def segmentation_is_valid(segmentation: Any) -> bool:
    """Whether detectron2's ``load_coco_json`` keeps an annotation with this ``segmentation``:
    it drops it, box included, when no polygon has >= 3 points (an even count >= 6). Absent,
    empty and RLE (``counts``, ``size``) segmentations are kept."""
    if not segmentation:
        return True
    if isinstance(segmentation, dict):
        return "counts" in segmentation and "size" in segmentation
    return isinstance(segmentation, list) and any(
        isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
        for polygon in segmentation
    )


def _is_id(value: Any) -> bool:
    """COCO ids are integers; strings are tolerated (pycocotools accepts any hashable)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _check_structure(data: Any, report: ValidationReport) -> bool:
    """A dict with 'images', 'categories' and (optionally) 'annotations' lists."""
    if not isinstance(data, dict):
        found = "null" if data is None else f"a {type(data).__name__}"
        report.add("bad_structure", example=f"top level is {found}, not an object")
        return False
    for key in ("images", "annotations", "categories"):
        if key == "annotations" and key not in data:
            continue  # an image-only json: every image is background
        if not isinstance(data.get(key), list):
            found = type(data[key]).__name__ if key in data else "missing"
            report.add("bad_structure", example=f"'{key}' must be a list, found {found}")
    if isinstance(data.get("categories"), list) and not data["categories"]:
        report.add("bad_structure", example="'categories' is empty")
    return not report.count("bad_structure")


def _check_id_types(ids: Iterable[Any], what: str, report: ValidationReport) -> None:
    """Ids of one kind must not mix integers and strings: detectron2 sorts them."""
    ints = [i for i in ids if isinstance(i, int)]
    strs = [i for i in ids if isinstance(i, str)]
    if ints and strs:
        fewer = strs if len(strs) <= len(ints) else ints
        example = f"{what} ids mix integers (e.g. {ints[0]!r}) and strings (e.g. {strs[0]!r})"
        for j, offending in enumerate(fewer):  # counted: the ids of the less common type
            report.add("mixed_id_types", offending, example if j == 0 else None)


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
    _check_id_types(seen, "category", report)
    return seen


def _check_images(images: List[Any], report: ValidationReport) -> Dict[Any, dict]:
    """Image id -> the first entry of each valid id."""
    by_id: Dict[Any, dict] = {}
    by_file: Dict[str, Any] = {}  # normalised file_name -> id of the first image naming it
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
            first = by_id[img["id"]]["file_name"]
            example = f"images[{i}] ({img['file_name']}) repeats the id of {first}"
            report.add("duplicate_image_id", img["id"], example)
            continue
        by_id[img["id"]] = img
        first_id = by_file.setdefault(os.path.normpath(img["file_name"]), img["id"])
        if first_id != img["id"]:
            named = f"names {img['file_name']}, the file of image {first_id!r}"
            report.add("duplicate_file_name", img["id"], f"images[{i}] (id {img['id']!r}) {named}")
    _check_id_types(by_id, "image", report)
    return by_id


def _check_annotations(
    annotations: List[Any], images: Dict[Any, dict], category_ids: set, report: ValidationReport
) -> set:
    """Returns the ids of the images with a box that trains (kept, not crowd)."""
    seen: set = set()
    images_with_boxes: set = set()
    known_categories = sorted(category_ids, key=str)[:10]  # shown in messages
    for i, ann in enumerate(annotations):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not (_is_id(ann_id) and _is_id(ann.get("image_id")) and _is_id(ann.get("category_id"))):
            example = f"annotations[{i}] lacks an integer id, image_id or category_id"
            report.add("malformed_annotation", ann_id, example)
            continue
        # detectron2 lets COCO 2014's minival jsons repeat ids; the loader's copy keeps the name.
        if ann_id in seen and "minival" not in os.path.basename(report.json_file):
            report.add("duplicate_annotation_id", ann_id, f"annotations[{i}] repeats id {ann_id}")
            continue
        seen.add(ann_id)
        if ann["category_id"] not in category_ids:
            example = f"annotation {ann_id}: category_id {ann['category_id']!r} not among "
            report.add("unknown_category_id", ann_id, example + str(known_categories))
            continue
        img = images.get(ann["image_id"])
        if img is None:
            example = f"annotation {ann_id}: image_id {ann['image_id']!r} matches no image"
            report.add("orphan_annotation", ann_id, example)
            continue
        where = f"annotation {ann_id} of image {img['id']}"
        if ann.get("ignore", 0) != 0:  # detectron2's load_coco_json asserts, naming nothing
            example = f"{where}: 'ignore': {ann['ignore']!r} (mark ignored regions 'iscrowd': 1)"
            report.add("ignore_flag", ann_id, example)
        if not all(isinstance(ann.get(k), (int, float)) for k in ("area", "iscrowd")):
            example = f"{where}: area {ann.get('area')!r}, iscrowd {ann.get('iscrowd')!r}"
            report.add("eval_field_missing", ann_id, example)
        outcome, _ = fix_coco_box(ann.get("bbox"), img["width"], img["height"])
        if outcome != "ok":
            size = f"{img['width']}x{img['height']}"
            report.add(outcome, ann_id, f"{where} ({size}): bbox {ann.get('bbox')!r}")
        if not segmentation_is_valid(ann.get("segmentation")):
            report.add("segmentation_invalid", ann_id, f"{where}: {ann['segmentation']!r}"[:200])
        # Crowd regions are not trained on: detectron2's mapper keeps only iscrowd == 0.
        if outcome in ("ok", "box_clipped") and ann.get("iscrowd", 0) == 0:
            images_with_boxes.add(img["id"])
    for img_id, img in images.items():
        if img_id not in images_with_boxes:
            report.add("background_image", img_id, f"image {img_id} ({img['file_name']})")
    if not images_with_boxes:
        dropped = f"its {len(annotations)} annotation(s) are all dropped or crowd regions"
        why = dropped if annotations else "the json has no annotation"
        report.add("no_usable_box", example=f"{len(images)} image(s), none with a box: {why}")
    return images_with_boxes


@dataclass
class ImageInfo:
    """One file as :func:`inspect_image` found it; ``conversion``: ``converted_*`` kind or None."""

    readable: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    conversion: Optional[str] = None


def _exif_orientation(im: Image.Image) -> Optional[int]:
    """The EXIF orientation tag, read without decoding pixels."""
    try:
        if im.format == "PNG":
            # PngImageFile.getexif() decodes the whole image: use only what the header held.
            exif = Image.Exif()
            exif.load(im.info.get("exif", b""))
        else:
            exif = im.getexif()
        return exif.get(0x0112)
    except Exception:  # noqa: BLE001 -- broken EXIF blocks do not stop detectron2's read_image
        return None


def _has_end_marker(path: str, image_format: str) -> bool:
    """Whether a JPEG / PNG file ends with its end marker."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        tail = f.read()
    if image_format == "PNG":
        return b"IEND" in tail[-64:]
    # Some writers pad JPEG files with zero bytes after the end-of-image marker.
    return tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def inspect_image(path: str, *, full_decode: bool = False) -> ImageInfo:
    """Whether the data loader can read the local file ``path``: its header opens, its size is
    read after the EXIF orientation ``read_image`` applies, and it is decoded unless it is a JPEG /
    PNG that ends with its end marker (so not truncated), or always with ``full_decode``."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if _exif_orientation(im) in (5, 6, 7, 8):  # transposed / rotated by 90 degrees
                width, height = height, width
            info = ImageInfo(readable=True, width=width, height=height, format=im.format or "")
        ends = info.format in ("JPEG", "PNG") and _has_end_marker(path, info.format)
        if full_decode or not ends:
            with Image.open(path) as im:  # maybe truncated, maybe trailing bytes: decoding tells
                im.load()
    except UnidentifiedImageError:
        return ImageInfo(readable=False, reason="not an image in any format Pillow knows")
    except Exception as e:  # noqa: BLE001 -- any failure to open or decode: the file is unreadable
        return ImageInfo(readable=False, reason=f"{type(e).__name__}: {e}")
    return info


def check_coco_json(
    json_file: str,
    image_root: str,
    *,
    inspect: Optional[Callable[[str], ImageInfo]] = inspect_image,
    image_check: str = "quick",
    map_images: Callable[..., Iterable[Optional[ImageInfo]]] = map,
) -> ValidationReport:
    """Check a COCO instances json and the image files it names into the returned report (a bad
    dataset raises nothing). ``inspect`` says what one existing file holds (None: the json alone),
    named ``image_check`` in the report; ``map_images`` applies it (``map``, a thread pool's)."""
    report = ValidationReport(json_file=json_file, image_root=image_root)
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno} (char {e.pos})"
        report.add("malformed_json", example=f"{json_file}: {where}: {e.msg}")
        return report
    except (OSError, UnicodeDecodeError) as e:
        report.add("malformed_json", example=f"{json_file}: cannot be read ({e})")
        return report
    if not _check_structure(data, report):
        return report
    annotations = data.get("annotations", [])
    report.num_images = len(data["images"])
    report.num_annotations = len(annotations)
    report.num_categories = len(data["categories"])

    category_ids = _check_categories(data["categories"], report)
    images = _check_images(data["images"], report)
    images_with_boxes = _check_annotations(annotations, images, category_ids, report)
    report.num_images_with_boxes = len(images_with_boxes)
    if inspect is None:
        return report
    report.image_check = image_check
    paths = [os.path.join(image_root, img["file_name"]) for img in images.values()]
    infos = map_images(lambda path: inspect(path) if os.path.isfile(path) else None, paths)
    for img, path, info in zip(images.values(), paths, infos):
        name = f"image {img['id']} ({img['file_name']})"
        if info is None:
            report.add("missing_file", img["id"], f"{name}: {path}")
        elif not info.readable:
            report.add("unreadable_image", img["id"], f"{name}: {info.reason}")
        elif (info.width, info.height) != (img["width"], img["height"]):
            sizes = f"{info.width}x{info.height}, json says {img['width']}x{img['height']}"
            report.add("size_mismatch", img["id"], f"{name}: file is {sizes}")
        else:
            if info.conversion is not None:
                report.add(info.conversion, img["id"], name)
            continue
        report.unreadable_files.append(path)
        report.num_unreadable_with_boxes += img["id"] in images_with_boxes
    return report
