"""Issue 13 as a user meets it: ``train_net.py`` on a dataset or config with one problem each,
run in this process (tiny: 64x48 images, 2 iterations). Each run ends in one of two ways: an
error before the first iteration that names the file, id or key at fault and the fix, or a run
that trains and reports what it dropped.

Numbers in the test names are the issue's items. Item 2 (weights) is tested with the weight
loading; item 8's log checks share the subprocess run of ``test_training.py``.
"""
import glob
import json
import os
import shutil
import tempfile
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (compat first, before detectron2)
from retinafocal import checkpoint
from retinafocal.checkpoint import DiskFullError, non_finite_tensors
from retinafocal.data import DatasetValidationError, NumClassesError, loading

from . import scenarios
from .scenarios import tiny_opts, train, validate


class _ScenarioTest(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="rf_scenario_")
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        loading._REPORTS.clear()

    def data(self, writer, name: str = "data"):
        return writer(os.path.join(self.root, name))

    def out(self, name: str = "out") -> str:
        return os.path.join(self.root, name)

    def assert_no_iteration(self, output_dir: str):
        """Nothing of a training step was written: no checkpoint, no metrics."""
        self.assertFalse(glob.glob(os.path.join(output_dir, "*.pth")))
        self.assertFalse(os.path.exists(os.path.join(output_dir, "metrics.json")))


class TestPolicyBeforeWork(_ScenarioTest):
    def test_1_truncated_training_image_stops_before_iteration_0(self):
        data = self.data(scenarios.truncated_image)
        with self.assertRaises(DatasetValidationError) as ctx:
            train(tiny_opts(data, self.out()))
        message = str(ctx.exception).splitlines()[0]
        counted = "1 of 4 image(s) cannot be read (unreadable_image 1)"
        self.assertIn(f"Dataset '{data[0]}': {counted}", message)
        self.assertIn(os.path.join(data[2], "truncated.jpg"), message)
        self.assertIn("so training stops before it starts", message)
        self.assertIn("set DATALOADER.ON_UNREADABLE_IMAGE to 'skip'", message)
        self.assert_no_iteration(self.out())

    def test_1_unreadable_test_image_stops_before_training(self):
        train_set, test_set = self.data(scenarios.good), self.data(scenarios.truncated_image, "t")
        with self.assertRaises(DatasetValidationError) as ctx:
            train(tiny_opts(train_set, self.out(), test=test_set))
        message = str(ctx.exception).splitlines()[0]
        self.assertIn(f"Test dataset '{test_set[0]}': 1 of 4 image(s) cannot be read", message)
        self.assertIn("so evaluation stops before it starts", message)
        self.assert_no_iteration(self.out())

    def test_7_every_image_unreadable_with_skip(self):
        data = self.data(scenarios.all_unreadable)
        opts = tiny_opts(data, self.out(), **{"DATALOADER.ON_UNREADABLE_IMAGE": "skip"})
        with self.assertRaises(DatasetValidationError) as ctx:
            train(opts)
        message = str(ctx.exception).splitlines()[0]
        self.assertIn("4 of 4 image(s) cannot be read", message)
        self.assertIn("DATALOADER.ON_UNREADABLE_IMAGE is 'skip', which leaves them out", message)
        self.assertNotIn("to 'skip'", message)  # never suggest what is already set
        self.assert_no_iteration(self.out())

    def test_1_unreadable_test_set_with_skip_does_not_suggest_skip(self):
        train_set, test_set = self.data(scenarios.good), self.data(scenarios.all_unreadable, "t")
        opts = tiny_opts(
            train_set, self.out(), test=test_set, **{"DATALOADER.ON_UNREADABLE_IMAGE": "skip"}
        )
        with self.assertRaises(DatasetValidationError) as ctx:
            train(opts)
        message = str(ctx.exception).splitlines()[0]
        self.assertIn(f"Test dataset '{test_set[0]}'", message)
        self.assertIn("no image with a box is left for evaluation", message)
        self.assertNotIn("to 'skip'", message)

    def test_7_batch_size_0(self):
        opts = tiny_opts(self.data(scenarios.good), self.out(), **{"SOLVER.IMS_PER_BATCH": "0"})
        with self.assertRaises(ValueError) as ctx:
            train(opts)
        self.assertIn("SOLVER.IMS_PER_BATCH is 0", str(ctx.exception))
        self.assertIn("must be a positive integer", str(ctx.exception))
        self.assertNotIn("divisible", str(ctx.exception))


class TestNumClasses(_ScenarioTest):
    def test_3_categories_1_5_90_and_num_classes_2(self):
        data = self.data(scenarios.categories_1_5_90)
        with self.assertRaises(NumClassesError) as ctx:
            train(tiny_opts(data, self.out(), num_classes=2))
        message = str(ctx.exception)
        self.assertIn("MODEL.RETINANET.NUM_CLASSES is 2", message)
        self.assertIn(f"dataset '{data[0]}' has 3 classes", message)
        self.assertIn("would train as background", message)
        self.assertIn("MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET True", message)
        self.assert_no_iteration(self.out())

    def test_3_num_classes_from_dataset(self):
        data = self.data(scenarios.categories_1_5_90)
        opts = tiny_opts(
            data, self.out(), num_classes=80, iters=1,
            **{"MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET": "True"},
        )  # fmt: skip
        train(opts)
        final = torch.load(os.path.join(self.out(), "model_final.pth"), weights_only=False)
        anchors = 9  # 3 sizes x 3 aspect ratios in the embedded recipe
        self.assertEqual(final["model"]["head.cls_score.weight"].shape[0], 3 * anchors)


