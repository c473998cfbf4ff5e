"""The dataset rules in the package: box fixes, json checks, the loader's image check (header,
size, end marker), and the verdict (its sentences: tests/tools/test_validate_dataset.py)."""
import json
import os
import shutil
import tempfile
import unittest

from PIL import Image

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.data import detection_utils
from retinafocal.data import (
    ValidationReport,
    check_coco_json,
    fix_coco_box,
    load_coco_json_checked,
)
from retinafocal.data.checks import inspect_image

from ..reliability.broken_coco import write_broken_coco, write_malformed_json
from .common import report_with


class TestFixCocoBox(unittest.TestCase):
    def test_hand_computed(self):
        cases = [
            ([1, 2, 3, 4], ("ok", [1.0, 2.0, 3.0, 4.0])),
            ([-5, 2, 10, 3], ("box_clipped", [0.0, 2.0, 5.0, 3.0])),
            ([6, 6, 10, 10], ("box_clipped", [6.0, 6.0, 2.0, 2.0])),
            ([0, 0, 8, 8], ("ok", [0.0, 0.0, 8.0, 8.0])),  # touching the border is inside
            ([1, 1, 0, 3], ("box_empty", None)),
            ([1, 1, 3, -1], ("box_empty", None)),
            ([8, 0, 2, 2], ("box_outside", None)),  # starts at the right border
            ([-3, -3, 2, 2], ("box_outside", None)),
            ([1, 2, 3], ("box_invalid", None)),
            ([], ("box_invalid", None)),
            (None, ("box_invalid", None)),
            ([1, "a", 3, 4], ("box_invalid", None)),
            ([1, float("nan"), 3, 4], ("box_invalid", None)),
            ([1, 1, float("inf"), 4], ("box_invalid", None)),
        ]
        for bbox, expected in cases:
            with self.subTest(bbox=bbox):
                self.assertEqual(fix_coco_box(bbox, 8, 8), expected)


class _TempDirTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_checks_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

    def write_json(self, data) -> str:
        path = os.path.join(self.root, "data.json")
        with open(path, "w") as f:
            json.dump(data, f)
        return path


