"""The embedded shapes dataset: deterministic, tight boxes, valid COCO json, cached on disk."""
import json
import os
import tempfile
import unittest
from unittest import mock

import numpy as np

import retinafocal  # noqa: F401  (compat first)
from retinafocal.data import shapes
from retinafocal.data.shapes import (
    SHAPE_CLASSES,
    ShapesSpec,
    draw_shapes_image,
    ensure_shapes_split,
    generate_shapes_split,
)

from .common import black_background


class TestDrawShapesImage(unittest.TestCase):
    def test_same_seed_same_image(self):
        spec = ShapesSpec(image_size=64, max_object_size=20)
        a_img, a_objs = draw_shapes_image(spec, np.random.default_rng([1, 2]))
        b_img, b_objs = draw_shapes_image(spec, np.random.default_rng([1, 2]))
        c_img, _ = draw_shapes_image(spec, np.random.default_rng([1, 3]))
        np.testing.assert_array_equal(a_img, b_img)
        self.assertEqual(a_objs, b_objs)
        self.assertFalse(np.array_equal(a_img, c_img))

    def test_boxes_enclose_exactly_the_drawn_pixels(self):
        # On a black background every non-black pixel belongs to an object: each box must touch
        # its object on all four sides, and no object pixel may lie outside every box.
        self.assertTrue(hasattr(shapes, "textured_background"))
        spec = ShapesSpec(image_size=96, max_overlap=0.0, min_object_size=6, max_object_size=30)
        seen_classes = set()
        with mock.patch.object(shapes, "textured_background", black_background):
            for seed in range(40):
                image, objects = draw_shapes_image(spec, np.random.default_rng(seed))
                drawn = image.sum(axis=-1) > 0
                covered = np.zeros_like(drawn)
                for cls, (x, y, w, h) in objects:
                    seen_classes.add(cls)
                    x, y, w, h = int(x), int(y), int(w), int(h)
                    inside = drawn[y : y + h, x : x + w]
                    covered[y : y + h, x : x + w] = True
                    with self.subTest(seed=seed, shape=SHAPE_CLASSES[cls], box=(x, y, w, h)):
                        self.assertTrue(inside[0].any() and inside[-1].any())
                        self.assertTrue(inside[:, 0].any() and inside[:, -1].any())
                self.assertFalse((drawn & ~covered).any(), f"object pixels outside boxes, {seed}")
        self.assertEqual(seen_classes, set(range(len(SHAPE_CLASSES))))

    def test_objects_respect_spec(self):
        spec = ShapesSpec(
            image_size=64,
            min_objects=2,
            max_objects=5,
            min_object_size=8,
            max_object_size=16,
            max_overlap=0.0,
        )
        for seed in range(20):
            image, objects = draw_shapes_image(spec, np.random.default_rng(seed))
            self.assertEqual(image.shape, (64, 64, 3))
            self.assertEqual(image.dtype, np.uint8)
            self.assertLessEqual(len(objects), 5)
            self.assertGreaterEqual(len(objects), 1)
            boxes = np.array([b for _, b in objects])
            self.assertTrue(((boxes[:, 2] >= 8) & (boxes[:, 2] <= 16)).all())
            self.assertTrue((boxes[:, 2] == boxes[:, 3]).all())
            self.assertTrue((boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 64).all())
            # max_overlap=0: no two boxes overlap in both x and y.
            xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
            for i in range(len(xyxy)):
                others = np.delete(xyxy, i, axis=0)
                low = np.maximum(xyxy[i, :2], others[:, :2])
                high = np.minimum(xyxy[i, 2:], others[:, 2:])
                self.assertFalse((high > low).all(axis=1).any())

    def test_bad_spec_is_refused(self):
        with self.assertRaisesRegex(ValueError, "min_objects"):
            ShapesSpec(min_objects=5, max_objects=2)
        with self.assertRaisesRegex(ValueError, "max_object_size"):
            ShapesSpec(image_size=32, max_object_size=40)


class TestGenerateSplit(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.root = self._tmp.name
        self.spec = ShapesSpec(image_size=48, max_object_size=16, min_object_size=6)

    def tearDown(self):
        self._tmp.cleanup()

    def test_coco_json_is_loadable_and_consistent(self):
        from pycocotools.coco import COCO

        json_file = generate_shapes_split(self.root, "val", 6, self.spec, progress=False)
        coco = COCO(json_file)
        self.assertEqual(len(coco.getImgIds()), 6)
        self.assertEqual([c["name"] for c in coco.loadCats(coco.getCatIds())], list(SHAPE_CLASSES))
        for img in coco.loadImgs(coco.getImgIds()):
            self.assertTrue(os.path.isfile(os.path.join(self.root, "val", img["file_name"])))
            self.assertEqual((img["width"], img["height"]), (48, 48))
        anns = coco.loadAnns(coco.getAnnIds())
        self.assertEqual(len({a["id"] for a in anns}), len(anns))
        for a in anns:
            self.assertAlmostEqual(a["area"], a["bbox"][2] * a["bbox"][3])
            self.assertEqual(a["iscrowd"], 0)

    def test_split_is_prefix_of_larger_split(self):
        a, b = os.path.join(self.root, "a"), os.path.join(self.root, "b")
        small = generate_shapes_split(a, "train", 3, self.spec, progress=False)
        large = generate_shapes_split(b, "train", 5, self.spec, progress=False)
        with open(small) as f:
            small_anns = json.load(f)["annotations"]
        with open(large) as f:
            large_anns = [a for a in json.load(f)["annotations"] if a["image_id"] <= 3]
        self.assertEqual(small_anns, large_anns)
        for name in ("000000.png", "000002.png"):
            with open(os.path.join(self.root, "a", "train", name), "rb") as f:
                a = f.read()
            with open(os.path.join(self.root, "b", "train", name), "rb") as f:
                b = f.read()
            self.assertEqual(a, b)

    def test_splits_differ(self):
        generate_shapes_split(self.root, "train", 2, self.spec, progress=False)
        generate_shapes_split(self.root, "val", 2, self.spec, progress=False)
        with open(os.path.join(self.root, "train", "000000.png"), "rb") as f:
            train_bytes = f.read()
        with open(os.path.join(self.root, "val", "000000.png"), "rb") as f:
            self.assertNotEqual(train_bytes, f.read())

    def test_ensure_generates_once_and_regenerates_on_change(self):
        json_file = ensure_shapes_split(self.root, "val", 3, self.spec, progress=False)
        first = os.stat(json_file).st_mtime_ns
        with mock.patch.object(shapes, "generate_shapes_split") as generate:
            ensure_shapes_split(self.root, "val", 3, self.spec, progress=False)
            generate.assert_not_called()
        self.assertEqual(os.stat(json_file).st_mtime_ns, first)
        with mock.patch.object(shapes, "generate_shapes_split") as generate:
            ensure_shapes_split(self.root, "val", 4, self.spec, progress=False)
            generate.assert_called_once()

    def test_interrupted_generation_leaves_no_json(self):
        with mock.patch.object(shapes, "draw_shapes_image", side_effect=KeyboardInterrupt):
            with self.assertRaises(KeyboardInterrupt):
                generate_shapes_split(self.root, "val", 3, self.spec, progress=False)
        self.assertFalse(os.path.exists(shapes.shapes_json_path(self.root, "val")))


if __name__ == "__main__":
    unittest.main()
