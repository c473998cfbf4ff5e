"""Helpers of the paper-tooling tests: a tiny embedded dataset and a two-run grid on it."""
import functools
import os
import uuid
from typing import Dict, List

import retinafocal  # noqa: F401  (compat first)
from retinafocal.data.shapes import ShapesSpec
from paper.grid import Grid, Row, RunSpec
from paper.references import TABLE_1A, TABLE_1B

from ..engine import common as engine_common
from ..engine.common import REPO_ROOT, TINY_SIZE
from ..engine.common import EMBEDDED_YAML as EMBEDDED_CONFIG

TRAIN_NET = os.path.join(REPO_ROOT, "train_net.py")

#: 64 px images with a few large objects: enough for 2 iterations and an evaluation.
TINY_SPEC = ShapesSpec(image_size=64, min_objects=1, max_objects=3, min_object_size=14,
                       max_object_size=30)  # fmt: skip
assert TINY_SPEC.image_size == TINY_SIZE

#: A tiny embedded dataset of TINY_SPEC: ``tiny_shapes(root, num_train=4, num_val=2)``.
tiny_shapes = functools.partial(engine_common.tiny_shapes, spec=TINY_SPEC, prefix="paper_tiny")


def tiny_opts(data: Dict[str, List[str]], iters: int = 2) -> tuple:
    """Overrides that shrink the embedded recipe to a CPU smoke run on ``data``."""
    return (
        "MODEL.META_ARCHITECTURE", "FocalRetinaNet",
        *engine_common.yacs_tiny_data(data, iters),
        "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", str(iters + 1),
        # After 2 iterations every score is near the prior (0.01): keep them, so the
        # evaluation has detections and a finite AP.
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.001",
    )  # fmt: skip


def two_run_grid(data: Dict[str, List[str]], iters: int = 2) -> Grid:
    """FL (gamma 2, alpha .25) and alpha-balanced CE (alpha .5), with rows in Sec. 5.1 and
    Tables 1a/1b, and Figure 4 on the FL run."""
    base = tiny_opts(data, iters)
    fl = RunSpec("fl", EMBEDDED_CONFIG, base + (
        "MODEL.RETINAFOCAL.LOSS.NAME", "FocalLoss",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.25",
        "MODEL.RETINANET.FOCAL_LOSS_GAMMA", "2.0",
    ), max_iter=iters, description="focal loss")  # fmt: skip
    ce = RunSpec("ce", EMBEDDED_CONFIG, base + (
        "MODEL.RETINAFOCAL.LOSS.NAME", "BalancedCELoss",
        "MODEL.RETINANET.FOCAL_LOSS_ALPHA", "0.5",
    ), max_iter=iters, description="alpha-balanced CE")  # fmt: skip
    rows = [
        Row("init", "ce", "CE, prior init", {"prior": 0.01, "loss": "CE"}, TABLE_1A[0.5]),
        Row("init", "fl", "FL, prior init", {"prior": 0.01, "loss": "FL"}, TABLE_1B[2.0][1]),
        Row("1a", "ce", "alpha = 0.5", {"alpha": 0.5, "gamma": 0.0}, TABLE_1A[0.5]),
        Row("1b", "ce", "gamma = 0, alpha = 0.5", {"gamma": 0.0, "alpha": 0.5}, TABLE_1B[0.0][1]),
        Row("1b", "fl", "gamma = 2, alpha = 0.25", {"gamma": 2.0, "alpha": 0.25},
            TABLE_1B[2.0][1]),
    ]  # fmt: skip
    return Grid(name="tiny", runs=[fl, ce], rows=rows, loss_analysis_run="fl",
                notes={"1a": "one alpha"}, schedule="2 iterations on 64 px images")  # fmt: skip


def one_class_coco(root: str, num_images: int = 2) -> List[str]:
    """A COCO-format dataset written by hand: 64 px grey images with two squares each, all of
    category 1 ("a") out of two ("a", "b"). Returns ``[name, json_file, image_root]``."""
    import json

    from PIL import Image, ImageDraw

    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        img = Image.new("RGB", (TINY_SIZE, TINY_SIZE), (60, 60, 60))
        draw = ImageDraw.Draw(img)
        for x, y, side in ((4 + 2 * i, 6, 20), (36, 30 + i, 24)):
            draw.rectangle([x, y, x + side - 1, y + side - 1], fill=(220, 40, 40))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
        file_name = f"img{i}.png"
        img.save(os.path.join(image_root, file_name))
        images.append({"id": i + 1, "file_name": file_name, "width": TINY_SIZE,
                       "height": TINY_SIZE})  # fmt: skip
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, f)
    return [f"paper_one_class_{uuid.uuid4().hex[:8]}", json_file, image_root]
