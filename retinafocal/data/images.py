"""What an image file holds, judged without decoding it when that is safe.

:func:`inspect_image` is the check training runs on every image before it starts: the header
opens, its size is read after the EXIF orientation that detectron2's ``read_image`` applies,
and JPEG / PNG files must end with their end marker (found truncated without decoding; a file
without it is decoded to confirm). Other formats are decoded; ``full_decode=True`` decodes all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Optional

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageInfo", "read_image_header", "inspect_image"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MODES_16BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_MODES_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_MODES_GRAY = ("1", "L")


@dataclass
class ImageInfo:
    """One file: whether it opens (else ``reason``), its size as ``read_image`` returns it,
    Pillow's format, mode and transparency, and the mapper's ``converted_*`` kind, if any."""

    readable: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    mode: str = ""
    has_transparency: bool = False
    conversion: Optional[str] = None


def _exif_orientation(im: Image.Image) -> Optional[int]:
    """The EXIF orientation tag, read without decoding pixels."""
    try:
        if im.format == "PNG":
            # PngImageFile.getexif() decodes the whole image: use only what the header held.
            exif = Image.Exif()
            if "exif" in im.info:
                exif.load(im.info["exif"])
        else:
            exif = im.getexif()
        return exif.get(0x0112)
    except Exception:  # noqa: BLE001 -- broken EXIF blocks do not stop detectron2's read_image
        return None


def read_image_header(path: str) -> ImageInfo:
    """Open one image file's header only (no pixels; truncation is not seen)."""
    try:
        with Image.open(path) as im:
            info = ImageInfo(readable=True, format=im.format or "", mode=im.mode)
            info.width, info.height = im.size
            info.has_transparency = "transparency" in im.info
            orientation = _exif_orientation(im)
    except UnidentifiedImageError:
        return ImageInfo(readable=False, reason="not an image in any format Pillow knows")
    except Exception as e:  # noqa: BLE001 -- any failure to open makes the file unreadable
        return ImageInfo(readable=False, reason=f"{type(e).__name__}: {e}")
    if orientation in (5, 6, 7, 8):  # transposed / rotated by 90 degrees: width and height swap
        info.width, info.height = info.height, info.width
    return info


def _has_end_marker(f: IO[bytes], image_format: str) -> bool:
    """Whether a JPEG / PNG file ends with its end marker."""
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 1024))
    tail = f.read()
    if image_format == "PNG":
        return b"IEND" in tail[-64:]
    # Some writers pad JPEG files with zero bytes after the end-of-image marker.
    return tail.rstrip(b"\x00").endswith(b"\xff\xd9")


def _png_bit_depth(f: IO[bytes]) -> int:
    """A PNG's IHDR bit depth (Pillow reads 16-bit RGB as "RGB")."""
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
    """Whether and how the training data loader can read the local file ``path``; with
    ``full_decode``, all pixels are decoded (see the module docstring)."""
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
    info.conversion = _conversion_kind(info.mode, bit_depth, info.has_transparency)
    return info
