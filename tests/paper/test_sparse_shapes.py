"""The paper-regime dataset: deterministic, 1-3 objects per image, three labellings of the same
boxes that nest (80 -> 20 -> 5 classes), tight boxes, complete COCO jsons, cached on disk."""
import json
import os
import tempfile
import unittest
from unittest import mock

import numpy as np

import retinafocal  # noqa: F401  (compat first)
from paper import sparse_shapes
from paper.sparse_shapes import (
    COLOURS,
    LABELINGS,
    PATTERNS,
    SPARSE_SPEC,
    category_index,
    category_names,
    draw_sparse_image,
    ensure_sparse_split,
    generate_sparse_split,
    sparse_json_path,
)
from retinafocal.data.shapes import SHAPE_CLASSES, ShapesSpec

from ..data.common import black_background


class TestLabelling(unittest.TestCase):
    def test_class_counts_and_names(self):
        self.assertEqual(sorted(LABELINGS), [5, 20, 80])
        for k in LABELINGS:
            names = category_names(k)
            self.assertEqual(len(names), k)
            self.assertEqual(len(set(names)), k)
        self.assertEqual(category_names(5), list(SHAPE_CLASSES))
        self.assertEqual(category_names(20)[:2], ["red circle", "green circle"])
        self.assertEqual(category_names(80)[:2], ["red solid circle", "red hstripes circle"])
        with self.assertRaisesRegex(ValueError, "no labelling with 7 classes"):
            category_names(7)

    def test_finer_labels_nest_in_coarser_ones(self):
        # Every (shape, colour, pattern) gets one class per labelling; its name says so, and
        # merging the finer classes gives the coarser one.
        seen = {k: set() for k in LABELINGS}
        for s in range(len(SHAPE_CLASSES)):
            for c, colour in enumerate(COLOURS):
                for p, pattern in enumerate(PATTERNS):
                    fine = category_index(80, s, c, p)
                    self.assertEqual(category_names(80)[fine],
                                     f"{colour} {pattern} {SHAPE_CLASSES[s]}")  # fmt: skip
                    self.assertEqual(category_index(20, s, c, p), fine // len(PATTERNS))
                    self.assertEqual(category_index(5, s, c, p), s)
                    for k in LABELINGS:
                        seen[k].add(category_index(k, s, c, p))
        self.assertEqual({k: len(v) for k, v in seen.items()}, {5: 5, 20: 20, 80: 80})


class TestDrawSparseImage(unittest.TestCase):
    def test_same_seed_same_image(self):
        a = draw_sparse_image(SPARSE_SPEC, np.random.default_rng([3, 4]))
        b = draw_sparse_image(SPARSE_SPEC, np.random.default_rng([3, 4]))
        c = draw_sparse_image(SPARSE_SPEC, np.random.default_rng([3, 5]))
        np.testing.assert_array_equal(a[0], b[0])
        self.assertEqual(a[1], b[1])
        self.assertFalse(np.array_equal(a[0], c[0]))

    def test_object_counts_sizes_and_tight_boxes(self):
        # On a black background every non-black pixel is an object's: each box touches its
        # object on all four sides and no object pixel lies outside every box.
        self.assertTrue(hasattr(sparse_shapes, "textured_background"))
        counts = []
        attributes = set()
        with mock.patch.object(sparse_shapes, "textured_background", black_background):
            for seed in range(60):
                image, objects = draw_sparse_image(SPARSE_SPEC, np.random.default_rng(seed))
                self.assertEqual(image.shape, (128, 128, 3))
                self.assertEqual(image.dtype, np.uint8)
                counts.append(len(objects))
                drawn = image.sum(axis=-1) > 0
                covered = np.zeros_like(drawn)
                for shape, colour, pattern, (x, y, w, h) in objects:
                    attributes.add((shape, colour, pattern))
                    self.assertEqual(w, h)
                    self.assertTrue(12 <= w <= 32, w)
                    x, y, w, h = int(x), int(y), int(w), int(h)
                    inside = drawn[y : y + h, x : x + w]
                    covered[y : y + h, x : x + w] = True
                    with self.subTest(seed=seed, box=(x, y, w, h)):
                        self.assertTrue(inside[0].any() and inside[-1].any())
                        self.assertTrue(inside[:, 0].any() and inside[:, -1].any())
                self.assertFalse((drawn & ~covered).any(), f"pixels outside boxes, seed {seed}")
        self.assertEqual(set(counts), {1, 2, 3})
        # 60 images x ~2 objects draw most of the 80 combinations of attributes.
        self.assertGreater(len(attributes), 50)

    def test_patterns_are_what_their_names_say(self):
        colour = np.array([200.0, 100.0, 50.0], dtype=np.float32)
        solid = sparse_shapes._pattern_tile("solid", colour, 12)
        self.assertTrue((solid == colour).all())
        # Bands of 12 // 6 = 2 px: light (the colour), dark (0.3 x the colour), ...
        light = [True, True, False, False] * 3
        rows = sparse_shapes._pattern_tile("hstripes", colour, 12)
        np.testing.assert_allclose(rows[:, 0, 0], [200.0 if x else 60.0 for x in light],
                                   rtol=1e-6)  # fmt: skip
        self.assertTrue((rows == rows[:, :1]).all())  # constant along a row
        cols = sparse_shapes._pattern_tile("vstripes", colour, 12)
        np.testing.assert_array_equal(cols, rows.transpose(1, 0, 2))
        checks = sparse_shapes._pattern_tile("checks", colour, 12)[..., 0]
        self.assertEqual([checks[0, 0] == 200, checks[0, 2] == 200, checks[2, 0] == 200,
                          checks[2, 2] == 200], [True, False, False, True])  # fmt: skip


class TestSplitFiles(unittest.TestCase):
    def test_three_jsons_of_the_same_boxes(self):
        spec = ShapesSpec(image_size=64, min_objects=1, max_objects=3, min_object_size=12,
                          max_object_size=20)  # fmt: skip
        with tempfile.TemporaryDirectory() as root:
            paths = generate_sparse_split(root, "val", 6, spec)
            self.assertEqual(sorted(paths), [5, 20, 80])
            data = {}
            for k, path in paths.items():
                self.assertEqual(path, sparse_json_path(root, "val", k))
                with open(path) as f:
                    data[k] = json.load(f)
                self.assertEqual(len(data[k]["categories"]), k)
                self.assertEqual([c["id"] for c in data[k]["categories"]], list(range(1, k + 1)))
                self.assertEqual(len(data[k]["images"]), 6)
                ids = {a["category_id"] for a in data[k]["annotations"]}
                self.assertTrue(ids <= set(range(1, k + 1)))
                for image in data[k]["images"]:
                    self.assertTrue(os.path.isfile(os.path.join(root, "val", image["file_name"])))
                    n = sum(a["image_id"] == image["id"] for a in data[k]["annotations"])
                    self.assertIn(n, (1, 2, 3))
            boxes = [[(a["image_id"], a["bbox"]) for a in data[k]["annotations"]] for k in paths]
            self.assertEqual(boxes[0], boxes[1])
            self.assertEqual(boxes[0], boxes[2])
            for fine, mid, coarse in zip(*(data[k]["annotations"] for k in (80, 20, 5))):
                self.assertEqual((fine["category_id"] - 1) // 4, mid["category_id"] - 1)
                self.assertEqual((fine["category_id"] - 1) // 16, coarse["category_id"] - 1)

            # The same spec again: nothing is rewritten; another size regenerates.
            stamp = os.path.getmtime(paths[80])
            self.assertEqual(ensure_sparse_split(root, "val", 6, spec), paths)
            self.assertEqual(os.path.getmtime(paths[80]), stamp)
            ensure_sparse_split(root, "val", 4, spec)
            with open(paths[80]) as f:
                self.assertEqual(len(json.load(f)["images"]), 4)

    def test_splits_are_prefixes_and_differ(self):
        spec = ShapesSpec(image_size=64, min_objects=1, max_objects=3, min_object_size=12,
                          max_object_size=20)  # fmt: skip
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            small = generate_sparse_split(a, "train", 2, spec)[80]
            large = generate_sparse_split(b, "train", 4, spec)[80]
            with open(small) as f, open(large) as g:
                s, t = json.load(f), json.load(g)
            first_two = [x for x in t["annotations"] if x["image_id"] <= 2]
            self.assertEqual([x["bbox"] for x in s["annotations"]], [x["bbox"] for x in first_two])
            val = generate_sparse_split(a, "val", 2, spec)[80]
            with open(val) as f:
                self.assertNotEqual([x["bbox"] for x in json.load(f)["annotations"]],
                                    [x["bbox"] for x in s["annotations"]])  # fmt: skip
        with self.assertRaisesRegex(ValueError, "split must be one of"):
            generate_sparse_split("/nonexistent", "test", 1, spec)


if __name__ == "__main__":
    unittest.main()
