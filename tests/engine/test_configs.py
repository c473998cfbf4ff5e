"""Every config in configs/ trains, evaluates and detects, so that none of them rots.

Each config runs through ``train_net.py``'s ``main`` for 2 iterations on a trivially easy dataset
(one bright square per 64 px image; the test images are the training images), with
command-line overrides for the dataset, the size, the iteration count and the initial weights
only: model, anchors, optimizer, schedule and evaluator are the config's own.

Two iterations teach a detector nothing, so each run starts from weights that already detect the
squares: one short training per model family (the family's first config, ``PRETRAIN_ITERS``
iterations without warm-up). The run must then report a finite COCO AP above ``AP_FLOOR``. An
untrained model reaches no such AP (its scores stay below the test threshold: AP is NaN), nor
does a config whose model no longer fits its family's weights, or whose inference or
evaluation is broken.
"""
import fnmatch
import json
import math
import os
import shutil
import tempfile
import unittest
import uuid
from typing import Dict, List

import torch
from PIL import Image, ImageDraw

from .common import (
    CONFIG_DIR,
    TINY_SIZE,
    all_configs,
    lazy_tiny_overrides,
    run_train_net,
    yacs_tiny_overrides,
)

#: Config path pattern -> the config whose run trains the weights of that model family.
FAMILIES = {
    "Embedded/*": "Embedded/retinanet_R18_FPN_shapes.yaml",
    "COCO/*R50*": "COCO/retinanet_R50_FPN_1x.yaml",
    "Base-RetinaNet.yaml": "COCO/retinanet_R50_FPN_1x.yaml",
    "COCO/*R101*": "COCO/retinanet_R101_FPN_1x.yaml",
}
PRETRAIN_ITERS = 60
AP_FLOOR = 10.0  # COCO AP in percent


def easy_squares(root: str) -> Dict[str, List[str]]:
    """4 images, each a light 32 px square (one class) at its own place on a dark background;
    the same images serve as training and test split."""
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images, annotations = [], []
    for i, (x, y) in enumerate([(16, 16), (4, 24), (28, 6), (20, 30)]):
        image = Image.new("RGB", (TINY_SIZE, TINY_SIZE), (20, 20, 20))
        ImageDraw.Draw(image).rectangle([x, y, x + 31, y + 31], fill=(230, 230, 230))
        image.save(os.path.join(image_root, f"{i}.png"))
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": TINY_SIZE,
                       "height": TINY_SIZE})  # fmt: skip
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1,
                            "bbox": [x, y, 32, 32], "area": 1024, "iscrowd": 0})  # fmt: skip
    json_file = os.path.join(root, "squares.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "square"}]}, f)  # fmt: skip
    tag = uuid.uuid4().hex[:8]
    return {split: [f"squares_{split}_{tag}", json_file, image_root] for split in ("train", "val")}


def family_of(rel: str) -> str:
    for pattern, family in FAMILIES.items():
        if fnmatch.fnmatch(rel, pattern):
            return family
    raise AssertionError(f"configs/{rel} belongs to no model family of {FAMILIES}: add it")


class TestEveryConfigRuns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.mkdtemp(prefix="rf_configs_")
        cls.data = easy_squares(os.path.join(cls._tmp, "data"))
        cls.weights: Dict[str, str] = {}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls._tmp, ignore_errors=True)

    def test_configs_are_found(self):
        names = {os.path.relpath(p, CONFIG_DIR) for p in all_configs()}
        for expected in (
            "Embedded/retinanet_R18_FPN_shapes.yaml",
            "Embedded/retinanet_R18_FPN_shapes.py",
            "COCO/retinanet_R50_FPN_1x.yaml",
            "COCO/retinanet_R101_FPN_1x.py",
        ):
            self.assertIn(expected, names)
        for name in names:
            family_of(name)

    def family_weights(self, family: str) -> str:
        """The weights of a family: its config trained on the squares, without warm-up, at LR
        0.02 with gradients clipped to norm 1."""
        if family not in self.weights:
            out = os.path.join(self._tmp, "pretrain", family.replace(os.sep, "_"))
            overrides = yacs_tiny_overrides(self.data, out, iters=PRETRAIN_ITERS, num_classes=1)
            # Clipped gradients: from random init (no ImageNet weights here) the deep recipes
            # otherwise reach NaN, or do not learn in so few iterations at their own LR.
            overrides += ["SOLVER.WARMUP_FACTOR", "1.0", "SEED", "0", "SOLVER.BASE_LR", "0.02",
                          "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
                          "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                          "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "1.0"]  # fmt: skip
            results = run_train_net(["--config-file", os.path.join(CONFIG_DIR, family),
                                     *overrides])  # fmt: skip
            self.assertGreater(results["bbox"]["AP"], AP_FLOOR, f"pretraining {family}")
            type(self).weights[family] = os.path.join(out, "model_final.pth")
        return self.weights[family]

    def _run(self, config_file: str) -> None:
        rel = os.path.relpath(config_file, CONFIG_DIR)
        weights = self.family_weights(family_of(rel))
        output_dir = os.path.join(self._tmp, "out", rel.replace(os.sep, "_"))
        if rel.endswith(".py"):
            overrides = lazy_tiny_overrides(self.data, output_dir, num_classes=1)
            overrides.append(f"train.init_checkpoint='{weights}'")
        else:
            overrides = yacs_tiny_overrides(self.data, output_dir, num_classes=1)
            overrides += ["MODEL.WEIGHTS", weights]
        results = run_train_net(["--config-file", config_file, *overrides])
        # Trained 2 iterations, wrote the final checkpoint and the predictions figure, evaluated.
        final = torch.load(
            os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=False
        )
        self.assertEqual(final["iteration"], 1)
        self.assertTrue(os.path.isfile(os.path.join(output_dir, "predictions.png")))
        family = torch.load(weights, map_location="cpu", weights_only=False)["model"]
        shapes = {k: tuple(v.shape) for k, v in final["model"].items()}
        expected = {k: tuple(v.shape) for k, v in family.items()}
        self.assertEqual(shapes, expected, f"configs/{rel}: not the model of {family_of(rel)}")
        ap = results["bbox"]["AP"]
        self.assertTrue(math.isfinite(ap), f"configs/{rel}: AP {ap}")
        self.assertGreater(ap, AP_FLOOR, f"configs/{rel}")


def _add_config_tests():
    for path in all_configs():
        rel = os.path.relpath(path, CONFIG_DIR)
        name = "test_" + rel.replace(os.sep, "__").replace("-", "_").replace(".", "_")
        setattr(TestEveryConfigRuns, name, lambda self, p=path: self._run(p))


_add_config_tests()


if __name__ == "__main__":
    unittest.main()
