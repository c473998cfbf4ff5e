"""A NaN in an input image stops training with a FloatingPointError that names the iteration,
the non-finite loss terms and the last good checkpoint, before the weights are touched; the
run's results.json says the same."""
import json
import os
import pickle
import shutil
import tempfile
import unittest
from unittest import mock

import retinafocal  # noqa: F401  (compat first, before detectron2)
import torch
from detectron2.engine import HookBase

from retinafocal.data import register_coco_json_datasets
from retinafocal.engine import NonFiniteLossError, Trainer, checked_trainer

from .common import embedded_yacs_cfg, tiny_shapes, yacs_tiny_overrides

POISONED_ITER = 2


def _poison_from(loader, first_poisoned: int):
    """Yield the loader's batches; from batch ``first_poisoned`` on, the first image is float with
    one NaN pixel (the model normalises float images like uint8 ones)."""
    for i, batch in enumerate(loader):
        if i >= first_poisoned:
            image = batch[0]["image"].float()
            image[0, 0, 0] = float("nan")
            batch[0]["image"] = image
        yield batch


class _PoisonedTrainer(Trainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return _poison_from(super().build_train_loader(cfg), POISONED_ITER)


class _WeightsAfterStep(HookBase):
    def after_step(self):
        model = self.trainer.model
        self.weights = {k: v.detach().clone() for k, v in model.named_parameters()}


class TestNonFiniteLoss(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.mkdtemp(prefix="rf_nan_")
        self.data = tiny_shapes(os.path.join(self._tmp, "data"))

    def tearDown(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def test_nan_input_raises_named_error_before_the_step(self):
        output_dir = os.path.join(self._tmp, "out")
        cfg = embedded_yacs_cfg(yacs_tiny_overrides(self.data, output_dir, iters=5) + [
            "SOLVER.CHECKPOINT_PERIOD", "2",
        ])  # fmt: skip
        register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
        cfg.freeze()

        trainer = _PoisonedTrainer(cfg)
        weights = _WeightsAfterStep()
        trainer.register_hooks([weights])
        trainer.resume_or_load(resume=False)
        with self.assertRaises(FloatingPointError) as caught:
            trainer.train()

        err = caught.exception
        self.assertIsInstance(err, NonFiniteLossError)
        self.assertEqual(err.iteration, POISONED_ITER)
        checkpoint = os.path.join(output_dir, "model_0000001.pth")
        self.assertEqual(err.checkpoint, checkpoint)
        message = str(err)
        self.assertIn(f"iteration {POISONED_ITER}", message)
        self.assertIn("loss_cls", message)
        self.assertIn(checkpoint, message)

        with open(os.path.join(output_dir, "results.json")) as f:
            written = json.load(f)
        self.assertEqual(written["status"], "non_finite_loss")
        self.assertEqual(written["non_finite"], {"iteration": POISONED_ITER, "terms": err.terms,
                                                 "checkpoint": checkpoint})  # fmt: skip
        self.assertIn("loss_cls", written["non_finite"]["terms"])
        self.assertEqual((written["iterations"], written["max_iter"]), (POISONED_ITER, 5))
        self.assertEqual(written["loss_history"]["iteration"], [POISONED_ITER - 1])
        self.assertIsNone(written["bbox"])  # no evaluation after a stop

        # The failing iteration did not step the optimizer: the parameters are those after
        # iteration 1, which the named checkpoint holds, and finite. (BatchNorm's running
        # statistics did see the NaN in the forward pass; the checkpoint is the state to use.)
        saved = torch.load(checkpoint, weights_only=False)["model"]
        for k, v in trainer.model.named_parameters():
            self.assertTrue(torch.isfinite(v.float()).all(), k)
            torch.testing.assert_close(v, weights.weights[k], msg=k)
            torch.testing.assert_close(v, torch.as_tensor(saved[k]), msg=k)


class TestNonFiniteLossErrorPickles(unittest.TestCase):
    def test_round_trip(self):
        # A training run in a process pool (a sweep) hands its error back pickled.
        err = NonFiniteLossError(7, ["loss_cls"], "out/model_0000004.pth", "losses {...}")
        copy = pickle.loads(pickle.dumps(err))
        self.assertEqual((type(copy), str(copy)), (NonFiniteLossError, str(err)))
        self.assertEqual((copy.iteration, copy.terms, copy.checkpoint, copy.detail),
                         (7, ["loss_cls"], "out/model_0000004.pth", "losses {...}"))  # fmt: skip


class _Toy(torch.nn.Module):
    """One weight; ``loss_scaled`` takes the batch's value, so a NaN batch makes it NaN."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, batch):
        return {"loss_plain": self.weight**2, "loss_scaled": self.weight * batch}


class TestTheOneCheck(unittest.TestCase):
    def _train(self, batches, checkpointer=None):
        model = _Toy()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = checked_trainer(model, batches, optimizer, amp=False, checkpointer=checkpointer)
        weights = _WeightsAfterStep()
        trainer.register_hooks([weights])
        with self.assertRaises(FloatingPointError) as caught:
            trainer.train(0, len(batches))
        return caught.exception, model, weights

    def test_named_error_before_detectron2s_and_before_the_step(self):
        """detectron2's own check of the summed loss would raise a bare FloatingPointError from
        the same method; ours runs first and names the term and the iteration."""
        batches = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(float("nan"))]
        err, model, weights = self._train(batches)
        self.assertIsInstance(err, NonFiniteLossError)
        self.assertEqual((err.iteration, err.terms, err.checkpoint), (2, ["loss_scaled"], ""))
        self.assertIn("iteration 2: non-finite term(s) loss_scaled", str(err))
        self.assertIn("No checkpoint has been written yet", str(err))
        self.assertEqual(model.weight.item(), weights.weights["weight"].item())  # no step taken
        self.assertTrue(torch.isfinite(model.weight))

    def test_infinity_and_the_checkpoint_are_named(self):
        checkpointer = mock.Mock()
        checkpointer.has_checkpoint.return_value = True
        checkpointer.get_checkpoint_file.return_value = "/out/model_0000007.pth"
        err, _, _ = self._train([torch.tensor(float("inf"))], checkpointer)
        self.assertEqual((err.iteration, err.terms), (0, ["loss_scaled"]))
        self.assertEqual(err.checkpoint, "/out/model_0000007.pth")
        self.assertIn("The last checkpoint is /out/model_0000007.pth", str(err))


if __name__ == "__main__":
    unittest.main()