class TestLastGoodCheckpoint(_ScenarioTest):
    def test_4_diverging_run_names_a_finite_checkpoint(self):
        opts = tiny_opts(
            self.data(scenarios.good), self.out(), iters=6,
            **{"SOLVER.BASE_LR": "1e6", "SOLVER.WARMUP_ITERS": "0",
               "SOLVER.CHECKPOINT_PERIOD": "1"},
        )  # fmt: skip
        with self.assertRaises(FloatingPointError) as ctx:
            train(opts)
        named = ctx.exception.checkpoint
        self.assertTrue(named, str(ctx.exception))
        self.assertIn(named, str(ctx.exception))
        saved = torch.load(named, weights_only=False)
        self.assertEqual(non_finite_tensors(saved), [])
        with open(os.path.join(self.out(), "last_checkpoint")) as f:
            self.assertEqual(f.read(), os.path.basename(named))
        for path in glob.glob(os.path.join(self.out(), "*.pth")):  # every checkpoint written
            self.assertEqual(non_finite_tensors(torch.load(path, weights_only=False)), [], path)
        with open(os.path.join(self.out(), "results.json")) as f:
            written = json.load(f)
        self.assertTrue(written["status"].startswith("non_finite_"))
        self.assertEqual(written["non_finite"]["checkpoint"], named)


class TestOneVerdict(_ScenarioTest):
    def test_5_6_validator_verdict_is_what_training_does(self):
        """For every scenario and policy: usable by the validator <=> train_net.py trains; and
        where it does not, the error names the problem before any iteration."""
        for name, (writer, kind, usable_error, usable_skip) in scenarios.SCENARIOS.items():
            data = self.data(writer, name)
            report = validate(data[1], data[2])
            if kind is not None:
                self.assertTrue(report.count(kind), f"{name}: {report.format()}")
            for policy, usable in (("error", usable_error), ("skip", usable_skip)):
                with self.subTest(scenario=name, policy=policy):
                    self.assertEqual(report.usable(policy), usable)
                    out = self.out(f"{name}_{policy}")
                    opts = tiny_opts(data, out, **{"DATALOADER.ON_UNREADABLE_IMAGE": policy})
                    if usable:
                        train(opts)
                        self.assertTrue(os.path.isfile(os.path.join(out, "model_final.pth")))
                    else:
                        with self.assertRaises(DatasetValidationError) as ctx:
                            train(opts)
                        self.assertIn(data[0], str(ctx.exception))
                        self.assertIn(kind, str(ctx.exception))
                        self.assert_no_iteration(out)

    def test_6_invalid_segmentation_keeps_its_box(self):
        from detectron2.data import DatasetCatalog

        name, json_file, image_root = self.data(scenarios.invalid_segmentation)
        retinafocal.data.register_coco_dataset(name, json_file, image_root)
        with self.assertLogs("retinafocal.data.loading", "WARNING") as logs:
            dicts = DatasetCatalog.get(name)
        self.assertIn("4 invalid segmentation(s) dropped, their boxes kept", logs.output[-1])
        self.assertEqual([len(d["annotations"]) for d in dicts], [1, 1, 1, 1])
        self.assertFalse(any("segmentation" in a for d in dicts for a in d["annotations"]))


class _FileOnFullDisk:
    """A binary file whose writes fail with ENOSPC once ``room`` bytes are written, as on a full
    disk."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, b):
        if len(b) > self._room:
            raise OSError(28, os.strerror(28))
        self._room -= len(b)
        return self._f.write(b)

    def __getattr__(self, name):  # flush, fileno, close, ...
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _OsOnFullDisk:
    """``os`` as retinafocal.checkpoint sees it: files it opens for writing are on a full disk."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, mode="r", *args, **kwargs):
        f = os.fdopen(fd, mode, *args, **kwargs)
        return _FileOnFullDisk(f, room=4096) if "w" in mode else f


class TestFullDisk(_ScenarioTest):
    def test_7_full_disk_while_saving_names_the_file(self):
        opts = tiny_opts(self.data(scenarios.good), self.out(), **{"SOLVER.CHECKPOINT_PERIOD": "1"})
        with mock.patch.object(checkpoint, "os", _OsOnFullDisk()):
            with self.assertRaises(DiskFullError) as ctx:
                train(opts)
        target = os.path.join(self.out(), "model_0000000.pth")
        message = str(ctx.exception)  # the last line a user sees
        self.assertTrue(message.startswith("[Errno 28] No space left on device while writing"))
        self.assertIn(target, message)
        # The first checkpoint of the run: there is nothing to resume from yet.
        self.assertTrue(message.endswith("then run again."), message)
        self.assertIn("unexpected pos", str(ctx.exception.__cause__))  # what torch said
        self.assertFalse(os.path.exists(target))
        self.assertFalse(glob.glob(os.path.join(self.out(), ".*.tmp")))


if __name__ == "__main__":
    unittest.main()
