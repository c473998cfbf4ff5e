"""Checked loading by name, opted into by training: check_datasets, checked_dataset_dicts, and
the yacs and LazyConfig data loaders that use them."""
import json
import os
import unittest
import uuid

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances
from retinafocal import add_retinafocal_config
from retinafocal.data import (
    DatasetValidationError,
    check_datasets,
    checked_dataset_dicts,
    register_coco_dataset,
)
from retinafocal.engine import Trainer

from ..reliability.broken_coco import HEIGHT, WIDTH, FreshChecksTest, write_broken_coco

# Annotation ids of the broken dataset whose bbox is not 4 finite numbers.
MALFORMED_BOXES = (106, 107)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unique(prefix: str) -> str:
    # DatasetCatalog is process-global: every test registers names of its own.
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _without_malformed_boxes(json_file: str) -> str:
    """A copy of the broken json without its malformed boxes, which detectron2 cannot load."""
    with open(json_file) as f:
        data = json.load(f)
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in MALFORMED_BOXES]
    path = json_file.replace(".json", "_d2.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


class _BrokenDatasetTest(FreshChecksTest):
    """The broken dataset of tests/reliability/broken_coco.py registered by retinafocal
    (``self.ours``) and, without its malformed boxes, by detectron2's ``register_coco_instances``
    (``self.theirs``)."""

    tmp_prefix = "retinafocal_checked_"

    def setUp(self):
        super().setUp()
        self.json_file, self.image_root, _ = write_broken_coco(self.root)
        self.theirs, self.ours = _unique("d2_broken"), _unique("rf_broken")
        d2_json = _without_malformed_boxes(self.json_file)
        register_coco_instances(self.theirs, {}, d2_json, self.image_root)
        register_coco_dataset(self.ours, self.json_file, self.image_root)


class TestCheckDatasets(_BrokenDatasetTest):
    def test_policy_applies_to_any_coco_json_registration(self):
        for name in (self.theirs, self.ours):
            with self.subTest(name=name):
                with self.assertRaises(DatasetValidationError) as ctx:
                    check_datasets([name], on_unreadable="error")
                self.assertIn(name, str(ctx.exception))
                self.assertIn("does_not_exist.jpg", str(ctx.exception))
                reports = check_datasets(name, on_unreadable="skip")
                self.assertEqual(reports[name].num_unreadable_images, 4)
                self.assertEqual(list(check_datasets(name)), [name])

    def test_malformed_boxes_only_where_retinafocal_loads(self):
        name = _unique("d2_malformed")
        register_coco_instances(name, {}, self.json_file, self.image_root)
        with self.assertRaisesRegex(DatasetValidationError, r"\[106, 107\]") as ctx:
            check_datasets(name, on_unreadable="skip")
        self.assertIn("DATASETS.COCO_JSON", str(ctx.exception))
        self.assertEqual(check_datasets(self.ours)[self.ours].count("box_invalid"), 2)

    def test_fatal_dataset_stops_with_its_report(self):
        json_file, image_root, _ = write_broken_coco(self.root, fatal=True)
        name = _unique("d2_fatal")
        register_coco_instances(name, {}, json_file, image_root)
        with self.assertRaisesRegex(DatasetValidationError, "duplicate_image_id") as ctx:
            checked_dataset_dicts(name, on_unreadable="skip")
        self.assertIn(name, str(ctx.exception))

    def test_checking_leaves_the_registration_alone(self):
        loader = DatasetCatalog[self.theirs]
        check_datasets([self.theirs], on_unreadable="skip")
        self.assertIs(DatasetCatalog[self.theirs], loader)

    def test_other_datasets_are_not_checked(self):
        name = _unique("plain")
        DatasetCatalog.register(name, lambda: [{"file_name": "x.png"}])
        MetadataCatalog.get(name).set(json_file="does/not/exist.json", evaluator_type="lvis")
        with self.assertLogs("retinafocal.data.datasets", "INFO") as logs:
            self.assertEqual(check_datasets([name, "never_registered"], on_unreadable="error"), {})
        self.assertIn("not registered as a COCO json", logs.output[0])


class TestCheckedDatasetDicts(_BrokenDatasetTest):
    def test_same_as_detectron2_once_checked(self):
        unreadable = {"does_not_exist.jpg", "corrupt.jpg", "truncated.jpg", "small.png"}
        for name in (self.theirs, self.ours):
            for filter_empty in (True, False):
                with self.subTest(name=name, filter_empty=filter_empty):
                    theirs = get_detection_dataset_dicts(name, filter_empty)
                    ours = checked_dataset_dicts(name, filter_empty=filter_empty)
                    self.assertEqual(ours, theirs)
                    # "skip" leaves the unreadable images out before any work starts.
                    with self.assertLogs("retinafocal.data.datasets", "WARNING") as logs:
                        ours = checked_dataset_dicts(
                            name, filter_empty=filter_empty, on_unreadable="skip"
                        )
                    kept = [d for d in theirs if os.path.basename(d["file_name"]) not in unreadable]
                    self.assertEqual(ours, kept)
                    self.assertIn("4 of 10 image(s) cannot be read", logs.output[0])
                    self.assertIn("they are left out of training", logs.output[0])
        # Filtering is detectron2's: image 8 has no annotation left after retinafocal's fixes.
        kept = {d["image_id"] for d in checked_dataset_dicts([self.ours], filter_empty=True)}
        self.assertEqual(kept, set(range(1, 11)) - {8})


class TestTrainingLoaders(_BrokenDatasetTest):
    def cfg(self, on_unreadable: str):
        cfg = get_cfg()
        add_retinafocal_config(cfg)
        cfg.DATASETS.TRAIN = (self.theirs,)
        cfg.DATALOADER.ON_UNREADABLE_IMAGE = on_unreadable
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (HEIGHT,), WIDTH
        cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = HEIGHT, WIDTH
        return cfg

    def test_yacs_trainer_passes_the_policy(self):
        with self.assertRaisesRegex(DatasetValidationError, "does_not_exist.jpg"):
            Trainer.build_train_loader(self.cfg("error"))
        self.assertIsNotNone(Trainer.build_train_loader(self.cfg("skip")))
        # The test set follows the same policy, with its own message (a test set without
        # malformed boxes, which COCO evaluation cannot read).
        with self.assertRaisesRegex(DatasetValidationError, "so evaluation stops") as ctx:
            Trainer.build_test_loader(self.cfg("error"), self.theirs)
        self.assertIn("does_not_exist.jpg", str(ctx.exception))
        loader = Trainer.build_test_loader(self.cfg("skip"), self.theirs)
        self.assertEqual(len(loader.dataset), 6)  # all but the 4 unreadable images

    def test_lazy_loaders_pass_the_policy(self):
        config = os.path.join(REPO, "configs", "Embedded", "retinanet_R18_FPN_shapes.py")
        cfg = LazyConfig.load(config)
        cfg.dataloader.train.dataset.names = self.ours
        cfg.dataloader.test.dataset.names = self.theirs
        self.assertEqual(cfg.dataloader.train.mapper.on_unreadable, "error")
        with self.assertRaisesRegex(DatasetValidationError, "does_not_exist.jpg"):
            instantiate(cfg.dataloader.train.dataset)
        with self.assertRaisesRegex(DatasetValidationError, "so evaluation stops"):
            instantiate(cfg.dataloader.test.dataset)
        cfg.dataloader.train.mapper.on_unreadable = "skip"  # the test set follows it
        # All but the background image (filter_empty is detectron2's default, True) and the 4
        # unreadable ones.
        self.assertEqual(len(instantiate(cfg.dataloader.train.dataset)), 5)
        self.assertEqual(len(instantiate(cfg.dataloader.test.dataset)), 6)


if __name__ == "__main__":
    unittest.main()
