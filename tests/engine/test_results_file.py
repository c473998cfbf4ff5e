"""``results.json``: written by every train_net.py run (yacs, LazyConfig, --eval-only) from what
detectron2 keeps, and on a non-finite loss; InferenceStats' figures on a hand-made clock."""
import json
import math
import os
import tempfile
import unittest
from collections import OrderedDict
from unittest import mock

import torch
from torch import nn

from retinafocal.engine import InferenceStats, evaluation_results, results, write_results

from .common import (
    CONFIG_DIR,
    TinyShapesFixture,
    lazy_tiny_overrides,
    run_train_net,
    yacs_tiny_overrides,
)

SCHEMA_KEYS = {
    "schema", "status", "eval_only", "iterations", "max_iter", "train_seconds", "s_per_iter",
    "bbox", "inference_s_per_image", "no_detections", "loss_history", "loss_extremes",
    "evaluations", "non_finite",
}  # fmt: skip


def _read(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


class TestTrainNetWritesResults(TinyShapesFixture, unittest.TestCase):
    tmp_prefix = "rf_results_"

    def check_training(self, out, returned, iters):
        written = _read(out)
        self.assertEqual(set(written), SCHEMA_KEYS)
        self.assertEqual((written["schema"], written["status"]), (2, "completed"))
        self.assertEqual((written["iterations"], written["max_iter"]), (iters, iters))
        self.assertFalse(written["eval_only"])
        self.assertIsNone(written["non_finite"])
        # The metrics are those train_net.py returned (COCOEvaluator's), NaN written as null.
        for key, value in returned["bbox"].items():
            self.assertEqual(written["bbox"][key], None if math.isnan(value) else value, key)
        self.assertAlmostEqual(written["inference_s_per_image"],
                               returned["inference"]["s_per_image"])  # fmt: skip
        self.assertGreater(written["inference_s_per_image"], 0)
        self.assertFalse(written["no_detections"])
        # IterationTimer times the iterations after its 3 warm-up ones... in detectron2's way:
        # iterations 2 .. iters - 1.
        self.assertGreater(written["s_per_iter"], 0)
        self.assertAlmostEqual(written["train_seconds"], written["s_per_iter"] * (iters - 2))
        # One point per 20 iterations and the last: here the last only, the median of all.
        history = written["loss_history"]
        self.assertEqual(history["iteration"], [iters - 1])
        self.assertTrue({"total_loss", "loss_cls", "loss_box_reg"} <= set(history))
        self.assertGreater(history["total_loss"][0], 0)
        # The first iteration's own losses, and the largest: at least the median of all.
        extremes = written["loss_extremes"]
        self.assertEqual(extremes["first"]["iteration"], 0)
        self.assertGreaterEqual(extremes["largest"]["total_loss"], history["total_loss"][0])
        self.assertGreaterEqual(extremes["largest"]["total_loss"],
                                extremes["first"]["total_loss"])  # fmt: skip
        # The final evaluation is in the history, at the last iteration, with the final AP.
        evaluations = written["evaluations"]
        self.assertEqual(evaluations["iteration"][-1], iters)
        final_ap = returned["bbox"]["AP"]
        self.assertEqual(evaluations["AP"][-1], None if math.isnan(final_ap) else final_ap)
        return written

    def test_yacs_training_then_eval_only(self):
        config = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.yaml")
        out = os.path.join(self._tmp, "yacs")
        # Keep every detection of the barely trained model, so that AP is a number.
        opts = yacs_tiny_overrides(self.data, out, iters=4) + [
            "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"]  # fmt: skip
        # Also an evaluation after 3 of the 4 iterations (detectron2's periodic EvalHook).
        trained = run_train_net(["--config-file", config, *opts, "TEST.EVAL_PERIOD", "3"])
        written = self.check_training(out, trained, iters=4)
        self.assertEqual(written["evaluations"]["iteration"], [3, 4])
        self.assertIsNotNone(written["evaluations"]["AP"][0])

        eval_dir = os.path.join(self._tmp, "yacs_eval")
        weights = ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "OUTPUT_DIR", eval_dir]
        evaluated = run_train_net(["--config-file", config, "--eval-only", *opts, *weights])
        written = _read(eval_dir)
        self.assertEqual(set(written), SCHEMA_KEYS)
        self.assertEqual((written["status"], written["eval_only"]), ("completed", True))
        self.assertEqual((written["iterations"], written["max_iter"]), (0, 0))
        self.assertIsNone(written["s_per_iter"])
        self.assertEqual(written["bbox"]["AP"], evaluated["bbox"]["AP"])
        self.assertEqual(written["bbox"]["AP"], trained["bbox"]["AP"])
        self.assertEqual((written["loss_extremes"], written["evaluations"]), ({}, {}))

        # A threshold no score reaches: no detection, AP 0 with a note (pycocotools gives NaN),
        # flagged.
        nothing_dir = os.path.join(self._tmp, "yacs_nothing")
        opts_nothing = opts + weights[:2] + ["OUTPUT_DIR", nothing_dir,
                                             "MODEL.RETINANET.SCORE_THRESH_TEST", "1.0"]
        with self.assertLogs("retinafocal.engine.evaluation", "WARNING") as logs:
            returned = run_train_net(["--config-file", config, "--eval-only", *opts_nothing])
        self.assertIn("no detection", "\n".join(logs.output))
        self.assertEqual(returned["bbox"]["AP"], 0.0)
        written = _read(nothing_dir)
        self.assertTrue(written["no_detections"])
        self.assertEqual((written["bbox"]["AP"], written["bbox"]["AP50"]), (0.0, 0.0))

        # An evaluation that fails (here: no such weights file) leaves no results.json, not
        # the one of the run before it in the same directory.
        missing = ["MODEL.WEIGHTS", os.path.join(out, "no_such_model.pth")]
        with self.assertRaisesRegex(AssertionError, "no_such_model.pth not found"):  # fvcore's
            run_train_net(["--config-file", config, "--eval-only", *opts_nothing, *missing])
        self.assertFalse(os.path.exists(os.path.join(nothing_dir, "results.json")))

    def test_lazy_training(self):
        config = os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py")
        out = os.path.join(self._tmp, "lazy")
        opts = lazy_tiny_overrides(self.data, out, iters=4) + ["model.test_score_thresh=0.0"]
        trained = run_train_net(["--config-file", config, *opts])
        self.check_training(out, trained, iters=4)


