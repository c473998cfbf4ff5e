"""AtomicDetectionCheckpointer.resume_or_load: which file it takes, and the words of its log and
errors when the tagged checkpoint cannot be used."""
import os
import shutil
import tempfile
import time
import unittest

import torch

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from retinafocal.checkpoint import AtomicDetectionCheckpointer, CorruptCheckpointError

from .checkpoint_case import CheckpointTestCase

LOGGER = "fvcore.common.checkpoint"


class TestResumeOrLoad(CheckpointTestCase):
    PREFIX = "retinafocal_resume_"

    def save(self, iteration: int, fill: float, mtime: float) -> str:
        """Save a checkpoint whose weights are all ``fill``, modified at ``mtime``."""
        with torch.no_grad():
            self.model.weight.fill_(fill)
        name = f"model_{iteration:07d}"
        AtomicDetectionCheckpointer(self.model, self.dir, optimizer=self.optimizer).save(
            name, iteration=iteration
        )
        path = os.path.join(self.dir, name + ".pth")
        os.utime(path, (mtime, mtime))
        return path

    @staticmethod
    def damage(path: str) -> None:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)

    def test_resume_is_the_default(self):
        """As fvcore's: without ``resume=``, the last checkpoint wins over the given weights."""
        self.save(5, 5.0, time.time())
        model = torch.nn.Linear(4, 3)
        extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load("unused.pth")
        self.assertEqual(extra["iteration"], 5)
        self.assertTrue(torch.all(model.weight == 5.0))

    def test_without_resume_the_given_weights_win_over_the_last_checkpoint(self):
        """A new run that starts from other weights in a folder with checkpoints of an earlier
        run must load those weights (the model only), not resume the earlier run."""
        self.save(5, 5.0, time.time())
        weights_dir = tempfile.mkdtemp(prefix="retinafocal_weights_")
        self.addCleanup(shutil.rmtree, weights_dir, ignore_errors=True)
        weights = os.path.join(weights_dir, "init.pth")
        torch.save({"model": {"weight": torch.full((3, 4), 7.0), "bias": torch.zeros(3)}}, weights)
        model = torch.nn.Linear(4, 3)
        extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load(weights, resume=False)
        self.assertEqual(extra, {})
        self.assertTrue(torch.all(model.weight == 7.0))

    def test_each_unreadable_checkpoint_is_logged_once_newest_first(self):
        """The tagged file is tried once (not again among the fallbacks); each damaged fallback
        is named in the log; the newest readable one is used."""
        start = time.time() - 100
        paths = [self.save(it, float(it), start + it) for it in (1, 2, 3)]
        self.damage(paths[2])
        self.damage(paths[1])
        model = torch.nn.Linear(4, 3)
        with self.assertLogs(LOGGER) as logs:
            extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load("", resume=True)
        self.assertEqual(extra["iteration"], 1)
        self.assertTrue(torch.all(model.weight == 1.0))
        unreadable = "Checkpoint {} cannot be read; it is truncated or corrupt (RuntimeError: "
        loads = [r.getMessage() for r in logs.records if r.levelname == "INFO"]
        self.assertEqual(loads, [f"[Checkpointer] Loading from {p} ..." for p in paths[::-1]])
        problems = [r for r in logs.records if r.levelname != "INFO"]
        self.assertEqual(len(problems), 3, logs.output)
        first, second, third = problems
        self.assertEqual((first.levelname, second.levelname, third.levelname),
                         ("ERROR", "ERROR", "WARNING"))  # fmt: skip
        self.assertTrue(first.getMessage().startswith(
            "Cannot resume from the last checkpoint: " + unreadable.format(paths[2])
        ), first.getMessage())  # fmt: skip
        self.assertTrue(second.getMessage().startswith(unreadable.format(paths[1])))
        self.assertEqual(third.getMessage(), f"Resumed from {paths[0]} instead")

    def test_unreadable_last_checkpoint_tag(self):
        """``last_checkpoint`` exists but cannot be read (here a folder): it names nothing, and
        with no readable checkpoint the error says what to do."""
        path = self.save(1, 1.0, time.time())
        tag = os.path.join(self.dir, "last_checkpoint")
        os.remove(tag)
        os.mkdir(tag)
        model = torch.nn.Linear(4, 3)
        with self.assertLogs(LOGGER, "ERROR") as logs:
            extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load("", resume=True)
        self.assertEqual(extra["iteration"], 1)
        self.assertEqual(logs.records[0].getMessage(), "Cannot resume from the last checkpoint: "
                         "last_checkpoint names nothing, which does not exist")  # fmt: skip
        self.damage(path)
        with self.assertLogs(LOGGER, "ERROR"), self.assertRaises(CorruptCheckpointError) as ctx:
            AtomicDetectionCheckpointer(model, self.dir).resume_or_load("", resume=True)
        self.assertEqual(str(ctx.exception), (
            f"Cannot resume from {self.dir}: last_checkpoint names nothing, which does not "
            "exist, and no other checkpoint there is readable. Start without --resume (or "
            "restore a checkpoint) to go on."
        ))  # fmt: skip


if __name__ == "__main__":
    unittest.main()
