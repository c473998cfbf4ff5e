"""Weights must fit the model exactly to evaluate or resume; initial weights may fit in part."""
import os
import shutil
import tempfile
import unittest

import torch
from torch import nn

import retinafocal  # noqa: F401  (compat before detectron2)
from retinafocal.checkpoint import AtomicDetectionCheckpointer, load_inference_weights
from retinafocal.weights_file import WeightsFileError
from retinafocal.weights_fit import (
    MAX_LISTED,
    MissingWeightsError,
    WeightsMismatchError,
    check_fit,
)


class Net(nn.Module):
    """A stand-in detector: a "backbone" and a "head" whose width is the class count, plus
    the pixel statistics detectron2 models hold as buffers."""

    def __init__(self, num_classes: int = 3, depth: int = 2):
        super().__init__()
        self.backbone = nn.Sequential(*[nn.Linear(4, 4) for _ in range(depth)])
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, num_classes)
        self.register_buffer("pixel_mean", torch.zeros(3))


class TestCheckFit(unittest.TestCase):
    MODEL = ["a.weight", "a.bias", "b.weight", "pixel_mean"]

    def test_exact_lists_every_kind_of_mismatch(self):
        with self.assertRaises(WeightsMismatchError) as ctx:
            check_fit("w.pth", self.MODEL, ["a.bias", "b.weight"], ["c.weight"],
                      [("b.weight", (5, 4), (3, 4))], exact=True)  # fmt: skip
        self.assertEqual(
            str(ctx.exception).split(". Use the config")[0],
            "w.pth does not fit the model: parameters and buffers 1 with another shape: "
            "b.weight (5, 4) in the file, (3, 4) in the model; 1 of the model's missing from "
            "the file: a.bias; 1 in the file that the model does not have: c.weight",
        )

    def test_exact_excuses_config_buffers_and_step_counters(self):
        # detectron2 already drops pixel_mean/std from missing_keys; step counters are ours.
        check_fit("w.pth", self.MODEL, ["norm.num_batches_tracked"], [], [], exact=True)
        with self.assertRaises(WeightsMismatchError):
            check_fit("w.pth", self.MODEL, ["norm.running_var"], [], [], exact=True)

    def test_exact_excuses_pixel_statistics_in_the_file(self):
        # Files of detectron2 versions that saved them as buffers; the config sets them now.
        check_fit("w.pth", self.MODEL, [], ["pixel_mean", "pixel_std"], [], exact=True)
        with self.assertRaisesRegex(WeightsMismatchError, "does not have: head.pixel_std"):
            check_fit("w.pth", self.MODEL, [], ["pixel_std", "head.pixel_std"], [], exact=True)

    def test_long_lists_are_cut(self):
        missing = [f"layer{i:02d}.weight" for i in range(MAX_LISTED + 3)]
        with self.assertRaisesRegex(WeightsMismatchError, r"layer09\.weight \(and 3 more\)"):
            check_fit("w.pth", missing, missing, [], [], exact=True)

    def test_initial_weights_may_fit_in_part_but_not_at_all(self):
        check_fit("w.pkl", self.MODEL, ["b.weight"], ["fc.weight"],
                  [("a.weight", (1,), (2,))], exact=False)  # fmt: skip  (a.bias fits)
        with self.assertRaisesRegex(WeightsMismatchError, "None of the model's parameters"):
            check_fit("w.pkl", self.MODEL, ["a.weight", "a.bias", "b.weight"], ["fc.weight"],
                      [], exact=False)  # fmt: skip


