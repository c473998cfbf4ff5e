"""A dataset in the paper's imbalance regime: few small objects of many fine-grained classes.

The embedded shapes set (:mod:`retinafocal.data.shapes`) has 5 classes and 3-10 objects per
image: about 450 binary classification terms per positive anchor, against about 1e5 on COCO. This
set keeps its 128 px images, backgrounds, object sizes and so the recipe's anchor layout, but
draws 1-3 objects per image and gives each a shape (5), a colour (4) and a fill pattern (4):
80 classes, as on COCO, and about 24,000 terms per positive (measured by :mod:`paper.imbalance`).

The same images are labelled three ways, so that only the number of classes, and with it the
number of negative terms, changes between them:

* 5 classes: the shape alone;
* 20 classes: shape x colour;
* 80 classes: shape x colour x pattern.

Output is determined by the spec: image ``i`` of a split comes from its own random generator,
seeded by ``(seed, split, i)``. Layout under ``root``::

    root/<split>/000000.png ...
    root/annotations/instances_<split>_<K>c.json   # K = 5, 20, 80; written last
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from retinafocal.data.shapes import SHAPE_CLASSES, ShapesSpec, shape_outline, textured_background

__all__ = [
    "COLOURS",
    "PATTERNS",
    "LABELINGS",
    "SPARSE_SPEC",
    "SparseObject",
    "category_names",
    "category_index",
    "draw_sparse_image",
    "sparse_json_path",
    "generate_sparse_split",
    "ensure_sparse_split",
]

#: Object colours (RGB), far apart in hue so that colour is learnable at 12 px.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (50, 200, 70),
    "blue": (60, 100, 240),
    "yellow": (235, 215, 50),
}

#: Fill patterns. Stripes and checks alternate the colour with a dark version of it, in bands a
#: sixth of the object's side wide, so a pattern looks the same at every object size.
PATTERNS: Tuple[str, ...] = ("solid", "hstripes", "vstripes", "checks")

#: Number of classes -> the attributes that make up a class.
LABELINGS: Dict[int, Tuple[str, ...]] = {
    5: ("shape",),
    20: ("shape", "colour"),
    80: ("shape", "colour", "pattern"),
}

#: The split specification: the embedded set's image and object sizes, 1-3 objects per image.
SPARSE_SPEC = ShapesSpec(min_objects=1, max_objects=3, min_object_size=12, max_object_size=32)

# Bump when drawing changes: it is part of the dataset's directory name, so runs on an older
# version are not reused.
GENERATOR_VERSION = 1

_SPLIT_STREAM = {"train": 10, "val": 11}

#: One object: (shape index, colour index, pattern index, [x, y, w, h]).
SparseObject = Tuple[int, int, int, List[float]]


def category_names(num_classes: int) -> List[str]:
    """Names of the classes of a labelling, in category-id order ("red hstripes circle")."""
    if num_classes not in LABELINGS:
        raise ValueError(f"no labelling with {num_classes} classes; choose one of "
                         f"{sorted(LABELINGS)}")  # fmt: skip
    attrs = LABELINGS[num_classes]
    colours = list(COLOURS) if "colour" in attrs else [""]
    patterns = list(PATTERNS) if "pattern" in attrs else [""]
    return [" ".join(p for p in (c, f, s) if p) for s in SHAPE_CLASSES for c in colours
            for f in patterns]  # fmt: skip


def category_index(num_classes: int, shape: int, colour: int, pattern: int) -> int:
    """The 0-based class of an object under the labelling with ``num_classes`` classes, in the
    order of :func:`category_names`."""
    attrs = LABELINGS[num_classes]
    index = shape
    if "colour" in attrs:
        index = index * len(COLOURS) + colour
    if "pattern" in attrs:
        index = index * len(PATTERNS) + pattern
    return index


def _pattern_tile(pattern: str, colour: np.ndarray, side: int) -> np.ndarray:
    """(side, side, 3) float32 fill of an object."""
    yy, xx = np.mgrid[0:side, 0:side]
    band = max(2, side // 6)
    if pattern == "solid":
        light = np.ones((side, side), dtype=bool)
    elif pattern == "hstripes":
        light = (yy // band) % 2 == 0
    elif pattern == "vstripes":
        light = (xx // band) % 2 == 0
    elif pattern == "checks":
        light = (yy // band + xx // band) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.where(light[..., None], colour, 0.3 * colour).astype(np.float32)


def _overlaps(box: np.ndarray, boxes: List[np.ndarray], max_iou: float) -> bool:
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        inter = max(iw, 0.0) * max(ih, 0.0)
        union = (box[2] - box[0]) * (box[3] - box[1]) + (other[2] - other[0]) * (
            other[3] - other[1]) - inter  # fmt: skip
        if inter / union > max_iou:
            return True
    return False


def draw_sparse_image(spec: ShapesSpec, rng: np.random.Generator
                      ) -> Tuple[np.ndarray, List[SparseObject]]:  # fmt: skip
    """Draw one image of the set.

    Returns:
        image: (H, W, 3) uint8 RGB, H = W = ``spec.image_size``.
        objects: ``(shape, colour, pattern, [x, y, w, h])`` per object; the indices point into
            :data:`SHAPE_CLASSES`, :data:`COLOURS` and :data:`PATTERNS`, the box (COCO XYWH,
            pixels) encloses exactly the object's pixels.
    """
    size = spec.image_size
    canvas = textured_background(rng, size)
    wanted = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    boxes: List[np.ndarray] = []
    objects: List[SparseObject] = []
    colours = np.array(list(COLOURS.values()), dtype=np.float32)
    attempts = 0
    # Rejection sampling of positions; a crowded image may keep fewer objects than wanted.
    while len(objects) < wanted and attempts < 20 * wanted:
        attempts += 1
        side = int(rng.integers(spec.min_object_size, spec.max_object_size + 1))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        box = np.array([x0, y0, x0 + side, y0 + side], dtype=np.float64)
        if _overlaps(box, boxes, spec.max_overlap):
            continue
        shape, colour, pattern = (int(rng.integers(n)) for n in
                                  (len(SHAPE_CLASSES), len(COLOURS), len(PATTERNS)))  # fmt: skip
        jittered = np.clip(colours[colour] + rng.normal(0, 10, 3), 0, 255)
        mask_img = Image.new("L", (side, side), 0)
        kind = SHAPE_CLASSES[shape]
        if kind == "circle":
            ImageDraw.Draw(mask_img).ellipse([0, 0, side - 1, side - 1], fill=1)
        else:
            ImageDraw.Draw(mask_img).polygon(shape_outline(kind, 0, 0, side), fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        region = canvas[y0 : y0 + side, x0 : x0 + side]
        region[mask] = _pattern_tile(PATTERNS[pattern], jittered, side)[mask]
        boxes.append(box)
        objects.append((shape, colour, pattern, [float(x0), float(y0), float(side), float(side)]))
    return np.clip(canvas, 0, 255).astype(np.uint8), objects


def sparse_json_path(root: str, split: str, num_classes: int) -> str:
    """Path of the COCO json of ``split`` labelled with ``num_classes`` classes."""
    return os.path.join(root, "annotations", f"instances_{split}_{num_classes}c.json")


def _info(split: str, num_images: int, spec: ShapesSpec, num_classes: int) -> Dict:
    return {"description": "retinafocal paper-regime sparse shapes", "split": split,
            "num_images": num_images, "num_classes": num_classes, "spec": asdict(spec),
            "generator_version": GENERATOR_VERSION}  # fmt: skip


def generate_sparse_split(root: str, split: str, num_images: int, spec: ShapesSpec = SPARSE_SPEC,
                          *, progress: bool = False) -> Dict[int, str]:  # fmt: skip
    """Write ``num_images`` images of ``split`` under ``root`` and one COCO json per labelling.

    The jsons are written last, each atomically: a split whose jsons exist is complete.

    Returns:
        number of classes -> json path.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images: List[dict] = []
    drawn: List[Tuple[int, SparseObject]] = []
    indices: Sequence[int] = range(num_images)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc=f"generating sparse shapes/{split}", unit="img")
    for i in indices:
        pixels, objects = draw_sparse_image(spec, np.random.default_rng(
            [spec.seed, _SPLIT_STREAM[split], i]))  # fmt: skip
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=1)
        images.append({"id": i + 1, "file_name": file_name, "height": spec.image_size,
                       "width": spec.image_size})  # fmt: skip
        drawn.extend((i + 1, obj) for obj in objects)
    paths = {}
    for num_classes in LABELINGS:
        annotations = [
            {"id": k + 1, "image_id": image_id, "bbox": bbox, "area": bbox[2] * bbox[3],
             "iscrowd": 0,
             "category_id": category_index(num_classes, shape, colour, pattern) + 1}
            for k, (image_id, (shape, colour, pattern, bbox)) in enumerate(drawn)
        ]  # fmt: skip
        coco = {
            "info": _info(split, num_images, spec, num_classes),
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": name, "supercategory": "shape"}
                           for c, name in enumerate(category_names(num_classes))],
        }  # fmt: skip
        path = sparse_json_path(root, split, num_classes)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, path)
        paths[num_classes] = path
    return paths


def _complete(root: str, split: str, num_images: int, spec: ShapesSpec) -> bool:
    for num_classes in LABELINGS:
        path = sparse_json_path(root, split, num_classes)
        if not os.path.isfile(path):
            return False
        with open(path) as f:
            if json.load(f).get("info") != _info(split, num_images, spec, num_classes):
                return False
    return True


def ensure_sparse_split(root: str, split: str, num_images: int, spec: ShapesSpec = SPARSE_SPEC,
                        *, progress: bool = False) -> Dict[int, str]:  # fmt: skip
    """Like :func:`generate_sparse_split`, but only when the split is missing or was made with
    another size, spec or generator version."""
    if not _complete(root, split, num_images, spec):
        return generate_sparse_split(root, split, num_images, spec, progress=progress)
    return {k: sparse_json_path(root, split, k) for k in LABELINGS}
