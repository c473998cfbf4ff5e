"""The full dataset check behind ``tools/validate_dataset.py``: deeper image inspection, a thread
pool and an on-disk cache of reports, around the package's rules.

:func:`validate_coco_json` runs :func:`retinafocal.data.check_coco_json` (the check training runs
on loading, with the same fatal / unreadable / fixed rules) with :func:`inspect_image` in place
of its header check:

* quick mode: the header is parsed as the loader does; JPEG and PNG files must also end with
  their end marker (``FFD9`` / ``IEND``), which catches truncated files without decoding them
  (a file that lacks it is decoded to confirm); other formats are decoded. The PNG bit depth
  and the mode tell which conversion the mapper will apply (16-bit, alpha, grayscale, ...).
* full mode (``full_decode=True``, the default of the command): every image is fully decoded,
  which also finds corrupt data in the middle of a file. Several times slower.

:func:`cached_validate_coco_json` keeps reports under ``$RETINAFOCAL_CACHE_DIR`` (default
``~/.cache/retinafocal``) in ``dataset_checks/``, keyed by the json's path, size and modification
time, the image folder's path and modification time and the mode. Replacing an image file in
place does not change the key: check again without the cache after such a repair.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Tuple

from PIL import Image

from retinafocal.data.checks import ImageInfo, check_coco_json, read_image_header
from retinafocal.data.report import ProblemRecord, ValidationReport

__all__ = [
    "inspect_image",
    "validate_coco_json",
    "report_to_dict",
    "report_from_dict",
    "cache_dir",
    "cached_validate_coco_json",
]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MODES_16BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_MODES_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_MODES_GRAY = ("1", "L")

# Bump when a report's content or meaning changes, so that old cache entries are ignored.
_REPORT_VERSION = 2


def _has_end_marker(f, image_format: str) -> bool:
    """Whether a JPEG / PNG file ends as a complete file does, judged from its last bytes."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 1024))
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


def _conversion_kind(mode: str, bit_depth: int, has_transparency: bool) -> Optional[str]:
    """The ``converted_*`` problem kind of what the mapper does to such an image, or None."""
    if mode in _MODES_16BIT or bit_depth == 16:
        return "converted_16bit"
    if mode in _MODES_ALPHA or has_transparency:
        return "converted_alpha"
    if mode in _MODES_GRAY:
        return "converted_grayscale"
    return None if mode == "RGB" else "converted_other_mode"


def inspect_image(path: str, *, full_decode: bool = False) -> ImageInfo:
    """Open one image file and report whether and how the training data loader can read it.

    Args:
        path: a local file path.
        full_decode: decode all pixels; otherwise the quick mode of the module docstring.
    """
    info = read_image_header(path)
    if not info.readable:
        return info
    try:
        with open(path, "rb") as f:
            must_decode = full_decode or info.format not in ("JPEG", "PNG")
            if not must_decode and not _has_end_marker(f, info.format):
                must_decode = True  # maybe truncated, maybe trailing bytes: decoding tells
            bit_depth = _png_bit_depth(f) if info.format == "PNG" else 8
        if must_decode:
            with Image.open(path) as im:
                im.load()
    except Exception as e:  # noqa: BLE001 -- any failure to decode makes the file unreadable
        return ImageInfo(readable=False, reason=f"{type(e).__name__}: {e}")
    conversion = _conversion_kind(info.mode, bit_depth, info.has_transparency)
    return dataclasses.replace(info, conversion=conversion)


def validate_coco_json(
    json_file: str,
    image_root: str,
    *,
    check_images: bool = True,
    full_decode: bool = False,
    num_workers: int = 8,
) -> ValidationReport:
    """Check a COCO instances json, and the image files it names, for every known problem.

    Nothing raises for a bad dataset: all problems are collected in the returned report.

    Args:
        json_file: path of the COCO json.
        image_root: folder that the images' ``file_name`` are relative to.
        check_images: open the image files (else only the json is checked).
        full_decode: decode every image fully instead of the quick check.
        num_workers: threads that open image files.
    """
    if not check_images:
        return check_coco_json(json_file, image_root, inspect=None)
    # Opening files is I/O bound and Pillow's header parsing is short, so threads suffice.
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        return check_coco_json(
            json_file,
            image_root,
            inspect=functools.partial(inspect_image, full_decode=full_decode),
            image_check="full" if full_decode else "quick",
            map_images=functools.partial(pool.map, chunksize=64),
        )


def report_to_dict(report: ValidationReport) -> Dict[str, Any]:
    return dataclasses.asdict(report)


def report_from_dict(d: Dict[str, Any]) -> ValidationReport:
    d = dict(d)
    problems = {k: ProblemRecord(**v) for k, v in d.pop("problems", {}).items()}
    return ValidationReport(problems=problems, **d)


def cache_dir() -> str:
    """Where :func:`cached_validate_coco_json` keeps reports."""
    root = os.environ.get("RETINAFOCAL_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "retinafocal"
    )
    return os.path.join(root, "dataset_checks")


def _cache_key(json_file: str, image_root: str, mode: str) -> str:
    def stamp(path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path}:absent"
        return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"

    parts = [str(_REPORT_VERSION), stamp(json_file), stamp(image_root), mode]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()


def cached_validate_coco_json(
    json_file: str,
    image_root: str,
    *,
    check_images: bool = True,
    full_decode: bool = False,
    num_workers: int = 8,
) -> Tuple[ValidationReport, bool]:
    """:func:`validate_coco_json`, reusing a stored report of the same json, image folder and
    mode (see the module docstring). Reports with fatal problems are not stored: the json is
    about to change.

    Returns:
        (report, whether it came from the cache).
    """
    mode = f"images={check_images},full={full_decode}"
    path = os.path.join(cache_dir(), _cache_key(json_file, image_root, mode) + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            return report_from_dict(json.load(f)), True
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent, unreadable or from an incompatible version: check again
    report = validate_coco_json(
        json_file,
        image_root,
        check_images=check_images,
        full_decode=full_decode,
        num_workers=num_workers,
    )
    if not report.has_fatal:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written to a temporary file and renamed, so that a concurrent run never reads half.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report_to_dict(report), f)
        os.replace(tmp, path)
    return report, False
