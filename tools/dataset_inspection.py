"""The full dataset check behind ``tools/validate_dataset.py``: a thread pool, what the mapper
will convert, an optional full decode of every image and an on-disk cache of reports, around the
package's rules.

:func:`validate_coco_json` runs :func:`retinafocal.data.check_coco_json` (the check training runs
on loading, with the same fatal / unreadable / fixed rules) with :func:`inspect_image`:

* quick mode: the check training runs (header, size, JPEG / PNG end markers), plus the image
  modes the mapper converts (16-bit, alpha, grayscale, palette: ``converted_*``);
* full mode (``full_decode=True``, the default of the command): every image is fully decoded,
  which also finds corrupt data in the middle of a file. Several times slower.

:func:`cached_validate_coco_json` keeps reports under ``$RETINAFOCAL_CACHE_DIR`` (default
``~/.cache/retinafocal``) in ``dataset_checks/``, keyed by the json's path, size and modification
time, the image folder's path and modification time and the mode. Replacing an image file in
place does not change the key: check again without the cache after such a repair. A cache that
cannot be read or written is skipped with a warning: the check itself never depends on it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Tuple

from PIL import Image

from retinafocal.data import checks
from retinafocal.data.checks import ImageInfo, check_coco_json
from retinafocal.data.report import ProblemRecord, ValidationReport

__all__ = [
    "inspect_image",
    "validate_coco_json",
    "verdict",
    "report_to_dict",
    "report_from_dict",
    "cache_dir",
    "cached_validate_coco_json",
]

logger = logging.getLogger(__name__)

# Bump when a report's content or meaning changes, so that old cache entries are ignored.
_REPORT_VERSION = 5

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MODES_16BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_MODES_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_MODES_GRAY = ("1", "L")


def _png_bit_depth(path: str) -> int:
    """A PNG's IHDR bit depth (Pillow reads 16-bit RGB as "RGB")."""
    with open(path, "rb") as f:
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
    """The loader's check of one file (:func:`retinafocal.data.checks.inspect_image`, which with
    ``full_decode`` decodes every pixel) and the ``converted_*`` kind of what the mapper does to
    it."""
    info = checks.inspect_image(path, full_decode=full_decode)
    if not info.readable:
        return info
    try:
        with Image.open(path) as im:
            mode, has_transparency = im.mode, "transparency" in im.info
        bit_depth = _png_bit_depth(path) if info.format == "PNG" else 8
    except Exception as e:  # noqa: BLE001 -- any failure to decode makes the file unreadable
        return ImageInfo(readable=False, reason=f"{type(e).__name__}: {e}")
    info.conversion = _conversion_kind(mode, bit_depth, has_transparency)
    return info


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


_VALIDATE_SIGNATURE = inspect.signature(validate_coco_json)


def verdict(report: ValidationReport) -> str:
    """One sentence saying what training does with the dataset of ``report``."""
    if report.has_fatal:
        fatal = report.kinds("fatal")
        count = sum(report.count(kind) for kind in fatal)
        return (
            f"FATAL: {count} problem(s) ({', '.join(fatal)}) must be fixed in the json before it "
            "can be used."
        )
    n = report.num_unreadable_images
    if n and not report.usable("skip"):
        return (
            f"{n} image(s) cannot be read, and no other image has a box to train on: fix "
            "them before the dataset can be used."
        )
    if n:
        return (
            f"{n} image(s) cannot be read: training and evaluation stop before they start "
            "unless DATALOADER.ON_UNREADABLE_IMAGE is 'skip', which leaves them out. Other "
            "problems are fixed on loading."
        )
    return "Usable: the problems listed (if any) are fixed on loading."


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
    json_file: str, image_root: str, **options: Any
) -> Tuple[ValidationReport, bool]:
    """:func:`validate_coco_json` with the same arguments, reusing a stored report of the same
    json, image folder and mode (see the module docstring). Reports with fatal problems are not
    stored: the json is about to change.

    Returns:
        (report, whether it came from the cache).
    """
    # Bound to validate_coco_json's own signature: its defaults decide the mode, and a wrong
    # argument fails here as it would there.
    call = _VALIDATE_SIGNATURE.bind(json_file, image_root, **options)
    call.apply_defaults()
    mode = "images={check_images},full={full_decode}".format(**call.arguments)
    path = os.path.join(cache_dir(), _cache_key(json_file, image_root, mode) + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            return report_from_dict(json.load(f)), True
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent, unreadable or from an incompatible version: check again
    report = validate_coco_json(*call.args, **call.kwargs)
    if not report.has_fatal:
        try:
            _store(path, report)
        except OSError as e:
            logger.warning(f"Report not cached ({e}); RETINAFOCAL_CACHE_DIR sets another folder.")
    return report, False


def _store(path: str, report: ValidationReport) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written to a temporary file and renamed, so that a concurrent run never reads half.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report_to_dict(report), f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
