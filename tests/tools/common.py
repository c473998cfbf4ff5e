"""Tiny configs, generated images and script loading shared by the tools tests."""
import importlib.util
import json
import os
import sys
from typing import Dict, List, Sequence

import numpy as np

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
BASE_CONFIG = os.path.join(REPO, "configs", "Base-RetinaNet.yaml")

#: Category ids of the tiny dataset written by :func:`write_tiny_dataset`: not 1..K, so a
#: category mapping that is skipped or wrong shows.
CATEGORY_IDS = (3, 7, 11)
CATEGORY_NAMES = ("ring", "bar", "dot")


def write_tiny_config(
    path: str,
    *,
    prior_prob: float = 0.01,
    test_size: int = 64,
    detections_per_image: int = 5,
    coco_json: str = "",
    image_root: str = "",
    weights: str = "",
) -> str:
    """A yacs config of a narrow R18-FPN FocalRetinaNet with 3 classes, built in a fraction of
    a second. ``prior_prob`` 0.6 makes every anchor score ~0.6 at initialisation, so a
    threshold of 0.5 keeps the top ``detections_per_image`` per image and one of 0.9 none."""
    lines = [
        f'_BASE_: "{BASE_CONFIG}"',
        "MODEL:",
        '  DEVICE: "cpu"',
        f'  WEIGHTS: "{weights}"',
        "  RESNETS: {DEPTH: 18, RES2_OUT_CHANNELS: 64}",
        "  FPN: {OUT_CHANNELS: 32}",
        f"  RETINANET: {{NUM_CLASSES: 3, PRIOR_PROB: {prior_prob}}}",
        "  RETINAFOCAL: {DIAGNOSTICS_PERIOD: 0}",
        f"INPUT: {{MIN_SIZE_TEST: {test_size}, MAX_SIZE_TEST: {4 * test_size}}}",
        f"TEST: {{DETECTIONS_PER_IMAGE: {detections_per_image}}}",
    ]
    if coco_json:
        lines += [
            "DATASETS:",
            f'  COCO_JSON: [["tools_test_tiny", "{coco_json}", "{image_root}"]]',
            '  TEST: ("tools_test_tiny",)',
        ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 with coarse blobs and noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
    return np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)


def write_images(folder: str, names: Sequence[str], height: int = 72, width: int = 96) -> List[str]:
    import cv2

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = os.path.join(folder, name)
        assert cv2.imwrite(path, random_image(height, width, seed=i)), path
        paths.append(path)
    return paths


def write_tiny_dataset(path: str, image_ids: Dict[str, int]) -> str:
    """A COCO json with :data:`CATEGORY_IDS` and the given file name -> id images."""
    data = {
        "images": [{"id": i, "file_name": n, "height": 72, "width": 96}
                   for n, i in image_ids.items()],
        "annotations": [],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CATEGORY_NAMES)],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def load_script(name: str):
    """Import the script ``tools/<name>.py`` as the module ``tools_<name>`` (the scripts folder
    is not a package), once per process."""
    module_name = f"tools_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up while the class is made.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
