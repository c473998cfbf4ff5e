"""load_coco_json_checked: detectron2's loader behind the check, with the box fixes applied."""
import json
import os
import unittest
from unittest import mock

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from retinafocal.data import DatasetValidationError, checked_report, load_coco_json_checked
from retinafocal.data import loading

from ..reliability.broken_coco import FreshChecksTest, write_broken_coco


class _LoadingTest(FreshChecksTest):
    tmp_prefix = "retinafocal_loading_"


class TestLoadCocoJsonChecked(_LoadingTest):
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
        with self.assertLogs("retinafocal.data.loading", "WARNING") as logs:
            dicts = load_coco_json_checked(json_file, image_root, "broken_load_test")
        self.assertTrue(any("box_empty" in line for line in logs.output))  # the report
        self.assertIn("2 clipped, 3 empty, 2 invalid, 1 outside box(es)", logs.output[-1])
        # Said once per process: each loader, evaluation and figure loads the dataset again.
        with self.assertNoLogs("retinafocal.data.loading", "WARNING"):
            load_coco_json_checked(json_file, image_root, "broken_load_test")
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
        with self.assertRaisesRegex(ValueError, "on_unreadable"):
            load_coco_json_checked(json_file, image_root, on_unreadable="ignore")


class TestMalformedBoxes(_LoadingTest):
    """Only annotations that detectron2's loader rejects are dropped before it reads the json
    (through a copy of it); other malformed boxes are dropped from its output."""

    def write(self, bboxes) -> str:
        image_root = os.path.join(self.root, "images")
        os.makedirs(image_root, exist_ok=True)
        data = {
            "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
            "annotations": [
                dict({"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0}, bbox=b)
                for i, b in enumerate(bboxes, start=1)
            ],
            "categories": [{"id": 1, "name": "a"}],
        }
        json_file = os.path.join(self.root, "boxes.json")
        with open(json_file, "w") as f:
            json.dump(data, f)
        return json_file

    def load(self, json_file):
        """The dicts, and the folders that held a copy of the json (each removed since)."""
        copies, real = [], loading.tempfile.TemporaryDirectory

        def tracked(*args, **kwargs):
            copies.append(real(*args, **kwargs))
            return copies[-1]

        with mock.patch.object(loading.tempfile, "TemporaryDirectory", side_effect=tracked):
            dicts = load_coco_json_checked(json_file, self.root, check_images=False)
        return dicts, [copy.name for copy in copies]

    def test_rejected_boxes_need_a_copy(self):
        dicts, copies = self.load(self.write([[1, 1, 2, 2], [], None, [0, 0, 3, 3]]))
        self.assertEqual(len(copies), 1)
        self.assertFalse(os.path.exists(copies[0]))
        self.assertEqual([a["bbox"] for a in dicts[0]["annotations"]], [[1, 1, 2, 2], [0, 0, 3, 3]])

    def test_other_malformed_boxes_are_dropped_after_loading(self):
        json_file = self.write([[1, 1, 2, 2], [1, 2, 3], [1, "a", 3, 4], [0, float("nan"), 1, 1]])
        dicts, copies = self.load(json_file)
        self.assertEqual(copies, [])
        self.assertEqual([a["bbox"] for a in dicts[0]["annotations"]], [[1, 1, 2, 2]])

    def test_detectron2_alone_rejects_them(self):
        from detectron2.data.datasets import load_coco_json

        with self.assertRaisesRegex(ValueError, "empty 'bbox'"):
            load_coco_json(self.write([[1, 1, 2, 2], []]), self.root, None)


class TestCheckedReport(_LoadingTest):
    def test_checked_once_per_process_until_the_json_changes(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        patcher = mock.patch.dict(os.environ, {"RETINAFOCAL_CACHE_DIR": self.root})
        patcher.start()
        self.addCleanup(patcher.stop)
        real = loading.check_coco_json
        with mock.patch.object(loading, "check_coco_json", side_effect=real) as check:
            with self.assertLogs("retinafocal.data.loading", "WARNING") as logs:
                checked_report(json_file, image_root, "a")
                report = checked_report(json_file, image_root, "b")
            self.assertEqual(check.call_count, 1)
            self.assertEqual(len(logs.output), 1)  # logged when made, not when reused
            report.problems.clear()  # the caller's copy
            self.assertTrue(checked_report(json_file, image_root).problems)
            st = os.stat(json_file)
            os.utime(json_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
            checked_report(json_file, image_root, "c")
            self.assertEqual(check.call_count, 2)
        self.assertFalse(os.path.exists(os.path.join(self.root, "dataset_checks")))  # no disk cache

    def test_clean_dataset_logs_at_info(self):
        json_file, image_root, _ = write_broken_coco(self.root)
        with open(json_file) as f:
            data = json.load(f)
        data["images"] = [img for img in data["images"] if img["id"] == 10]
        data["annotations"] = [a for a in data["annotations"] if a["id"] == 109]
        data["annotations"][0]["bbox"] = [1, 1, 5, 5]
        with open(json_file, "w") as f:
            json.dump(data, f)
        with self.assertLogs("retinafocal.data.loading", "INFO") as logs:
            report = checked_report(json_file, image_root, "clean")
        self.assertFalse(report.problems)
        self.assertTrue(all(line.startswith("INFO") for line in logs.output))

    def test_test_set_that_coco_evaluation_cannot_read_stops_before_work(self):
        """pycocotools' COCOeval reads every annotation's 'area', 'iscrowd' and 'bbox' of the
        json itself (the loader's box fixes do not reach it): it raises after training."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        json_file, image_root, _ = write_broken_coco(self.root)
        with open(json_file) as f:
            data = json.load(f)
        data["annotations"] = [a for a in data["annotations"] if a["id"] not in (106, 107)]
        del data["annotations"][0]["area"]  # annotation 101
        with open(json_file, "w") as f:
            json.dump(data, f)
        gt = COCO(json_file)
        found = gt.loadRes([{"image_id": 1, "category_id": 1, "bbox": [9, 9, 20, 20], "score": 1}])
        with self.assertRaisesRegex(KeyError, "area"):
            COCOeval(gt, found, "bbox").evaluate()
        self.assertEqual(checked_report(json_file, image_root, "t").count("eval_field_missing"), 1)
        with self.assertRaises(DatasetValidationError) as ctx:
            checked_report(json_file, image_root, "t", purpose="evaluation")
        message = str(ctx.exception)
        self.assertIn("Test dataset 't' cannot be evaluated", message)
        self.assertIn("annotation 101 of image 1: area None, iscrowd 0", message)
        # A malformed box, dropped from the dataset dicts, also stays in COCOeval's json.
        json_file, image_root, _ = write_broken_coco(os.path.join(self.root, "boxes"))
        with self.assertRaisesRegex(DatasetValidationError, "box_invalid"):
            checked_report(json_file, image_root, "t", purpose="evaluation")

    def test_image_list_without_annotations_is_a_test_set_only(self):
        """COCO test-dev's json lists images only: COCOEvaluator writes the predictions for the
        evaluation server. Training on it has nothing to learn."""
        json_file, image_root, _ = write_broken_coco(self.root)
        with open(json_file) as f:
            data = json.load(f)
        del data["annotations"]
        data["images"] = [img for img in data["images"] if img["id"] in (1, 10)]
        with open(json_file, "w") as f:
            json.dump(data, f)
        with self.assertRaisesRegex(DatasetValidationError, "no_usable_box"):
            checked_report(json_file, image_root, "dev", purpose="training")
        report = checked_report(json_file, image_root, "dev", purpose="evaluation")
        self.assertEqual((report.num_images, report.num_images_with_boxes), (2, 0))
        dicts = load_coco_json_checked(json_file, image_root, "dev_test")  # the loader's call
        self.assertEqual([(d["image_id"], d["annotations"]) for d in dicts], [(1, []), (10, [])])

    def test_image_list_with_no_readable_image_is_refused_before_training(self):
        """Under "skip", an image list whose every file is unreadable (or that lists no image)
        leaves the test loader nothing: detectron2 would crash on it after training."""
        json_file, image_root, _ = write_broken_coco(self.root)
        with open(json_file) as f:
            data = json.load(f)
        del data["annotations"]
        for kept in ((1, 5, 6), (5, 6), ()):
            data["images"] = [img for img in data["images"] if img["id"] in kept]
            with open(json_file, "w") as f:
                json.dump(data, f)
            with self.subTest(kept=kept):
                args = (json_file, image_root, "dev")
                kwargs = dict(on_unreadable="skip", purpose="evaluation")
                if 1 in kept:  # good.jpg: something to predict on
                    self.assertEqual(checked_report(*args, **kwargs).num_images, 3)
                    continue
                with self.assertRaises(DatasetValidationError) as ctx:
                    checked_report(*args, **kwargs)
                self.assertIn(
                    f"Test dataset 'dev' has no readable image to predict on: {len(kept)} "
                    f"listed, {len(kept)} unreadable",
                    str(ctx.exception),
                )


if __name__ == "__main__":
    unittest.main()