class _Storage:
    """The part of detectron2's EventStorage the writer reads."""

    def __init__(self, histories):
        self._histories = histories

    def histories(self):
        return self._histories


class _History:
    def __init__(self, pairs):
        self._pairs = pairs

    def values(self):
        return self._pairs


class TestTrainingResults(unittest.TestCase):
    def test_windows_medians_and_non_finite_stop(self):
        from retinafocal.engine import NonFiniteLossError

        # 45 iterations; total_loss = iteration, loss_cls = 2 x iteration, one NaN in loss_cls.
        total = [(float(i), i) for i in range(45)]
        cls_ = [(float("nan") if i == 44 else 2.0 * i, i) for i in range(45)]
        times = [(0.5, i) for i in range(2, 45)]
        trainer = mock.Mock(iter=45, max_iter=100, _last_eval_results=OrderedDict())
        trainer.storage = _Storage({"total_loss": _History(total), "loss_cls": _History(cls_),
                                    "time": _History(times), "lr": _History(total)})
        error = NonFiniteLossError(45, ["loss_cls"], "/out/model_0000039.pth", "losses {...}")
        out = results.training_results(trainer, error=error)
        self.assertEqual(out["status"], "non_finite_loss")
        self.assertEqual(out["non_finite"], {"iteration": 45, "terms": ["loss_cls"],
                                             "checkpoint": "/out/model_0000039.pth"})
        self.assertEqual((out["iterations"], out["max_iter"]), (45, 100))
        self.assertEqual((out["s_per_iter"], out["train_seconds"]), (0.5, 0.5 * 43))
        self.assertIsNone(out["bbox"])
        history = out["loss_history"]
        self.assertEqual(set(history), {"iteration", "total_loss", "loss_cls"})  # no "lr"
        self.assertEqual(history["iteration"], [19, 39, 44])
        # Medians of iterations 0-19, 20-39 and 25-44 (the last 20).
        self.assertEqual(history["total_loss"], [9.5, 29.5, 34.5])
        # The window with the NaN has no finite median: null.
        self.assertEqual(history["loss_cls"][:2], [19.0, 59.0])
        self.assertIsNone(history["loss_cls"][2])

    def test_non_finite_weights_stop(self):
        from retinafocal.checkpoint import NonFiniteWeightsError

        # The checkpoint after iteration 39 (the 40th) was refused: 40 iterations were done.
        trainer = mock.Mock(iter=39, max_iter=100, _last_eval_results=None)
        trainer.storage = _Storage({"total_loss": _History([(1.0, i) for i in range(40)])})
        last = "/out/model_0000019.pth"
        error = NonFiniteWeightsError("/out/model_0000039.pth", 39, ["model.w"], last)
        out = results.training_results(trainer, error=error)
        self.assertEqual(out["status"], "non_finite_weights")
        self.assertEqual(out["non_finite"], {"iteration": 39, "terms": ["model.w"],
                                             "checkpoint": last})  # fmt: skip
        self.assertEqual((out["iterations"], out["max_iter"]), (40, 100))
        self.assertEqual(out["loss_history"]["iteration"], [19, 39])

    def test_loss_extremes_and_evaluations(self):
        # total_loss peaks at iteration 3 (an inf at 4 is not finite, so not the largest);
        # evaluations after iteration 5 (periodic) and after training (storage iteration 10).
        total = [(v, i) for i, v in enumerate([4.0, 6.0, 2.0, 9.0, float("inf"), 1.0])]
        cls_ = [(v / 2, i) for v, i in total]
        evals = {"bbox/AP": [(12.5, 5), (float("nan"), 10)], "bbox/AP50": [(30.0, 5), (40.0, 10)]}
        trainer = mock.Mock(iter=10, max_iter=10, _last_eval_results=OrderedDict())
        trainer.storage = _Storage({"total_loss": _History(total), "loss_cls": _History(cls_),
                                    **{k: _History(v) for k, v in evals.items()}})
        out = results.training_results(trainer)
        self.assertEqual(out["loss_extremes"], {
            "first": {"iteration": 0, "total_loss": 4.0, "loss_cls": 2.0},
            "largest": {"iteration": 3, "total_loss": 9.0, "loss_cls": 4.5},
        })  # fmt: skip
        self.assertEqual(out["evaluations"], {"iteration": [6, 10], "AP": [12.5, None],
                                              "AP50": [30.0, 40.0], "AP75": [None, None]})
        # With several test sets, the first set's metrics.
        trainer.storage = _Storage({
            "val_a/bbox/AP": _History([(1.0, 10)]), "val_b/bbox/AP": _History([(2.0, 10)])})
        self.assertEqual(results.training_results(trainer)["evaluations"]["AP"], [1.0])

    def test_several_test_sets_report_the_first(self):
        evaluation = OrderedDict([
            ("val_a", {"bbox": {"AP": 12.5, "APs": float("nan")},
                       "inference": {"s_per_image": 0.25, "images": 4.0, "detections": 9.0}}),
            ("val_b", {"bbox": {"AP": 50.0}}),
        ])  # fmt: skip
        out = evaluation_results(evaluation)
        self.assertEqual(out["bbox"], {"AP": 12.5, "APs": None})
        self.assertEqual(out["inference_s_per_image"], 0.25)
        self.assertFalse(out["no_detections"])

    def test_a_crash_leaves_no_earlier_results(self):
        """Only a completed or non-finite stop writes results.json; any other error leaves none,
        and other processes leave the main process's file alone."""
        with tempfile.TemporaryDirectory() as tmp:
            write_results(tmp, evaluation_results({}))
            for main_process, left in ((False, ["results.json"]), (True, [])):
                with mock.patch.object(results.comm, "is_main_process", return_value=main_process):
                    with self.assertRaisesRegex(MemoryError, "out of memory"):
                        with results.recording_results(tmp, mock.Mock()):
                            raise MemoryError("out of memory")
                self.assertEqual(os.listdir(tmp), left)

    def test_only_the_main_process_writes(self):
        with tempfile.TemporaryDirectory() as tmp:
            self.assertTrue(hasattr(results.comm, "is_main_process"))
            with mock.patch.object(results.comm, "is_main_process", return_value=False):
                self.assertIsNone(write_results(tmp, evaluation_results({})))
            self.assertEqual(os.listdir(tmp), [])
            path = write_results(tmp, evaluation_results({}))
            self.assertEqual(os.listdir(tmp), ["results.json"])
            self.assertIsNone(_read(tmp)["bbox"])
            self.assertEqual(path, os.path.join(tmp, "results.json"))