class TestCheckpointerFit(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="rf_fit_")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        torch.manual_seed(0)
        self.trained = Net()
        self.path = os.path.join(self.dir, "model_final.pth")
        AtomicDetectionCheckpointer(self.trained, self.dir).save("model_final")

    def test_class_count_mismatch_fails_an_evaluation(self):
        with self.assertRaises(WeightsMismatchError) as ctx:
            load_inference_weights(Net(num_classes=2), self.path, weights_key="MODEL.WEIGHTS")
        message = str(ctx.exception)
        self.assertIn(self.path, message)
        self.assertIn("head.weight (3, 4) in the file, (2, 4) in the model", message)
        self.assertIn("head.bias (3,) in the file, (2,) in the model", message)

    def test_an_evaluation_loads_a_file_with_pixel_statistics(self):
        # Net has no pixel_std buffer; checkpoints of older detectron2 versions hold it.
        state = {**self.trained.state_dict(), "pixel_std": torch.ones(3)}
        path = os.path.join(self.dir, "old_detectron2.pth")
        torch.save({"model": state, "iteration": 9}, path)
        model = Net()
        extra = load_inference_weights(model, path, weights_key="MODEL.WEIGHTS")
        self.assertEqual(extra, {"iteration": 9})
        self.assertTrue(torch.equal(model.head.weight, self.trained.head.weight))

    def test_depth_mismatch_fails_an_evaluation(self):
        with self.assertRaisesRegex(WeightsMismatchError, "missing from the file: backbone.2.bias"):
            load_inference_weights(Net(depth=3), self.path, weights_key="MODEL.WEIGHTS")
        with self.assertRaisesRegex(WeightsMismatchError, "model does not have: backbone.1.bias"):
            load_inference_weights(Net(depth=1), self.path, weights_key="MODEL.WEIGHTS")

    def test_fine_tuning_to_another_class_count_keeps_working(self):
        model = Net(num_classes=2)
        AtomicDetectionCheckpointer(model).resume_or_load(self.path, resume=False)
        self.assertTrue(torch.equal(model.backbone[0].weight, self.trained.backbone[0].weight))

    def test_checkpointables_given_by_position_or_by_name(self):
        """fvcore's ``load(path, checkpointables)``: an empty list in either form loads initial
        weights only (a partial fit is fine, the optimizer keeps its own state); none at all
        restores the whole state, which must fit."""
        trained_optimizer = torch.optim.SGD(self.trained.parameters(), lr=0.5)
        AtomicDetectionCheckpointer(self.trained, self.dir, optimizer=trained_optimizer).save(
            "with_optimizer"
        )
        path = os.path.join(self.dir, "with_optimizer.pth")
        for args, kwargs in (([[]], {}), ([], {"checkpointables": []})):
            with self.subTest(args=args, kwargs=kwargs):
                model = Net(num_classes=2)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
                checkpointer = AtomicDetectionCheckpointer(model, optimizer=optimizer)
                unused = checkpointer.load(path, *args, **kwargs)
                self.assertEqual(list(unused), ["optimizer"])  # returned, not restored
                self.assertTrue(torch.equal(model.backbone[0].weight,
                                            self.trained.backbone[0].weight))  # fmt: skip
                self.assertEqual(optimizer.param_groups[0]["lr"], 0.1)
        with self.assertRaisesRegex(WeightsMismatchError, r"head.weight \(3, 4\) in the file"):
            AtomicDetectionCheckpointer(Net(num_classes=2)).load(path)

    def test_resume_needs_the_same_model(self):
        with self.assertRaisesRegex(WeightsMismatchError, r"head.weight \(3, 4\) in the file"):
            AtomicDetectionCheckpointer(Net(num_classes=2), self.dir).resume_or_load(
                "", resume=True
            )

    def test_missing_weights_need_the_flag(self):
        with self.assertRaises(MissingWeightsError) as ctx:
            load_inference_weights(Net(), "", weights_key="MODEL.WEIGHTS")
        self.assertIn("MODEL.WEIGHTS is empty", str(ctx.exception))
        self.assertIn("--random-weights", str(ctx.exception))
        with self.assertRaisesRegex(MissingWeightsError, r"train.init_checkpoint=output/"):
            load_inference_weights(Net(), "", weights_key="train.init_checkpoint")
        model = Net()
        before = model.head.weight.clone()
        self.assertEqual(
            load_inference_weights(model, "", weights_key="MODEL.WEIGHTS", random_weights=True),
            {},
        )
        self.assertTrue(torch.equal(model.head.weight, before))
        with self.assertRaisesRegex(WeightsFileError, "drop one"):
            load_inference_weights(Net(), self.path, weights_key="MODEL.WEIGHTS",
                                   random_weights=True)  # fmt: skip

    def test_resume_in_evaluation_takes_the_last_checkpoint(self):
        model = Net()
        load_inference_weights(model, "", weights_key="MODEL.WEIGHTS", save_dir=self.dir,
                               resume=True)  # fmt: skip
        self.assertTrue(torch.equal(model.head.weight, self.trained.head.weight))
        empty = tempfile.mkdtemp(dir=self.dir)
        with self.assertRaisesRegex(MissingWeightsError, "has no checkpoint to resume from"):
            load_inference_weights(Net(), "", weights_key="MODEL.WEIGHTS", save_dir=empty,
                                   resume=True)  # fmt: skip

    def test_messages_without_weights(self):
        """The exact words for each config style, and the warning of a random model."""
        cases = (
            ("MODEL.WEIGHTS", {}, "MODEL.WEIGHTS is empty. Give the checkpoint to use (e.g. "
             "MODEL.WEIGHTS output/model_final.pth)"),
            ("train.init_checkpoint", {"save_dir": self.dir + "/none", "resume": True},
             f"train.init_checkpoint is empty, and {self.dir}/none has no checkpoint to resume "
             "from. Give the checkpoint to use (e.g. train.init_checkpoint=output/"
             "model_final.pth)"),
        )  # fmt: skip
        for key, kwargs, middle in cases:
            with self.subTest(key=key), self.assertRaises(MissingWeightsError) as ctx:
                load_inference_weights(Net(), "", weights_key=key, **kwargs)
            self.assertEqual(str(ctx.exception), (
                f"No weights to run the model with: {middle}, or pass --random-weights to run a "
                "randomly initialised model on purpose."
            ))  # fmt: skip
        with self.assertLogs("retinafocal.checkpoint", "WARNING") as logs:
            load_inference_weights(Net(), "", weights_key="MODEL.WEIGHTS", random_weights=True)
        self.assertEqual(logs.records[0].getMessage(), (
            "No weights (MODEL.WEIGHTS is empty): the model keeps its random initialisation "
            "(--random-weights); its outputs mean nothing"
        ))  # fmt: skip

    def test_given_weights_win_unless_resuming(self):
        torch.manual_seed(1)
        other = Net()
        other_path = os.path.join(tempfile.mkdtemp(dir=self.dir), "other.pth")
        torch.save({"model": other.state_dict()}, other_path)
        model = Net()
        load_inference_weights(model, other_path, weights_key="MODEL.WEIGHTS", save_dir=self.dir)
        self.assertTrue(torch.equal(model.head.weight, other.head.weight))
        load_inference_weights(model, other_path, weights_key="MODEL.WEIGHTS", save_dir=self.dir,
                               resume=True)  # fmt: skip
        self.assertTrue(torch.equal(model.head.weight, self.trained.head.weight))
        with self.assertRaises(ValueError) as ctx:
            load_inference_weights(model, other_path, weights_key="MODEL.WEIGHTS", resume=True)
        self.assertEqual(
            str(ctx.exception), "load_inference_weights: resume needs the save_dir to resume from"
        )


if __name__ == "__main__":
    unittest.main()
