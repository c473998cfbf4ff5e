"""Dataset validation: every defect of a deliberately broken COCO dataset, with its count."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np
from PIL import Image

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.data import detection_utils
from retinafocal.data import validation
from retinafocal.data.validation import (
    DatasetValidationError,
    ValidationReport,
    fix_coco_box,
    inspect_image,
    load_coco_json_checked,
    validate_coco_json,
)

from .broken_coco import write_broken_coco, write_malformed_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _TempDirTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_validation_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        # Keep the validation cache out of ~/.cache and away from other tests.
        patcher = mock.patch.dict(os.environ, {"RETINAFOCAL_CACHE_DIR": self.root})
        patcher.start()
        self.addCleanup(patcher.stop)
        validation._MEMORY_CACHE.clear()
        self.addCleanup(validation._MEMORY_CACHE.clear)


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


class TestValidateBrokenCoco(_TempDirTest):
    def test_every_defect_counted_with_first_ids(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        report = validate_coco_json(json_file, image_root)
        counts = {kind: record.count for kind, record in report.problems.items()}
        self.assertEqual(counts, expected)
        expected_ids = {
            "missing_file": [5],
            "unreadable_image": [6, 7],
            "size_mismatch": [9],
            "converted_grayscale": [2],
            "converted_alpha": [3],
            "converted_16bit": [4],
            "box_clipped": [102, 109],
            "box_empty": [103, 104, 110],
            "box_outside": [105],
            "box_invalid": [106, 107],
            "orphan_annotation": [108],
            "background_image": [8],
        }
        for kind, ids in expected_ids.items():
            self.assertEqual(report.first_ids(kind), ids, kind)
        self.assertFalse(report.has_fatal)
        self.assertEqual(report.num_unreadable_images, 4)
        self.assertEqual((report.num_images, report.num_annotations), (10, 17))
        self.assertEqual(report.image_check, "header")

    def test_truncated_and_corrupt_reasons(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        examples = validate_coco_json(json_file, image_root).problems["unreadable_image"].examples
        self.assertIn("corrupt.jpg", examples[0])
        self.assertIn("truncated.jpg", examples[1])
        self.assertIn("truncated", examples[1].split(":", 1)[1])

    def test_fatal_defects_counted(self):
        json_file, image_root, expected = write_broken_coco(self.root, fatal=True)
        report = validate_coco_json(json_file, image_root)
        counts = {kind: record.count for kind, record in report.problems.items()}
        self.assertEqual(counts, expected)
        self.assertTrue(report.has_fatal)
        self.assertEqual(
            report.kinds("fatal"),
            ["duplicate_image_id", "duplicate_annotation_id", "unknown_category_id"],
        )
        self.assertEqual(report.first_ids("unknown_category_id"), [301, 302])
        self.assertEqual(report.first_ids("duplicate_image_id"), [10])
        self.assertEqual(report.first_ids("duplicate_annotation_id"), [101])
        self.assertIn("FATAL", report.format())

    def test_malformed_json_names_file_and_position(self):
        path, line, column = write_malformed_json(self.root)
        report = validate_coco_json(path, self.root)
        self.assertEqual(report.kinds("fatal"), ["malformed_json"])
        text = report.format()
        self.assertIn(path, text)
        self.assertIn(f"line {line} column {column}", text)

    def test_missing_json_is_fatal(self):
        path = os.path.join(self.root, "nope.json")
        report = validate_coco_json(path, self.root)
        self.assertTrue(report.has_fatal)
        self.assertIn(path, report.format())

    def test_bad_structure_and_malformed_entries(self):
        path = os.path.join(self.root, "structure.json")
        with open(path, "w") as f:
            json.dump({"images": {}, "categories": []}, f)
        report = validate_coco_json(path, self.root, check_images=False)
        self.assertEqual(report.count("bad_structure"), 2)  # images not a list, no categories
        data = {
            "images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 4}, "x"],
            "annotations": [{"id": 1, "image_id": 1}],
            "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}],
        }
        with open(path, "w") as f:
            json.dump(data, f)
        report = validate_coco_json(path, self.root, check_images=False)
        self.assertEqual(report.count("malformed_image"), 2)
        self.assertEqual(report.count("malformed_annotation"), 1)
        self.assertEqual(report.count("duplicate_category_id"), 1)

    def test_image_only_json_is_all_background(self):
        path = os.path.join(self.root, "test.json")
        Image.new("RGB", (5, 4)).save(os.path.join(self.root, "a.png"))
        with open(path, "w") as f:
            json.dump(
                {
                    "images": [{"id": 3, "file_name": "a.png", "width": 5, "height": 4}],
                    "categories": [{"id": 1, "name": "a"}],
                },
                f,
            )
        report = validate_coco_json(path, self.root)
        self.assertEqual(list(report.problems), ["background_image"])
        self.assertFalse(report.has_fatal)

    def test_json_only_check_opens_no_image(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        with mock.patch.object(validation, "inspect_image") as inspect:
            report = validate_coco_json(json_file, image_root, check_images=False)
        inspect.assert_not_called()
        image_kinds = {"missing_file", "unreadable_image", "size_mismatch"}
        image_kinds |= {k for k in expected if k.startswith("converted_")}
        self.assertEqual(set(report.problems), set(expected) - image_kinds)
        self.assertEqual(report.image_check, "none")

    def test_report_round_trips_through_dict(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        report = validate_coco_json(json_file, image_root)
        again = ValidationReport.from_dict(json.loads(json.dumps(report.to_dict())))
        self.assertEqual(again, report)
        self.assertEqual(again.format(), report.format())


class TestInspectImage(_TempDirTest):
    def test_header_mode_misses_what_full_decode_finds(self):
        # A PNG whose compressed pixel data is damaged but whose header and IEND are intact.
        path = os.path.join(self.root, "damaged.png")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        start = data.index(b"IDAT") + 4
        data[start + 10 : start + 400] = bytes(390)
        with open(path, "wb") as f:
            f.write(data)
        self.assertTrue(inspect_image(path).readable)
        info = inspect_image(path, full_decode=True)
        self.assertFalse(info.readable)
        self.assertTrue(info.reason)

    def test_size_follows_exif_orientation_like_read_image(self):
        path = os.path.join(self.root, "rotated.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate by 90 degrees on display
        Image.new("RGB", (64, 48), (10, 20, 30)).save(path, exif=exif)
        info = inspect_image(path)
        read = detection_utils.read_image(path, format="BGR")
        self.assertEqual((info.height, info.width), read.shape[:2])
        self.assertEqual((info.width, info.height), (48, 64))

    def test_16bit_rgb_png_detected(self):
        import cv2

        path = os.path.join(self.root, "rgb16.png")
        cv2.imwrite(path, np.full((6, 7, 3), 40000, dtype=np.uint16))
        self.assertEqual(inspect_image(path).conversion, "converted_16bit")
        rgb8 = os.path.join(self.root, "rgb8.png")
        Image.new("RGB", (7, 6)).save(rgb8)
        self.assertIsNone(inspect_image(rgb8).conversion)

    def test_jpeg_with_trailing_padding_is_readable(self):
        path = os.path.join(self.root, "padded.jpg")
        Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
        with open(path, "ab") as f:
            f.write(bytes(100))
        self.assertTrue(inspect_image(path).readable)


class TestLoadCocoJsonChecked(_TempDirTest):
    def test_fatal_dataset_raises_with_report(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        with self.assertRaises(DatasetValidationError) as ctx:
            load_coco_json_checked(json_file, image_root, "broken_fatal_test")
        message = str(ctx.exception)
        self.assertIn("broken_fatal_test", message)
        for kind in ("duplicate_image_id", "duplicate_annotation_id", "unknown_category_id"):
            self.assertIn(kind, message)

    def test_returns_fixed_dicts_and_keeps_background(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        with self.assertLogs("retinafocal.data.validation", "WARNING") as logs:
            dicts = load_coco_json_checked(json_file, image_root, "broken_load_test")
        self.assertTrue(any("box_empty" in line for line in logs.output))
        by_id = {d["image_id"]: d for d in dicts}
        self.assertEqual(sorted(by_id), list(range(1, 11)))  # unreadable ones are kept too
        self.assertEqual(by_id[8]["annotations"], [])
        self.assertEqual(
            [a["bbox"] for a in by_id[1]["annotations"]],
            [[10.0, 10.0, 20.0, 20.0], [50.0, 40.0, 14.0, 8.0]],
        )
        self.assertEqual([a["bbox"] for a in by_id[10]["annotations"]], [[0.0, 0.0, 6.0, 10.0]])
        # Category ids are mapped to contiguous ids, as detectron2's load_coco_json does.
        self.assertEqual({a["category_id"] for d in dicts for a in d["annotations"]}, {0, 1})
        self.assertEqual(sum(len(d["annotations"]) for d in dicts), 10)

    def test_error_policy_fails_before_training(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        with self.assertRaises(DatasetValidationError) as ctx:
            load_coco_json_checked(json_file, image_root, "broken_err", on_unreadable="error")
        self.assertIn("does_not_exist.jpg", str(ctx.exception))
        self.assertIn("ON_UNREADABLE_IMAGE", str(ctx.exception))
        dicts = load_coco_json_checked(json_file, image_root, "broken_err", on_unreadable="skip")
        self.assertEqual(len(dicts), 10)

    def test_check_is_cached_until_the_json_changes(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        real = validation.validate_coco_json
        with mock.patch.object(validation, "validate_coco_json", side_effect=real) as check:
            load_coco_json_checked(json_file, image_root, "broken_cache_a")
            validation._MEMORY_CACHE.clear()  # a new process: only the disk cache is left
            load_coco_json_checked(json_file, image_root, "broken_cache_b")
            self.assertEqual(check.call_count, 1)
            st = os.stat(json_file)
            os.utime(json_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            load_coco_json_checked(json_file, image_root, "broken_cache_c")
            self.assertEqual(check.call_count, 2)
        self.assertTrue(os.listdir(os.path.join(self.root, "dataset_checks")))


class TestValidateDatasetCommand(_TempDirTest):
    def run_main(self, *argv):
        sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
        self.addCleanup(sys.path.remove, os.path.join(REPO_ROOT, "tools"))
        import validate_dataset

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = validate_dataset.main(list(argv))
        return code, out.getvalue()

    def test_exit_codes_and_output(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        code, out = self.run_main("--json", json_file, "--image-root", image_root)
        self.assertEqual(code, 0)
        self.assertIn("missing_file", out)
        self.assertIn("image files checked: full", out)
        code, _ = self.run_main("--json", json_file, "--image-root", image_root, "--strict")
        self.assertEqual(code, 1)
        fatal_json, _, _ = write_broken_coco(self.root, fatal=True)
        code, out = self.run_main("--json", fatal_json, "--image-root", image_root, "--quick")
        self.assertEqual(code, 1)
        self.assertIn("duplicate_image_id", out)

    def test_process_exit_code_on_malformed_json(self):
        path, line, column = write_malformed_json(self.root)
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tools", "validate_dataset.py"),
             "--json", path, "--image-root", self.root],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(f"line {line} column {column}", proc.stdout)
        self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
