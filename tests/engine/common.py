"""Helpers of the engine tests: tiny datasets and in-process ``train_net.py`` runs."""
import importlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw

import retinafocal  # noqa: F401  (compat first)
from detectron2.config import CfgNode, get_cfg
from retinafocal.config import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides
from retinafocal.data.shapes import ShapesSpec, generate_shapes_split

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")
EMBEDDED_YAML = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")

#: Tiny images and few, large objects: enough for 2 iterations and an evaluation.
TINY_SPEC = ShapesSpec(
    image_size=64, min_objects=1, max_objects=3, min_object_size=12, max_object_size=28
)
TINY_SIZE = 64


def train_net():
    """The repository's ``train_net.py`` as a module."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    return importlib.import_module("train_net")


def run_train_net(argv: Sequence[str]):
    """Run ``python train_net.py <argv>`` in this process (no launch: one process, no GPU);
    returns what ``main`` returns (the evaluation results).

    Each run's ``default_setup`` adds log handlers for its output directory; they are removed
    afterwards, or every later run in the process would write each line once per earlier run.
    """
    module = train_net()

    loggers = [logging.getLogger(name) for name in ("detectron2", "fvcore", "retinafocal")]
    before = {logger.name: list(logger.handlers) for logger in loggers}
    try:
        return module.main(module.argument_parser().parse_args(list(argv)))
    finally:
        for logger in loggers:
            for handler in [h for h in logger.handlers if h not in before[logger.name]]:
                logger.removeHandler(handler)
                handler.close()


def embedded_yacs_cfg(opts: Sequence[str] = ()) -> CfgNode:
    """The embedded ``.yaml`` recipe as ``train_net.py`` loads it, with ``KEY VALUE`` ``opts``."""
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, EMBEDDED_YAML)
    merge_yacs_overrides(cfg, list(opts))
    return cfg


def tiny_shapes(
    root: str,
    num_train: int = 4,
    num_val: int = 2,
    *,
    spec: ShapesSpec = TINY_SPEC,
    prefix: str = "tiny_shapes",
) -> Dict[str, List[str]]:
    """Generate a tiny embedded dataset of ``spec`` under ``root``; returns ``{"train": [name,
    json, images], "val": [...]}`` with fresh dataset names (DatasetCatalog is process-global)."""
    tag = uuid.uuid4().hex[:8]
    out = {}
    for split, n in (("train", num_train), ("val", num_val)):
        json_file = generate_shapes_split(root, split, n, spec, progress=False)
        out[split] = [f"{prefix}_{split}_{tag}", json_file, os.path.join(root, split)]
    return out


class TinyShapesFixture:
    """Mixin of a ``unittest.TestCase``: one tiny dataset (``cls.data``, from :func:`tiny_shapes`)
    in a fresh folder (``cls._tmp``) for all the tests of the class, removed after them."""

    tmp_prefix = "rf_engine_"
    num_val = 2

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._tmp = tempfile.mkdtemp(prefix=cls.tmp_prefix)
        cls.data = tiny_shapes(os.path.join(cls._tmp, "data"), num_val=cls.num_val)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls._tmp, ignore_errors=True)
        super().tearDownClass()


def write_coco_json(root: str, num_images: int = 3) -> List[str]:
    """Write a COCO-format dataset by hand: 64 px images with one or two filled rectangles of
    two classes ("red", "blue"). Returns ``[name, json_file, image_root]``."""
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(num_images):
        img = Image.new("RGB", (TINY_SIZE, TINY_SIZE), (30, 30, 30))
        draw = ImageDraw.Draw(img)
        for k in range(1 + i % 2):
            x, y = int(rng.integers(0, 30)), int(rng.integers(0, 30))
            w, h = int(rng.integers(10, 30)), int(rng.integers(10, 30))
            cat = 1 + k
            color = (220, 40, 40) if cat == 1 else (40, 40, 220)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=color)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        file_name = f"img{i}.jpg"
        img.save(os.path.join(image_root, file_name))
        images.append(
            {"id": i + 1, "file_name": file_name, "width": TINY_SIZE, "height": TINY_SIZE}
        )
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return [f"handwritten_{uuid.uuid4().hex[:8]}", json_file, image_root]


def yacs_tiny_data(data: Dict[str, List[str]], iters: int) -> List[str]:
    """``KEY VALUE`` overrides that train ``iters`` iterations of batch 2 on ``data`` (from
    :func:`tiny_shapes`) at its image size, and evaluate on its val split."""
    return [
        "DATASETS.COCO_JSON", repr([data["train"], data["val"]]),
        "DATASETS.TRAIN", repr((data["train"][0],)),
        "DATASETS.TEST", repr((data["val"][0],)),
        "INPUT.MIN_SIZE_TRAIN", f"({TINY_SIZE},)",
        "INPUT.MAX_SIZE_TRAIN", str(TINY_SIZE),
        "INPUT.MIN_SIZE_TEST", str(TINY_SIZE),
        "INPUT.MAX_SIZE_TEST", str(TINY_SIZE),
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(iters),
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip


def yacs_tiny_overrides(
    data: Dict[str, List[str]], output_dir: str, *, iters: int = 2, num_classes: int = 5
) -> List[str]:
    """``KEY VALUE`` overrides that shrink any yacs config to a CPU smoke run on ``data``."""
    return yacs_tiny_data(data, iters) + [
        # No ImageNet weights here: a deep ResNet with FrozenBN at random init overflows, so the
        # smoke run trains its BatchNorm instead.
        "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.DEVICE", "cpu",
        "MODEL.RETINANET.NUM_CLASSES", str(num_classes),
        "OUTPUT_DIR", output_dir,
    ]  # fmt: skip


def lazy_tiny_overrides(
    data: Dict[str, List[str]], output_dir: str, *, iters: int = 2, num_classes: int = 5
) -> List[str]:
    """``key=value`` overrides that shrink any LazyConfig to a CPU smoke run on ``data``."""
    return [
        f"datasets.coco_json={[data['train'], data['val']]!r}",
        f"dataloader.train.dataset.names={data['train'][0]}",
        f"dataloader.test.dataset.names={data['val'][0]}",
        f"dataloader.train.mapper.augmentations.0.short_edge_length=[{TINY_SIZE}]",
        f"dataloader.train.mapper.augmentations.0.max_size={TINY_SIZE}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={TINY_SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={TINY_SIZE}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"model.num_classes={num_classes}",
        f"train.max_iter={iters}",
        "train.device=cpu",
        "train.init_checkpoint=''",
        "model.backbone.bottom_up.stem.norm=BN",
        "model.backbone.bottom_up.stages.norm=BN",
        f"train.output_dir='{output_dir}'",
    ]


def all_configs() -> List[str]:
    """Every trainable config under configs/ (leaves and bases; not the common/ fragments)."""
    found = []
    for dirpath, _, files in os.walk(CONFIG_DIR):
        if os.path.relpath(dirpath, CONFIG_DIR).split(os.sep)[0] == "common":
            continue
        found += [os.path.join(dirpath, f) for f in files if f.endswith((".yaml", ".py"))]
    return sorted(found)
