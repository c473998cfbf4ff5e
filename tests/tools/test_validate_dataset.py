"""tools/validate_dataset.py and its dataset_inspection module: every defect of a deliberately
broken COCO dataset found with its count, deeper image checks, the report cache, the command, and
the same verdict as the loader."""
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
from retinafocal.data import DatasetValidationError, checked_report, loading

from ..data.common import report_with
from ..reliability.broken_coco import write_broken_coco, write_malformed_json
from .common import REPO

TOOLS = os.path.join(REPO, "tools")


def setUpModule():
    # The scripts import their sibling modules by plain name, as `python tools/X.py` lets them.
    sys.path.insert(0, TOOLS)


def tearDownModule():
    sys.path.remove(TOOLS)


class _TempDirTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="retinafocal_validate_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.session_cache_dir = os.environ.get("RETINAFOCAL_CACHE_DIR")
        # Keep the report cache away from other tests.
        patcher = mock.patch.dict(os.environ, {"RETINAFOCAL_CACHE_DIR": self.root})
        patcher.start()
        self.addCleanup(patcher.stop)
        import dataset_inspection

        self.tool = dataset_inspection


class TestValidateBrokenCoco(_TempDirTest):
    def test_every_defect_counted_with_first_ids(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        report = self.tool.validate_coco_json(json_file, image_root)
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
        self.assertEqual(report.image_check, "quick")

    def test_truncated_and_corrupt_reasons(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        report = self.tool.validate_coco_json(json_file, image_root)
        examples = report.problems["unreadable_image"].examples
        self.assertIn("corrupt.jpg", examples[0])
        self.assertIn("truncated.jpg", examples[1])
        self.assertIn("truncated", examples[1].split(":", 1)[1])

    def test_fatal_defects_counted(self):
        json_file, image_root, expected = write_broken_coco(self.root, fatal=True)
        report = self.tool.validate_coco_json(json_file, image_root, full_decode=True)
        counts = {kind: record.count for kind, record in report.problems.items()}
        self.assertEqual(counts, expected)
        self.assertEqual(
            report.kinds("fatal"),
            ["duplicate_image_id", "duplicate_annotation_id", "unknown_category_id"],
        )
        self.assertIn("FATAL", report.format())

    def test_json_only_check_opens_no_image(self):
        json_file, image_root, expected = write_broken_coco(self.root)
        with mock.patch.object(self.tool, "inspect_image") as inspect:
            report = self.tool.validate_coco_json(json_file, image_root, check_images=False)
        inspect.assert_not_called()
        image_kinds = {"missing_file", "unreadable_image", "size_mismatch"}
        image_kinds |= {k for k in expected if k.startswith("converted_")}
        self.assertEqual(set(report.problems), set(expected) - image_kinds)
        self.assertEqual(report.image_check, "none")

    def test_report_round_trips_through_dict(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        report = self.tool.validate_coco_json(json_file, image_root)
        text = json.dumps(self.tool.report_to_dict(report))
        again = self.tool.report_from_dict(json.loads(text))
        self.assertEqual(again, report)
        self.assertEqual(again.format(), report.format())


class TestSameVerdictAsTheLoader(_TempDirTest):
    """"Usable" in the tool means that the loader lets training start, for both policies."""

    def setUp(self):
        super().setUp()
        loading._REPORTS.clear()
        self.addCleanup(loading._REPORTS.clear)

    def test_broken_and_fatal_datasets(self):
        for fatal in (False, True):
            json_file, image_root, _ = write_broken_coco(self.root, fatal=fatal)
            report = self.tool.validate_coco_json(json_file, image_root, full_decode=True)
            for policy in ("error", "skip"):
                with self.subTest(fatal=fatal, policy=policy):
                    try:
                        checked_report(json_file, image_root, on_unreadable=policy)
                        loads = True
                    except DatasetValidationError:
                        loads = False
                    self.assertEqual(report.usable(policy), loads)
            self.assertEqual(report.usable("skip"), not fatal)
            self.assertFalse(report.usable("error"))


class TestVerdict(_TempDirTest):
    def test_verdict_sentences(self):
        self.assertTrue(self.tool.verdict(report_with()).startswith("Usable"))
        self.assertIn("ON_UNREADABLE_IMAGE", self.tool.verdict(report_with("missing_file")))
        fatal = self.tool.verdict(report_with("duplicate_image_id", "missing_file"))
        self.assertIn("FATAL: 1 problem(s) (duplicate_image_id)", fatal)
        no_box_left = report_with("missing_file")
        no_box_left.num_unreadable_with_boxes = 2
        self.assertIn("no other image has a box", self.tool.verdict(no_box_left))


class TestInspectImage(_TempDirTest):
    def test_quick_mode_misses_what_full_decode_finds(self):
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
        self.assertTrue(self.tool.inspect_image(path).readable)
        info = self.tool.inspect_image(path, full_decode=True)
        self.assertFalse(info.readable)
        self.assertTrue(info.reason)

    def test_size_follows_exif_orientation_like_read_image(self):
        path = os.path.join(self.root, "rotated.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate by 90 degrees on display
        Image.new("RGB", (64, 48), (10, 20, 30)).save(path, exif=exif)
        info = self.tool.inspect_image(path)
        read = detection_utils.read_image(path, format="BGR")
        self.assertEqual((info.height, info.width), read.shape[:2])
        self.assertEqual((info.width, info.height), (48, 64))

    def test_16bit_rgb_png_detected(self):
        import cv2

        path = os.path.join(self.root, "rgb16.png")
        cv2.imwrite(path, np.full((6, 7, 3), 40000, dtype=np.uint16))
        self.assertEqual(self.tool.inspect_image(path).conversion, "converted_16bit")
        rgb8 = os.path.join(self.root, "rgb8.png")
        Image.new("RGB", (7, 6)).save(rgb8)
        self.assertIsNone(self.tool.inspect_image(rgb8).conversion)

    def test_jpeg_with_trailing_padding_is_readable(self):
        path = os.path.join(self.root, "padded.jpg")
        Image.new("RGB", (16, 16), (1, 2, 3)).save(path)
        with open(path, "ab") as f:
            f.write(bytes(100))
        self.assertTrue(self.tool.inspect_image(path).readable)


class TestReportCache(_TempDirTest):
    def test_reused_until_the_json_changes(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        real = self.tool.validate_coco_json
        with mock.patch.object(self.tool, "validate_coco_json", side_effect=real) as check:
            first, cached = self.tool.cached_validate_coco_json(json_file, image_root)
            self.assertFalse(cached)
            again, cached = self.tool.cached_validate_coco_json(json_file, image_root)
            self.assertTrue(cached)
            self.assertEqual(again, first)
            self.assertEqual(check.call_count, 1)
            # Another mode is another entry.
            self.tool.cached_validate_coco_json(json_file, image_root, full_decode=True)
            self.assertEqual(check.call_count, 2)
            st = os.stat(json_file)
            os.utime(json_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            self.assertFalse(self.tool.cached_validate_coco_json(json_file, image_root)[1])
            self.assertEqual(check.call_count, 3)
        self.assertEqual(self.tool.cache_dir(), os.path.join(self.root, "dataset_checks"))
        self.assertEqual(len(os.listdir(self.tool.cache_dir())), 3)

    def test_fatal_reports_are_not_stored(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        self.tool.cached_validate_coco_json(json_file, image_root)
        self.assertFalse(self.tool.cached_validate_coco_json(json_file, image_root)[1])

    def test_a_cache_that_cannot_be_written_is_skipped(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        not_a_dir = os.path.join(self.root, "a_file")
        with open(not_a_dir, "w") as f:
            f.write("the cache folder cannot be made inside a file, whoever runs this")
        with mock.patch.dict(os.environ, {"RETINAFOCAL_CACHE_DIR": not_a_dir}):
            with self.assertLogs("dataset_inspection", "WARNING") as logs:
                report, cached = self.tool.cached_validate_coco_json(json_file, image_root)
            self.assertFalse(cached)
            self.assertEqual(report.count("missing_file"), 1)
            self.assertIn("Report not cached", logs.output[0])
            self.assertFalse(self.tool.cached_validate_coco_json(json_file, image_root)[1])

    def test_tests_keep_the_cache_out_of_home(self):
        """``make test`` must not write into ~/.cache/retinafocal: tests/conftest.py points
        RETINAFOCAL_CACHE_DIR into pytest's temporary directory for the whole session (this
        class patches it further, per test)."""
        session_dir = self.session_cache_dir
        self.assertTrue(session_dir, "RETINAFOCAL_CACHE_DIR is not set for the tests")
        home_cache = os.path.join(os.path.expanduser("~"), ".cache")
        self.assertFalse(os.path.abspath(session_dir).startswith(home_cache + os.sep))
        self.assertIn("retinafocal_cache", session_dir)  # conftest's pytest tmp folder


class TestValidateDatasetCommand(_TempDirTest):
    def run_main(self, *argv):
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

    def test_cache_option(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        argv = ("--json", json_file, "--image-root", image_root, "--quick", "--cache")
        _, out = self.run_main(*argv)
        self.assertIn("(checked in", out)
        code, out = self.run_main(*argv)
        self.assertEqual(code, 0)
        self.assertIn("(report from the cache in", out)
        self.assertIn("missing_file", out)

    def test_process_exit_code_on_malformed_json(self):
        path, line, column = write_malformed_json(self.root)
        proc = subprocess.run(
            [sys.executable, os.path.join(TOOLS, "validate_dataset.py"),
             "--json", path, "--image-root", self.root],
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(f"line {line} column {column}", proc.stdout)
        self.assertNotIn("Traceback", proc.stderr)
        # Issue 13, item 8: no torch.jit deprecation warnings from fvcore's or detectron2's
        # imports (retinafocal.compat imports them quietly).
        self.assertNotIn("Warning", proc.stderr)


if __name__ == "__main__":
    unittest.main()