class _Clock:
    now = 0.0

    def __call__(self):
        return self.now


class _Detector(nn.Module):
    """Each input says what its image costs: ``seconds`` on the fake clock and ``detections``,
    the number of instances returned for it."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def forward(self, batched_inputs):
        self.clock.now += sum(x["seconds"] for x in batched_inputs)
        return [{"instances": torch.zeros(x["detections"])} for x in batched_inputs]


class TestInferenceStats(unittest.TestCase):
    def run_evaluation(self, batches, warmup=5):
        """``batches``: per model call, one (seconds, detections) pair per image."""
        clock = _Clock()
        model = _Detector(clock)
        stats = InferenceStats(model, warmup=warmup, clock=clock)
        stats.reset()
        for batch in batches:
            inputs = [{"seconds": t, "detections": d} for t, d in batch]
            stats.process(inputs, model(inputs))
        out = stats.evaluate()["inference"]
        # The hooks are gone after the evaluation: later calls are not timed (repr: NaN == NaN).
        model([{"seconds": 100.0, "detections": 0}])
        self.assertEqual(repr(stats.evaluate()["inference"]), repr(out))
        return out

    def test_time_per_image_after_warmup(self):
        # 5 slow warm-up calls (10 s) are left out; then 1 image in 1 s, and 3 in 2 + 3 + 3 s.
        warm = [[(10.0, 1)]] * 5
        out = self.run_evaluation(warm + [[(1.0, 2)], [(2.0, 0), (3.0, 3), (3.0, 1)]], warmup=5)
        self.assertEqual(out["s_per_image"], (1.0 + 8.0) / 4)
        self.assertEqual(out["images"], 5 + 1 + 3)
        self.assertEqual(out["detections"], 5 * 1 + 2 + (0 + 3 + 1))

    def test_a_single_call_is_timed_even_within_warmup(self):
        out = self.run_evaluation([[(1.0, 0), (3.0, 0)]], warmup=5)
        self.assertEqual((out["s_per_image"], out["detections"]), (2.0, 0.0))

    def test_no_call_gives_nan(self):
        self.assertTrue(math.isnan(self.run_evaluation([])["s_per_image"]))


if __name__ == "__main__":
    unittest.main()
