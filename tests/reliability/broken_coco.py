"""A small COCO dataset with one or more instances of every defect the validator knows.

``write_broken_coco(root)`` writes ``root/images/*`` and ``root/broken.json`` and returns the
expected count of each problem kind, so that tests compare the validator against counts known by
construction. With ``fatal=True`` the json also holds the defects that stop loading (duplicate
ids, unknown category ids). ``write_malformed_json`` writes a json with a syntax error at a known
line and column.
"""
import json
import os
import shutil
import tempfile
import unittest
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from retinafocal.data import loading

WIDTH, HEIGHT = 64, 48


class FreshChecksTest(unittest.TestCase):
    """Base of the tests that load datasets: each test gets its own folder (``self.root``) and
    starts and ends with an empty cache of dataset reports, so that every check runs again."""

    tmp_prefix = "retinafocal_"

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix=self.tmp_prefix)
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        loading._REPORTS.clear()
        self.addCleanup(loading._REPORTS.clear)


def _pattern(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _write_images(image_dir: str) -> None:
    os.makedirs(image_dir, exist_ok=True)
    Image.fromarray(_pattern(HEIGHT, WIDTH, 3, 1)).save(os.path.join(image_dir, "good.jpg"))
    Image.fromarray(_pattern(HEIGHT, WIDTH, 3, 2)).save(os.path.join(image_dir, "good2.png"))
    Image.fromarray(_pattern(HEIGHT, WIDTH, 1, 3), mode="L").save(
        os.path.join(image_dir, "gray.png")
    )
    Image.fromarray(_pattern(HEIGHT, WIDTH, 4, 4), mode="RGBA").save(
        os.path.join(image_dir, "rgba.png")
    )
    gray16 = (np.arange(HEIGHT * WIDTH, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 21) + 1000
    Image.fromarray(gray16).save(os.path.join(image_dir, "gray16.png"))  # mode I;16
    with open(os.path.join(image_dir, "corrupt.jpg"), "wb") as f:
        f.write(b"this is not an image, although its name says so\n" * 4)
    with open(os.path.join(image_dir, "good.jpg"), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(image_dir, "truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    Image.fromarray(_pattern(HEIGHT, WIDTH, 3, 5)).save(os.path.join(image_dir, "background.png"))
    Image.fromarray(_pattern(32, 32, 3, 6)).save(os.path.join(image_dir, "small.png"))


def _image(image_id: int, file_name: str) -> dict:
    return {"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT}


def _ann(ann_id: int, image_id: int, bbox, category_id: int = 1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "iscrowd": 0, "area": 100.0}


def write_broken_coco(root: str, *, fatal: bool = False) -> Tuple[str, str, Dict[str, int]]:
    """Write the dataset under ``root``; returns (json_file, image_root, expected counts)."""
    image_root = os.path.join(root, "images")
    _write_images(image_root)
    images = [
        _image(1, "good.jpg"),
        _image(2, "gray.png"),
        _image(3, "rgba.png"),
        _image(4, "gray16.png"),
        _image(5, "does_not_exist.jpg"),
        _image(6, "corrupt.jpg"),
        _image(7, "truncated.jpg"),
        _image(8, "background.png"),
        _image(9, "small.png"),  # the file is 32x32: size mismatch
        _image(10, "good2.png"),
    ]
    good_box = [10.0, 10.0, 20.0, 20.0]
    annotations = [
        _ann(101, 1, good_box),
        _ann(102, 1, [50.0, 40.0, 30.0, 20.0]),  # clipped to [50, 40, 14, 8]
        _ann(103, 1, [5.0, 5.0, -3.0, 10.0]),  # negative width
        _ann(104, 1, [5.0, 5.0, 10.0, 0.0]),  # zero height
        _ann(105, 1, [100.0, 100.0, 10.0, 10.0]),  # entirely outside
        _ann(106, 1, [1.0, 2.0, 3.0]),  # 3 numbers
        _ann(107, 1, []),  # empty list: detectron2's load_coco_json raises on it
        _ann(108, 999, good_box),  # no image 999
        _ann(109, 10, [-4.0, 0.0, 10.0, 10.0]),  # clipped to [0, 0, 6, 10]
        _ann(110, 10, [0.0, 0.0, 0.0, 0.0]),  # zero size
    ]
    # Images 2..7 and 9 have one good box each; 8 has none and stays background.
    for image_id in (2, 3, 4, 5, 6, 7, 9):
        annotations.append(_ann(200 + image_id, image_id, good_box, category_id=2))
    categories = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    expected = {
        "missing_file": 1,
        "unreadable_image": 2,
        "size_mismatch": 1,
        "converted_grayscale": 1,
        "converted_alpha": 1,
        "converted_16bit": 1,
        "box_clipped": 2,
        "box_empty": 3,
        "box_outside": 1,
        "box_invalid": 2,
        "orphan_annotation": 1,
        "background_image": 1,
    }
    if fatal:
        images.append(_image(10, "good.jpg"))  # repeats id 10
        annotations.append(_ann(101, 8, good_box))  # repeats id 101
        annotations.append(_ann(301, 1, good_box, category_id=7))  # no category 7
        annotations.append(_ann(302, 1, good_box, category_id=8))  # no category 8
        expected.update(duplicate_image_id=1, duplicate_annotation_id=1, unknown_category_id=2)
    json_file = os.path.join(root, "broken_fatal.json" if fatal else "broken.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root, expected


def write_malformed_json(root: str) -> Tuple[str, int, int]:
    """A json lacking the ':' after "categories" (line 3, where json reports column 16, the
    first character after the key that is not a space); returns (path, line, column)."""
    path = os.path.join(root, "malformed.json")
    with open(path, "w") as f:
        f.write('{\n  "images": [],\n  "categories" [{"id": 1, "name": "a"}],\n'
                '  "annotations": []\n}\n')
    return path, 3, 16