class TestCheckCocoJson(_TempDirTest):
    def test_broken_dataset_with_the_loaders_check(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        report = check_coco_json(json_file, image_root)
        counts = {kind: record.count for kind, record in report.problems.items()}
        # Everything, the truncated JPEG (its header opens, its end marker is missing) included,
        # but what the mapper converts (tools/dataset_inspection.py finds that: tests/tools).
        converted = {kind for kind in expected if kind.startswith("converted_")}
        self.assertEqual(len(converted), 3)
        self.assertEqual(counts, {k: v for k, v in expected.items() if k not in converted})
        self.assertEqual(report.first_ids("unreadable_image"), [6, 7])
        self.assertEqual(report.first_ids("missing_file"), [5])
        self.assertEqual(report.first_ids("size_mismatch"), [9])
        self.assertEqual(report.first_ids("box_invalid"), [106, 107])
        self.assertEqual(report.image_check, "quick")
        self.assertFalse(report.has_fatal)
        # Every unreadable file, as dataset dicts name it, so that they can be left out.
        self.assertEqual(
            sorted(os.path.basename(p) for p in report.unreadable_files),
            ["corrupt.jpg", "does_not_exist.jpg", "small.png", "truncated.jpg"],
        )
        self.assertEqual(report.unreadable_files[0], os.path.join(image_root, "does_not_exist.jpg"))
        # Images with a box: 1, 2, 3, 4, 9, 10 and the unreadable 5, 6, 7 (8 is background).
        self.assertEqual((report.num_images_with_boxes, report.num_unreadable_with_boxes), (9, 4))

    def test_fatal_defects_counted(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        report = check_coco_json(json_file, image_root, inspect=None)
        self.assertTrue(report.has_fatal)
        self.assertEqual(
            report.kinds("fatal"),
            ["duplicate_image_id", "duplicate_annotation_id", "unknown_category_id"],
        )
        self.assertEqual(report.first_ids("unknown_category_id"), [301, 302])
        self.assertEqual(report.first_ids("duplicate_image_id"), [10])
        self.assertEqual(report.first_ids("duplicate_annotation_id"), [101])
        self.assertIn("FATAL", report.format())
        self.assertEqual(report.image_check, "none")
        self.assertNotIn("missing_file", report.problems)  # no image was looked at

    def test_malformed_json_names_file_and_position(self):
        path, line, column = write_malformed_json(self.root)
        report = check_coco_json(path, self.root)
        self.assertEqual(report.kinds("fatal"), ["malformed_json"])
        text = report.format()
        self.assertIn(path, text)
        self.assertIn(f"line {line} column {column}", text)

    def test_missing_json_is_fatal(self):
        path = os.path.join(self.root, "nope.json")
        report = check_coco_json(path, self.root)
        self.assertTrue(report.has_fatal)
        self.assertIn(path, report.format())

    def test_json_null_is_fatal(self):
        report = check_coco_json(self.write_json(None), self.root, inspect=None)
        self.assertEqual(report.kinds("fatal"), ["bad_structure"])
        self.assertIn("top level is null, not an object", report.format())

    def test_bad_structure_and_malformed_entries(self):
        path = self.write_json({"images": {}, "categories": []})
        report = check_coco_json(path, self.root, inspect=None)
        self.assertEqual(report.count("bad_structure"), 2)  # images not a list, no categories
        path = self.write_json(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 4}, "x"],
                "annotations": [{"id": 1, "image_id": 1}],
                "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}],
            }
        )
        report = check_coco_json(path, self.root, inspect=None)
        self.assertEqual(report.count("malformed_image"), 2)
        self.assertEqual(report.count("malformed_annotation"), 1)
        self.assertEqual(report.count("duplicate_category_id"), 1)

    def test_image_only_json_has_nothing_to_train_on(self):
        Image.new("RGB", (5, 4)).save(os.path.join(self.root, "a.png"))
        path = self.write_json(
            {
                "images": [{"id": 3, "file_name": "a.png", "width": 5, "height": 4}],
                "categories": [{"id": 1, "name": "a"}],
            }
        )
        report = check_coco_json(path, self.root)
        self.assertEqual(set(report.problems), {"no_usable_box", "background_image"})
        self.assertIn("the json has no annotation", report.format())
        self.assertFalse(report.usable("skip"))

    def test_inspect_and_map_are_the_callers(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        seen = []

        def inspect(path):
            seen.append(os.path.basename(path))
            return inspect_image(path)

        def map_images(fn, paths):
            return [fn(p) for p in reversed(list(paths))][::-1]

        report = check_coco_json(
            json_file, image_root, inspect=inspect, image_check="custom", map_images=map_images
        )
        self.assertEqual(report.image_check, "custom")
        self.assertEqual(seen[0], "good2.png")  # the last image, first: map_images was used
        self.assertNotIn("does_not_exist.jpg", seen)  # missing files are never inspected
        self.assertEqual(len(seen), 9)


def _json(images, annotations, categories=({"id": 1, "name": "a"}, {"id": 2, "name": "b"})):
    return {"images": images, "annotations": annotations, "categories": list(categories)}


def _img(image_id, file_name):
    return {"id": image_id, "file_name": file_name, "width": 64, "height": 48}


def _ann(ann_id, image_id, bbox=(10, 10, 20, 20), **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": list(bbox), **extra}


class TestRulesOfOneVerdict(_TempDirTest):
    """What detectron2 fails on (or mistrains on) after a check had said "usable": each is now
    a problem kind, so the check, the loader and the validator agree."""

    def check(self, data) -> ValidationReport:
        return check_coco_json(self.write_json(data), self.root, inspect=None)

    def test_no_box_to_train_on_is_fatal(self):
        images = [_img(1, "a.jpg"), _img(2, "b.jpg")]
        cases = {
            "no annotation": [],
            "all degenerate": [_ann(1, 1, (1, 1, 0, 5)), _ann(2, 2, (100, 100, 5, 5))],
            "all crowd": [_ann(1, 1, iscrowd=1)],
        }
        for name, annotations in cases.items():
            with self.subTest(name):
                report = self.check(_json(images, annotations))
                self.assertEqual(report.kinds("fatal"), ["no_usable_box"])
                self.assertEqual(report.count("background_image"), 2)
                self.assertFalse(report.usable("skip"))
        report = self.check(_json(images, [_ann(1, 1, iscrowd=1), _ann(2, 2)]))
        self.assertEqual((report.kinds("fatal"), report.num_images_with_boxes), ([], 1))

    def test_crowd_is_what_detectron2_drops(self):
        """detectron2's mapper and empty-image filter train an annotation only when
        ``iscrowd == 0`` (absent counts as 0): a null iscrowd is a crowd region there."""
        from detectron2.data.build import filter_images_with_only_crowd_annotations
        from detectron2.data.datasets import load_coco_json

        images = [_img(i, f"{i}.jpg") for i in (1, 2, 3, 4)]
        flags = [{"iscrowd": None}, {"iscrowd": 0}, {}, {"iscrowd": False}]
        data = _json(images, [_ann(i, i, **flag) for i, flag in enumerate(flags, start=1)])
        dicts = load_coco_json(self.write_json(data), self.root, None)
        trained = filter_images_with_only_crowd_annotations(dicts)
        self.assertEqual([d["image_id"] for d in trained], [2, 3, 4])
        self.assertEqual(self.check(data).num_images_with_boxes, 3)
        self.assertEqual(self.check(data).first_ids("background_image"), [1])
        data["annotations"] = data["annotations"][:1]
        self.assertEqual(self.check(data).kinds("fatal"), ["no_usable_box"])

    def test_mixed_id_types_are_fatal(self):
        images = [_img(1, "a.jpg"), _img("b", "b.jpg"), _img(3, "c.jpg")]
        report = self.check(_json(images, [_ann(1, 1), _ann(2, "b")]))
        self.assertEqual(report.kinds("fatal"), ["mixed_id_types"])
        self.assertEqual((report.count("mixed_id_types"), report.first_ids("mixed_id_types")),
                         (1, ["b"]))  # fmt: skip
        self.assertIn("image ids mix integers (e.g. 1) and strings (e.g. 'b')", report.format())
        categories = [{"id": 1, "name": "a"}, {"id": "2", "name": "b"}]
        report = self.check(_json([_img(1, "a.jpg")], [_ann(1, 1)], categories))
        self.assertIn("category ids mix", report.format())
        # All strings is fine: pycocotools and detectron2 sort them.
        report = self.check(_json([_img("x", "a.jpg"), _img("y", "b.jpg")], [_ann(1, "x")]))
        self.assertFalse(report.has_fatal)

    def test_one_file_under_two_ids_is_fatal(self):
        images = [_img(1, "a.jpg"), _img(2, "./a.jpg"), _img(3, "b.jpg")]
        report = self.check(_json(images, [_ann(1, 1), _ann(2, 3)]))
        self.assertEqual(report.kinds("fatal"), ["duplicate_file_name"])
        self.assertEqual(report.first_ids("duplicate_file_name"), [2])
        self.assertIn("names ./a.jpg, the file of image 1", report.format())

    def test_ignore_flag_is_fatal(self):
        from detectron2.data.datasets import load_coco_json

        flags = [0, 1, True, None, False]  # detectron2 asserts ignore == 0 (absent: 0)
        annotations = [_ann(i, 1, ignore=flag) for i, flag in enumerate(flags, start=1)]
        data = _json([_img(1, "a.jpg")], annotations)
        report = self.check(data)
        self.assertEqual(report.kinds("fatal"), ["ignore_flag"])
        self.assertEqual(report.first_ids("ignore_flag"), [2, 3, 4])
        self.assertIn("annotation 2 of image 1: 'ignore': 1", report.format())
        # detectron2's loader stops at them with an assert that names no file or annotation.
        with self.assertRaisesRegex(AssertionError, '"ignore" in COCO json file'):
            load_coco_json(self.write_json(data), self.root, None)
        for kept in (annotations[:1], annotations[4:]):
            data["annotations"] = kept
            self.assertFalse(self.check(data).has_fatal)
            load_coco_json(self.write_json(data), self.root, None)

    def test_duplicate_annotation_ids_of_minival_are_accepted_as_by_detectron2(self):
        from detectron2.data.datasets import load_coco_json

        images = [_img(1, "a.jpg"), _img(2, "b.jpg")]
        data = _json(images, [_ann(7, 1), _ann(7, 2, (1, 1, 5, 5))])
        fatal = self.check(data)
        self.assertEqual(fatal.kinds("fatal"), ["duplicate_annotation_id"])
        # COCO 2014's minival json (the paper's ablation test set) repeats annotation ids, and
        # detectron2's loader accepts any json whose name says minival.
        json_file = os.path.join(self.root, "instances_minival2014.json")
        os.rename(self.write_json(data), json_file)
        report = check_coco_json(json_file, self.root, inspect=None)
        self.assertEqual((report.kinds("fatal"), report.num_images_with_boxes), ([], 2))
        expected = [[a["bbox"] for a in d["annotations"]] for d in load_coco_json(json_file, "")]
        dicts = load_coco_json_checked(json_file, self.root, check_images=False)
        self.assertEqual([[a["bbox"] for a in d["annotations"]] for d in dicts], expected)

    def test_invalid_segmentation_is_counted_and_its_box_kept(self):
        annotations = [
            _ann(1, 1, segmentation=[[1, 2, 3, 4]]),  # 2 points: detectron2 drops the box
            _ann(2, 1, segmentation=[[1, 2, 3, 4], [1, 1, 9, 1, 9, 9]]),  # one valid polygon
            _ann(3, 1, segmentation={"counts": "abc", "size": [48, 64]}),  # RLE
            _ann(4, 1, segmentation=[]),
            _ann(5, 1, segmentation=[[1, 2, 3, 4, 5]]),  # odd length
        ]
        report = self.check(_json([_img(1, "a.jpg")], annotations))
        self.assertEqual(report.first_ids("segmentation_invalid"), [1, 5])
        self.assertEqual(report.kinds("fatal"), [])
        self.assertEqual(report.num_images_with_boxes, 1)


class TestInspectImage(_TempDirTest):
    def test_size_follows_exif_orientation_like_read_image(self):
        path = os.path.join(self.root, "rotated.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate by 90 degrees on display
        Image.new("RGB", (64, 48), (10, 20, 30)).save(path, exif=exif)
        info = inspect_image(path)
        read = detection_utils.read_image(path, format="BGR")
        self.assertEqual((info.height, info.width), read.shape[:2])
        self.assertEqual((info.width, info.height, info.format), (48, 64, "JPEG"))

    def test_not_an_image(self):
        path = os.path.join(self.root, "text.png")
        with open(path, "w") as f:
            f.write("hello")
        info = inspect_image(path)
        self.assertFalse(info.readable)
        self.assertIn("not an image", info.reason)


class TestVerdict(unittest.TestCase):
    def report(self, *kinds) -> ValidationReport:
        return report_with(*kinds)

    def test_usable_by_policy(self):
        cases = [
            ((), (True, True)),
            (("box_clipped", "background_image", "converted_16bit"), (True, True)),
            (("missing_file",), (False, True)),
            (("size_mismatch", "box_empty"), (False, True)),
            (("duplicate_image_id",), (False, False)),
            (("malformed_json", "missing_file"), (False, False)),
        ]
        for kinds, (with_error, with_skip) in cases:
            with self.subTest(kinds=kinds):
                report = self.report(*kinds)
                self.assertEqual(report.usable("error"), with_error)
                self.assertEqual(report.usable("skip"), with_skip)
        with self.assertRaisesRegex(ValueError, "on_unreadable"):
            self.report().usable("ignore")

    def test_skip_needs_a_readable_image_with_a_box(self):
        report = self.report("missing_file")
        report.num_unreadable_with_boxes = 1
        self.assertTrue(report.usable("skip"))  # 2 images with boxes, 1 of them unreadable
        report.num_unreadable_with_boxes = 2
        self.assertFalse(report.usable("skip"))
        summary = "1 of 3 image(s) cannot be read (missing_file 1): img/missing_file.jpg"
        self.assertEqual(report.unreadable_summary(), summary)

    def test_counts_and_first_ids_are_capped(self):
        report = ValidationReport(json_file="a.json", image_root="img")
        for i in range(7):
            report.add("box_empty", i, f"box {i}")
        self.assertEqual(report.count("box_empty"), 7)
        self.assertEqual(report.first_ids("box_empty"), [0, 1, 2, 3, 4])
        self.assertIn("0, 1, 2, 3, 4 ...", report.format())
        with self.assertRaisesRegex(KeyError, "no_such_kind"):
            report.add("no_such_kind")


if __name__ == "__main__":
    unittest.main()
