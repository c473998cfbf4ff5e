"""The embedded detection dataset: coloured shapes on textured backgrounds, in COCO format.

Many small objects on a busy background make most anchors easy background (the imbalance the
focal loss addresses), yet a small network learns it in minutes on a CPU. Image ``i`` of a split
is drawn from its own generator seeded by ``(seed, split, i)``, so a split is the prefix of any
larger one. Layout under ``root``: ``{split}/000000.png ...`` and
``annotations/instances_{split}.json``, written last: its presence means the split is complete."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_iou
from tqdm import tqdm

from ..checkpoint import atomic_write

__all__ = [
    "SHAPE_CLASSES",
    "ShapesSpec",
    "DEFAULT_SPLITS",
    "draw_shapes_image",
    "shape_outline",
    "textured_background",
    "generate_shapes_split",
    "ensure_shapes_split",
    "shapes_json_path",
]

#: Category names: ``SHAPE_CLASSES[i]`` has COCO category id ``i + 1``; only its outline tells it.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

# Object colours (RGB): saturated, yet faint in some backgrounds, so colour alone is no cue.
_PALETTE = np.array(
    [
        [230, 40, 40],
        [40, 200, 60],
        [50, 90, 240],
        [240, 220, 40],
        [220, 60, 220],
        [40, 220, 220],
        [250, 140, 30],
        [245, 245, 245],
    ],
    dtype=np.float32,
)

_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}  # one random stream per split for a seed


@dataclass(frozen=True)
class ShapesSpec:
    """What one split looks like (every field is in a generated split's cache key); sizes in pixels,
    ranges inclusive; ``max_overlap``: the largest IoU a new box may have with an earlier one."""

    image_size: int = 128
    min_objects: int = 3
    max_objects: int = 10
    min_object_size: int = 10
    max_object_size: int = 36
    max_overlap: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for ok, rule in [
            (self.image_size >= 16, "image_size >= 16"),
            (1 <= self.min_objects <= self.max_objects, "1 <= min_objects <= max_objects"),
            (
                4 <= self.min_object_size <= self.max_object_size <= self.image_size,
                "4 <= min_object_size <= max_object_size <= image_size",
            ),
        ]:
            if not ok:
                raise ValueError(f"ShapesSpec needs {rule}, got {self}")


#: The registered splits: name suffix -> (number of images, spec).
DEFAULT_SPLITS: Dict[str, Tuple[int, ShapesSpec]] = {
    "train": (2000, ShapesSpec(seed=0)),
    "val": (200, ShapesSpec(seed=0)),
}


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float32 image in [0, 255]: a dim random tint, low-frequency blotches,
    faint stripes in one direction and pixel noise, so that background anchors are not flat."""
    tint = rng.uniform(20, 110, size=3).astype(np.float32)
    cells = int(rng.integers(3, 7))
    coarse = rng.uniform(-35, 35, size=(cells, cells, 3)).astype(np.float32)
    coarse_img = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
    blotches = np.asarray(coarse_img.resize((size, size), Image.BILINEAR), np.float32) - 128
    img = tint + blotches
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    img += stripes[..., None] * rng.uniform(4, 14)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255)


def shape_outline(kind: str, x0: int, y0: int, side: int) -> List[Tuple[float, float]]:
    """Polygon filling exactly columns ``[x0, x0 + side)`` and rows ``[y0, y0 + side)`` (PIL fills
    pixel centres, so the far edge is at ``x0 + side - 1``)."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "triangle":
        return [(xm, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(xm, y0), (x1, ym), (xm, y1), (x0, ym)]
    if kind == "cross":
        t = side / 6  # half the bar thickness: bars are one third of the side
        return [
            (xm - t, y0), (xm + t, y0), (xm + t, ym - t), (x1, ym - t),
            (x1, ym + t), (xm + t, ym + t), (xm + t, y1), (xm - t, y1),
            (xm - t, ym + t), (x0, ym + t), (x0, ym - t), (xm - t, ym - t),
        ]  # fmt: skip
    raise ValueError(f"no polygon outline for shape {kind!r}")


def draw_shapes_image(
    spec: ShapesSpec, rng: np.random.Generator
) -> Tuple[np.ndarray, List[Tuple[int, List[float]]]]:
    """Draw one image: an (H, W, 3) uint8 RGB array, H = W = ``spec.image_size``, and per object
    ``(index into SHAPE_CLASSES, [x, y, w, h])``, its box (absolute XYWH) enclosing its pixels."""
    size = spec.image_size
    canvas = Image.fromarray(textured_background(rng, size).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    wanted = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    placed = torch.zeros((0, 4), dtype=torch.float32)  # XYXY boxes of the objects drawn so far
    objects: List[Tuple[int, List[float]]] = []
    # Rejection sampling: crowded images may end with fewer objects than wanted.
    for _ in range(wanted * 20):
        if len(objects) == wanted:
            break
        side = int(rng.integers(spec.min_object_size, spec.max_object_size + 1))
        x0, y0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
        box = torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32)
        if len(placed) and box_iou(box, placed).max() > spec.max_overlap:
            continue
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        # Jitter the palette colour so that no class or colour is a single RGB value.
        color = np.clip(_PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 12, 3), 0, 255)
        fill = tuple(int(c) for c in color)
        kind = SHAPE_CLASSES[cls]
        if kind == "circle":
            draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=fill)
        else:
            draw.polygon(shape_outline(kind, x0, y0, side), fill=fill)
        placed = torch.cat([placed, box])
        objects.append((cls, [float(x0), float(y0), float(side), float(side)]))
    return np.asarray(canvas), objects


def shapes_json_path(root: str, split: str) -> str:
    """Path of the COCO json of ``split`` under ``root``."""
    return os.path.join(root, "annotations", f"instances_{split}.json")


def generate_shapes_split(
    root: str, split: str, num_images: int, spec: ShapesSpec, *, progress: bool = True
) -> str:
    """Write ``split`` (``num_images`` images, COCO json) under ``root``; returns the json path."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    image_dir = os.path.join(root, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)

    images: List[dict] = []
    annotations: List[dict] = []
    desc = f"generating shapes/{split}"
    for i in tqdm(range(num_images), desc, unit="img", disable=not progress):
        rng = np.random.default_rng([spec.seed, _SPLIT_STREAM.get(split, 3), i])
        pixels, objects = draw_shapes_image(spec, rng)
        file_name = f"{i:06d}.png"
        # compress_level=1: these textures compress poorly anyway; speed matters more.
        Image.fromarray(pixels).save(os.path.join(image_dir, file_name), compress_level=1)
        size = spec.image_size
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        for cls, bbox in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": "retinafocal embedded shapes dataset",
            "split": split,
            "num_images": num_images,
            "spec": asdict(spec),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    json_path = shapes_json_path(root, split)
    atomic_write(json_path, lambda f: f.write(json.dumps(coco).encode()))
    return json_path


def ensure_shapes_split(
    root: str, split: str, num_images: int, spec: ShapesSpec, *, progress: bool = True
) -> str:
    """The json path of ``split`` under ``root``, generating it if missing or stale (size, spec)."""
    json_path = shapes_json_path(root, split)
    if os.path.isfile(json_path):
        with open(json_path) as f:
            info = json.load(f).get("info", {})
        if info.get("num_images") == num_images and info.get("spec") == asdict(spec):
            return json_path
    return generate_shapes_split(root, split, num_images, spec, progress=progress)

