"""Whether an image file can be read, judged without decoding it when that is safe."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageInfo", "inspect_image"]


@dataclass
class ImageInfo:
    """One file: whether it opens (else ``reason``), its size as ``read_image`` returns it, its
    Pillow format, and the ``converted_*`` kind of what the mapper does to it, where the caller
    looked (``tools/dataset_inspection.py`` does; the loader's check does not)."""

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
            if "exif" in im.info:
                exif.load(im.info["exif"])
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
    """Whether the training data loader can read the local file ``path``, as checked on every
    image before training starts: the header opens, its size is read after the EXIF orientation
    that detectron2's ``read_image`` applies, and a JPEG / PNG file must end with its end marker
    (found truncated without decoding); a file without one, or of another format, is decoded, as
    is every file with ``full_decode`` (which also finds corrupt data inside a file)."""
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
