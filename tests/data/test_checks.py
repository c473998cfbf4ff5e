"""The dataset rules in the package: box fixes, json checks, the loader's header check of image
files, and the verdict."""
import json
import os
import shutil
import tempfile
import unittest

from PIL import Image

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.data import detection_utils
from retinafocal.data import ValidationReport, check_coco_json, fix_coco_box
from retinafocal.data.checks import read_image_header

from ..reliability.broken_coco import write_broken_coco, write_malformed_json

# What only the tool's deeper image check finds in the broken dataset: the truncated JPEG (its
# header opens) and the conversions the mapper applies.
DEEP_ONLY = {"converted_grayscale", "converted_alpha", "converted_16bit"}


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
    def test_broken_dataset_with_the_header_check(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        report = check_coco_json(json_file, image_root)
        counts = {kind: record.count for kind, record in report.problems.items()}
        expected = {k: v for k, v in expected.items() if k not in DEEP_ONLY}
        expected["unreadable_image"] = 1  # corrupt.jpg; truncated.jpg's header opens
        self.assertEqual(counts, expected)
        self.assertEqual(report.first_ids("unreadable_image"), [6])
        self.assertEqual(report.first_ids("missing_file"), [5])
        self.assertEqual(report.first_ids("size_mismatch"), [9])
        self.assertEqual(report.first_ids("box_invalid"), [106, 107])
        self.assertEqual(report.image_check, "header")
        self.assertFalse(report.has_fatal)

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

    def test_image_only_json_is_all_background(self):
        Image.new("RGB", (5, 4)).save(os.path.join(self.root, "a.png"))
        path = self.write_json(
            {
                "images": [{"id": 3, "file_name": "a.png", "width": 5, "height": 4}],
                "categories": [{"id": 1, "name": "a"}],
            }
        )
        report = check_coco_json(path, self.root)
        self.assertEqual(list(report.problems), ["background_image"])
        self.assertTrue(report.usable("error"))

    def test_inspect_and_map_are_the_callers(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        seen = []

        def inspect(path):
            seen.append(os.path.basename(path))
            return read_image_header(path)

        def map_images(fn, paths):
            return [fn(p) for p in reversed(list(paths))][::-1]

        report = check_coco_json(
            json_file, image_root, inspect=inspect, image_check="custom", map_images=map_images
        )
        self.assertEqual(report.image_check, "custom")
        self.assertEqual(seen[0], "good2.png")  # the last image, first: map_images was used
        self.assertNotIn("does_not_exist.jpg", seen)  # missing files are never inspected
        self.assertEqual(len(seen), 9)


class TestReadImageHeader(_TempDirTest):
    def test_size_follows_exif_orientation_like_read_image(self):
        path = os.path.join(self.root, "rotated.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate by 90 degrees on display
        Image.new("RGB", (64, 48), (10, 20, 30)).save(path, exif=exif)
        info = read_image_header(path)
        read = detection_utils.read_image(path, format="BGR")
        self.assertEqual((info.height, info.width), read.shape[:2])
        self.assertEqual((info.width, info.height, info.format), (48, 64, "JPEG"))

    def test_not_an_image(self):
        path = os.path.join(self.root, "text.png")
        with open(path, "w") as f:
            f.write("hello")
        info = read_image_header(path)
        self.assertFalse(info.readable)
        self.assertIn("not an image", info.reason)


class TestVerdict(unittest.TestCase):
    def report(self, *kinds) -> ValidationReport:
        report = ValidationReport(json_file="a.json", image_root="img")
        for kind in kinds:
            report.add(kind, 1, "example")
        return report

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

    def test_verdict_sentences(self):
        self.assertTrue(self.report().verdict().startswith("Usable"))
        self.assertIn("ON_UNREADABLE_IMAGE", self.report("missing_file").verdict())
        fatal = self.report("duplicate_image_id", "missing_file").verdict()
        self.assertIn("FATAL: 1 problem(s) (duplicate_image_id)", fatal)

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
