"""``--resume`` continues from the last checkpoint with the same iteration counter and LR.

A run of 4 iterations is interrupted (an exception) after iteration 1, whose checkpoint is on
disk; the resumed run must start at iteration 2 with the weights of that checkpoint, and see at
every iteration the LR that an uninterrupted run sees.
"""
import os
import unittest

import retinafocal  # noqa: F401  (compat first, before detectron2)
import torch
from detectron2.config import LazyConfig
from detectron2.engine import HookBase

from retinafocal.config_overrides import apply_lazy_overrides
from retinafocal.data import register_coco_json_datasets
from retinafocal.engine import Trainer, build_lazy_trainer, register_lazy_datasets

from .common import (
    CONFIG_DIR,
    TinyShapesFixture,
    embedded_yacs_cfg,
    lazy_tiny_overrides,
    yacs_tiny_overrides,
)

MAX_ITER = 4


class _Interrupt(Exception):
    pass


class _Recorder(HookBase):
    """Records (iteration, LR) before each step and the first step's weights; raises
    :class:`_Interrupt` after iteration ``stop_after``."""

    def __init__(self, stop_after=None):
        self.seen = []
        self.stop_after = stop_after
        self.first_weights = None

    def before_step(self):
        if self.first_weights is None:
            model = self.trainer.model
            self.first_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.seen.append((self.trainer.iter, self.trainer.optimizer.param_groups[0]["lr"]))

    def after_step(self):
        if self.trainer.iter == self.stop_after:
            raise _Interrupt()


class _ResumeMixin(TinyShapesFixture):
    """Subclasses define ``_train(output_dir, recorder, resume)`` for one config path."""

    tmp_prefix = "rf_resume_"

    def test_resume_continues_iteration_and_lr(self):
        full = _Recorder()
        self._train(os.path.join(self._tmp, "full"), full, resume=False)
        self.assertEqual([it for it, _ in full.seen], list(range(MAX_ITER)))
        lrs = dict(full.seen)
        # The schedule must make the check meaningful: the LR changes at every iteration.
        self.assertEqual(len(set(lrs.values())), MAX_ITER)

        out = os.path.join(self._tmp, "interrupted")
        first = _Recorder(stop_after=1)
        with self.assertRaises(_Interrupt):
            self._train(out, first, resume=False)
        self.assertEqual([it for it, _ in first.seen], [0, 1])
        with open(os.path.join(out, "last_checkpoint")) as f:
            checkpoint = os.path.join(out, f.read().strip())
        self.assertEqual(torch.load(checkpoint, weights_only=False)["iteration"], 1)

        second = _Recorder()
        self._train(out, second, resume=True)
        self.assertEqual([it for it, _ in second.seen], [2, 3])
        for it, lr in second.seen:
            self.assertAlmostEqual(lr, lrs[it], places=12, msg=f"LR at iteration {it}")
        saved = torch.load(checkpoint, weights_only=False)["model"]
        for k, v in second.first_weights.items():
            torch.testing.assert_close(v, torch.as_tensor(saved[k]), msg=k)


class TestYacsResume(_ResumeMixin, unittest.TestCase):
    def _train(self, output_dir, recorder, resume):
        cfg = embedded_yacs_cfg(yacs_tiny_overrides(self.data, output_dir, iters=MAX_ITER) + [
            "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "8",
        ])  # fmt: skip
        register_coco_json_datasets(cfg.DATASETS.COCO_JSON)
        cfg.freeze()
        trainer = Trainer(cfg)
        trainer.register_hooks([recorder])
        trainer.resume_or_load(resume=resume)
        trainer.train()


class TestLazyResume(_ResumeMixin, unittest.TestCase):
    def _train(self, output_dir, recorder, resume):
        cfg = LazyConfig.load(os.path.join(CONFIG_DIR, "Embedded", "retinanet_R18_FPN_shapes.py"))
        apply_lazy_overrides(cfg, lazy_tiny_overrides(self.data, output_dir, iters=MAX_ITER) + [
            "train.checkpointer.period=2", "train.eval_period=0",
        ])  # fmt: skip
        register_lazy_datasets(cfg)
        trainer, checkpointer = build_lazy_trainer(cfg)
        trainer.register_hooks([recorder])
        checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
        start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
        trainer.train(start_iter, cfg.train.max_iter)


if __name__ == "__main__":
    unittest.main()
