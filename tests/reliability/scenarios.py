"""Datasets a user might bring, each with one problem of issue 13, and in-process
``train_net.py`` runs on them.

Every writer puts a COCO json and 64x48 images under ``root`` and returns ``[name, json_file,
image_root]`` with a fresh dataset name (DatasetCatalog is process-global). :data:`SCENARIOS`
lists the ones the "one verdict" test runs, with the problem kind the check must report.
"""
import importlib.util
import json
import os
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from retinafocal.data import ValidationReport

from ..engine.common import CONFIG_DIR, REPO_ROOT, run_train_net
from .broken_coco import HEIGHT, WIDTH, write_broken_coco

CONFIG = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")
TWO_CATEGORIES = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
GOOD_BOX = [10.0, 10.0, 24.0, 20.0]


def image(image_id, file_name: str) -> dict:
    return {"id": image_id, "file_name": file_name, "width": WIDTH, "height": HEIGHT}


def annotation(ann_id: int, image_id, bbox=GOOD_BOX, category_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "iscrowd": 0, "area": 100.0, **extra}  # fmt: skip


def write_dataset(
    root: str,
    images: Sequence[dict],
    annotations: Sequence[dict],
    categories: Sequence[dict] = TWO_CATEGORIES,
    *,
    broken_files: Sequence[str] = (),
) -> List[str]:
    """Write one noise image per distinct ``file_name`` (the ``broken_files`` as garbage bytes,
    or as a JPEG cut in half when their name starts with "truncated") and the json."""
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    rng = np.random.default_rng(0)
    for file_name in sorted({img["file_name"] for img in images}):
        path = os.path.join(image_root, file_name)
        pixels = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG")
        if file_name in broken_files:
            with open(path, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2] if file_name.startswith("truncated") else b"x" * 9)
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": list(images), "annotations": list(annotations),
                   "categories": list(categories)}, f)  # fmt: skip
    return [f"scenario_{uuid.uuid4().hex[:8]}", json_file, image_root]


def good(root: str, num_images: int = 4, *, categories=TWO_CATEGORIES) -> List[str]:
    """A dataset with nothing wrong: one box per image, classes alternating."""
    ids = [c["id"] for c in categories]
    numbers = range(1, num_images + 1)
    images = [image(i, f"img{i}.jpg") for i in numbers]
    annotations = [annotation(i, i, category_id=ids[i % len(ids)]) for i in numbers]
    return write_dataset(root, images, annotations, categories)


def truncated_image(root: str) -> List[str]:
    """Four images, one of them a JPEG cut in half (its header opens)."""
    images = [image(i, f"img{i}.jpg") for i in range(1, 4)] + [image(4, "truncated.jpg")]
    annotations = [annotation(i, i, category_id=1 + i % 2) for i in range(1, 5)]
    return write_dataset(root, images, annotations, broken_files=["truncated.jpg"])


def all_unreadable(root: str) -> List[str]:
    images = [image(i, f"img{i}.jpg") for i in range(1, 5)]
    annotations = [annotation(i, i) for i in range(1, 5)]
    names = [img["file_name"] for img in images]
    return write_dataset(root, images, annotations, broken_files=names)


def categories_1_5_90(root: str) -> List[str]:
    """Three categories with sparse ids: detectron2 maps them to classes 0, 1, 2."""
    categories = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}, {"id": 90, "name": "c"}]
    return good(root, categories=categories)


def no_annotations(root: str) -> List[str]:
    return write_dataset(root, [image(i, f"img{i}.jpg") for i in range(1, 5)], [])


def degenerate_boxes(root: str) -> List[str]:
    images = [image(i, f"img{i}.jpg") for i in range(1, 5)]
    boxes = [[5, 5, 0, 10], [5, 5, 10, -1], [200, 200, 10, 10], [0, 0, 0, 0]]
    return write_dataset(root, images, [annotation(i, i, b) for i, b in enumerate(boxes, 1)])


def mixed_image_ids(root: str) -> List[str]:
    ids = [1, "two", 3, 4]
    images = [image(i, f"img{k}.jpg") for k, i in enumerate(ids)]
    return write_dataset(root, images, [annotation(k, i) for k, i in enumerate(ids, 1)])


def string_image_ids(root: str) -> List[str]:
    ids = ["a", "b", "c", "d"]
    images = [image(i, f"img{k}.jpg") for k, i in enumerate(ids)]
    annotations = [annotation(k, i, category_id=1 + k % 2) for k, i in enumerate(ids, 1)]
    return write_dataset(root, images, annotations)


def same_file_two_ids(root: str) -> List[str]:
    """Image 2 is image 1's file again, with no annotation: it would train as background."""
    images = [image(1, "img1.jpg"), image(2, "img1.jpg"), image(3, "img3.jpg")]
    return write_dataset(root, images, [annotation(1, 1), annotation(2, 3, category_id=2)])


def invalid_segmentation(root: str) -> List[str]:
    """Every box comes with a 2-point polygon, which detectron2 rejects with its box."""
    images = [image(i, f"img{i}.jpg") for i in range(1, 5)]
    annotations = [annotation(i, i, category_id=1 + i % 2, segmentation=[[1, 2, 3, 4]])
                   for i in range(1, 5)]  # fmt: skip
    return write_dataset(root, images, annotations)


def ignore_flag(root: str) -> List[str]:
    """One annotation carries "ignore": 1, which detectron2's loader stops at (an assert)."""
    images = [image(i, f"img{i}.jpg") for i in range(1, 5)]
    annotations = [annotation(i, i, category_id=1 + i % 2, ignore=int(i == 3)) for i in range(1, 5)]
    return write_dataset(root, images, annotations)


def broken_coco(root: str) -> List[str]:
    """tests/reliability/broken_coco.py's dataset: every fixable defect, 4 unreadable images."""
    json_file, image_root, _ = write_broken_coco(root)
    return [f"broken_{uuid.uuid4().hex[:8]}", json_file, image_root]


#: name -> (writer, the problem kind the check reports or None, usable with "error", with "skip")
SCENARIOS: Dict[str, Tuple[Callable[[str], List[str]], Optional[str], bool, bool]] = {
    "broken_coco": (broken_coco, "unreadable_image", False, True),
    "truncated_image": (truncated_image, "unreadable_image", False, True),
    "all_unreadable": (all_unreadable, "unreadable_image", False, False),
    "no_annotations": (no_annotations, "no_usable_box", False, False),
    "degenerate_boxes": (degenerate_boxes, "no_usable_box", False, False),
    "mixed_image_ids": (mixed_image_ids, "mixed_id_types", False, False),
    "same_file_two_ids": (same_file_two_ids, "duplicate_file_name", False, False),
    "invalid_segmentation": (invalid_segmentation, "segmentation_invalid", True, True),
    "ignore_flag": (ignore_flag, "ignore_flag", False, False),
    "string_image_ids": (string_image_ids, None, True, True),
}


def tiny_opts(
    train: Sequence[str],
    output_dir: str,
    *,
    test: Optional[Sequence[str]] = None,
    num_classes: int = 2,
    iters: int = 2,
    **extra: str,
) -> List[str]:
    """``KEY VALUE`` overrides of the embedded yaml: ``train`` (and ``test``, evaluated after
    training when given) registered with DATASETS.COCO_JSON, 64x48 inputs, batch 2, CPU."""
    entries = [list(train)] + ([list(test)] if test is not None and test[0] != train[0] else [])
    opts = {
        "DATASETS.COCO_JSON": repr(entries),
        "DATASETS.TRAIN": repr((train[0],)),
        "DATASETS.TEST": repr((test[0],) if test is not None else ()),
        "INPUT.MIN_SIZE_TRAIN": f"({HEIGHT},)",
        "INPUT.MAX_SIZE_TRAIN": str(WIDTH),
        "INPUT.MIN_SIZE_TEST": str(HEIGHT),
        "INPUT.MAX_SIZE_TEST": str(WIDTH),
        "SOLVER.IMS_PER_BATCH": "2",
        "SOLVER.MAX_ITER": str(iters),
        "MODEL.RETINANET.NUM_CLASSES": str(num_classes),
        "MODEL.DEVICE": "cpu",
        "DATALOADER.NUM_WORKERS": "0",
        "OUTPUT_DIR": output_dir,
        **extra,
    }
    return [item for pair in opts.items() for item in pair]


def validate(json_file: str, image_root: str) -> ValidationReport:
    """What ``python tools/validate_dataset.py --json J --image-root R`` reports (full decode),
    from the tool's module, in this process."""
    path = os.path.join(REPO_ROOT, "tools", "dataset_inspection.py")
    spec = importlib.util.spec_from_file_location("dataset_inspection", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.validate_coco_json(json_file, image_root, full_decode=True, num_workers=2)


def train(opts: Sequence[str], *flags: str):
    """``python train_net.py --config-file <embedded yaml> <flags> <opts>``, in this process."""
    return run_train_net(["--config-file", CONFIG, *flags, *opts])
