"""AtomicDetectionCheckpointer: an interrupted save never damages the last good checkpoint."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

import torch

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.checkpoint import DetectionCheckpointer
from retinafocal import checkpoint as rf_checkpoint
from retinafocal import compat
from retinafocal.checkpoint import (
    AtomicDetectionCheckpointer,
    CorruptCheckpointError,
    DiskFullError,
    NonFiniteWeightsError,
    non_finite_tensors,
)

from .checkpoint_case import CheckpointTestCase

HERE = os.path.dirname(os.path.abspath(__file__))


class _Interrupted(Exception):
    pass


def half_write_then_fail(obj, f):
    """Stands in for torch.save: writes half of the real bytes, then fails (a disk full, a
    kill)."""
    import io

    buffer = io.BytesIO()
    _REAL_TORCH_SAVE(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    raise _Interrupted()


_REAL_TORCH_SAVE = torch.save


class TestAtomicCheckpointer(CheckpointTestCase):
    def checkpointer(self, cls=AtomicDetectionCheckpointer, model=None):
        model = model if model is not None else self.model
        return cls(model, self.dir, optimizer=self.optimizer, scheduler=self.scheduler)

    def fresh_resume(self):
        """Resume into a new model, as a restarted job would; returns (model, extra data)."""
        model = torch.nn.Linear(4, 3)
        extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load("", resume=True)
        return model, extra

    def test_round_trip_and_no_leftovers(self):
        self.checkpointer().save("model_0000004", iteration=4)
        self.assertEqual(sorted(os.listdir(self.dir)), ["last_checkpoint", "model_0000004.pth"])
        model, extra = self.fresh_resume()
        self.assertEqual(extra["iteration"], 4)
        self.assertTrue(torch.equal(model.weight, self.model.weight))
        # Same content as detectron2's own checkpointer writes.
        plain = torch.load(os.path.join(self.dir, "model_0000004.pth"))
        self.assertEqual(set(plain), {"model", "optimizer", "scheduler", "iteration"})

    def test_interrupted_save_keeps_previous_checkpoint(self):
        checkpointer = self.checkpointer()
        checkpointer.save("model_0000001", iteration=1)
        reference = self.model.weight.detach().clone()
        with torch.no_grad():
            self.model.weight.add_(1.0)
        with mock.patch.object(rf_checkpoint.torch, "save", half_write_then_fail):
            with self.assertRaises(_Interrupted):
                checkpointer.save("model_0000002", iteration=2)
            with self.assertRaises(_Interrupted):
                checkpointer.save("model_0000001", iteration=2)  # overwriting the same name
        self.assertEqual(sorted(os.listdir(self.dir)), ["last_checkpoint", "model_0000001.pth"])
        model, extra = self.fresh_resume()
        self.assertEqual(extra["iteration"], 1)
        self.assertTrue(torch.equal(model.weight, reference))

    def test_plain_checkpointer_is_damaged_by_the_same_interruption(self):
        # The reference behaviour this class fixes: the test above would fail with it.
        checkpointer = self.checkpointer(cls=DetectionCheckpointer)
        checkpointer.save("model_final", iteration=1)
        with mock.patch.object(rf_checkpoint.torch, "save", half_write_then_fail):
            with self.assertRaises(_Interrupted):
                checkpointer.save("model_final", iteration=2)
        with self.assertRaises(CorruptCheckpointError):
            self.fresh_resume()

    def test_interrupted_tag_keeps_previous_tag(self):
        checkpointer = self.checkpointer()
        checkpointer.save("model_0000001", iteration=1)
        real_replace = os.replace

        def fail_on_tag(src, dst):
            if os.path.basename(dst) == "last_checkpoint":
                raise _Interrupted()
            real_replace(src, dst)

        with mock.patch.object(rf_checkpoint.os, "replace", fail_on_tag):
            with self.assertRaises(_Interrupted):
                checkpointer.save("model_0000002", iteration=2)
        with open(os.path.join(self.dir, "last_checkpoint")) as f:
            self.assertEqual(f.read(), "model_0000001.pth")
        self.assertEqual(self.fresh_resume()[1]["iteration"], 1)

    def test_resume_falls_back_past_a_damaged_file(self):
        checkpointer = self.checkpointer()
        checkpointer.save("model_0000001", iteration=1)
        checkpointer.save("model_0000002", iteration=2)
        path = os.path.join(self.dir, "model_0000002.pth")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
        with self.assertLogs("fvcore.common.checkpoint", "ERROR") as logs:
            extra = self.fresh_resume()[1]
        self.assertEqual(extra["iteration"], 1)
        self.assertIn(path, "\n".join(logs.output))
        os.remove(os.path.join(self.dir, "model_0000001.pth"))
        with self.assertRaisesRegex(CorruptCheckpointError, "no other checkpoint"):
            self.fresh_resume()

    def test_resume_takes_the_newest_readable_of_several(self):
        """Four complete checkpoints; the tagged (newest) one is damaged, then also the next:
        resuming must take the newest readable one each time, never an older one."""
        checkpointer = self.checkpointer()
        start = time.time() - 100
        for it in (1, 2, 3, 4):
            checkpointer.save(f"model_000000{it}", iteration=it)
            path = os.path.join(self.dir, f"model_000000{it}.pth")
            os.utime(path, (start + it, start + it))  # distinct, increasing modification times
        for damaged, expected in (("model_0000004.pth", 3), ("model_0000003.pth", 2)):
            path = os.path.join(self.dir, damaged)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            with self.subTest(damaged=damaged), self.assertLogs("fvcore.common.checkpoint"):
                self.assertEqual(self.fresh_resume()[1]["iteration"], expected)

    def test_resume_when_the_tagged_file_is_missing(self):
        checkpointer = self.checkpointer()
        start = time.time() - 100
        for it in (1, 2, 3):
            checkpointer.save(f"model_000000{it}", iteration=it)
            path = os.path.join(self.dir, f"model_000000{it}.pth")
            os.utime(path, (start + it, start + it))
        os.remove(os.path.join(self.dir, "model_0000003.pth"))
        with self.assertLogs("fvcore.common.checkpoint", "ERROR") as logs:
            self.assertEqual(self.fresh_resume()[1]["iteration"], 2)
        self.assertIn("model_0000003.pth, which does not exist", "\n".join(logs.output))

    def test_non_resume_load_is_unchanged(self):
        self.checkpointer().save("model_0000001", iteration=1)
        model = torch.nn.Linear(4, 3)
        extra = AtomicDetectionCheckpointer(model, self.dir).resume_or_load(
            os.path.join(self.dir, "model_0000001.pth"), resume=False
        )
        self.assertTrue(torch.equal(model.weight, self.model.weight))
        self.assertEqual(extra["iteration"], 1)

    def test_non_finite_state_is_never_saved(self):
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        ckpt = AtomicDetectionCheckpointer(model, self.dir, optimizer=self.optimizer)
        ckpt.save("model_0000001", iteration=1)
        model[1].running_var[2] = float("inf")  # a buffer, as BatchNorm's after divergence
        with self.assertRaises(NonFiniteWeightsError) as ctx:
            ckpt.save("model_0000002", iteration=2)
        err = ctx.exception
        self.assertEqual((err.iteration, err.tensors), (2, ["model.1.running_var"]))
        self.assertEqual(err.checkpoint, os.path.join(self.dir, "model_0000001.pth"))
        self.assertIn("model_0000001.pth, whose tensors are all finite", str(err))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "model_0000002.pth")))
        with open(os.path.join(self.dir, "last_checkpoint")) as f:
            self.assertEqual(f.read(), "model_0000001.pth")
        # Optimizer state is checked too; names are listed up to a limit, then counted.
        model[1].running_var[2] = 1.0
        inf = torch.full((3, 4), float("inf"))
        self.optimizer.state[self.model.weight]["momentum_buffer"] = inf
        with self.assertRaises(NonFiniteWeightsError) as ctx:
            ckpt.save("model_0000003")
        self.assertEqual(ctx.exception.tensors, ["optimizer.state.0.momentum_buffer"])
        self.assertIsNone(ctx.exception.iteration)

    def test_non_finite_tensors_hand_made(self):
        state = {"a": torch.ones(2), "b": [torch.tensor([1.0, float("nan")]), 3],
                 "c": {"d": torch.tensor(float("-inf")), "e": torch.arange(3)}}  # fmt: skip
        self.assertEqual(non_finite_tensors(state), ["b.0", "c.d"])
        self.assertEqual(non_finite_tensors({"i": torch.arange(3), "x": 1.0}), [])
        # A list at the top is named by its indices alone.
        self.assertEqual(non_finite_tensors([torch.ones(1), torch.tensor(float("nan"))]), ["1"])

    def test_full_disk_names_the_file_and_keeps_the_previous_one(self):
        self.checkpointer().save("model_0000001", iteration=1)

        def no_space(obj, f):
            f.write(b"x" * 100)
            raise OSError(28, "No space left on device")

        with mock.patch.object(rf_checkpoint.torch, "save", side_effect=no_space):
            with self.assertRaises(DiskFullError) as ctx:
                self.checkpointer().save("model_0000002", iteration=2)
        target = os.path.join(self.dir, "model_0000002.pth")
        self.assertIn(f"No space left on device while writing {target}", str(ctx.exception))
        self.assertIn("--resume, which continues from", str(ctx.exception))
        self.assertEqual(ctx.exception.errno, 28)
        self.assertEqual(sorted(os.listdir(self.dir)), ["last_checkpoint", "model_0000001.pth"])
        # Other errors pass through unchanged.
        with mock.patch.object(rf_checkpoint.torch, "save", side_effect=OSError(13, "denied")):
            with self.assertRaisesRegex(PermissionError, "denied"):
                self.checkpointer().save("model_0000002", iteration=2)


class TestCheckpointMessages(unittest.TestCase):
    """The exact words of the errors a user reads when saving fails, and the helpers behind them."""

    def test_non_finite_weights_message(self):
        err = NonFiniteWeightsError("out/model_0000009.pth", 9, ["model.a", "model.b"],
                                    "out/model_0000004.pth")  # fmt: skip
        self.assertEqual(str(err), (
            "Not saving out/model_0000009.pth: the model state became NaN or infinite after "
            "iteration 9 (model.a, model.b). Training diverged. The last checkpoint is "
            "out/model_0000004.pth, whose tensors are all finite: resume from it with --resume, "
            "perhaps with a lower learning rate (SOLVER.BASE_LR) or a longer warm-up "
            "(SOLVER.WARMUP_ITERS)."
        ))  # fmt: skip
        self.assertEqual((err.file, err.iteration, err.tensors, err.checkpoint),
                         ("out/model_0000009.pth", 9, ["model.a", "model.b"],
                          "out/model_0000004.pth"))  # fmt: skip
        first = NonFiniteWeightsError("m.pth", None, ["x"], "")
        self.assertEqual(str(first), (
            "Not saving m.pth: the model state became NaN or infinite (x). Training diverged. "
            "No checkpoint has been written yet: start again, perhaps with a lower learning "
            "rate (SOLVER.BASE_LR) or a longer warm-up (SOLVER.WARMUP_ITERS)."
        ))  # fmt: skip
        self.assertIsInstance(first, FloatingPointError)  # what detectron2's check raises

    def test_non_finite_weights_error_survives_pickling(self):
        # A training run in a process pool (a sweep) hands its error back pickled.
        err = NonFiniteWeightsError("out/model_0000009.pth", 9, ["model.a"], "out/m.pth")
        copy = pickle.loads(pickle.dumps(err))
        self.assertEqual((type(copy), str(copy)), (NonFiniteWeightsError, str(err)))
        self.assertEqual((copy.file, copy.iteration, copy.tensors, copy.checkpoint),
                         ("out/model_0000009.pth", 9, ["model.a"], "out/m.pth"))  # fmt: skip

    def test_out_of_space_follows_causes_and_contexts(self):
        out_of_space = rf_checkpoint._out_of_space
        self.assertTrue(out_of_space(OSError(28, "No space left on device")))
        self.assertTrue(out_of_space(OSError(122, "Disk quota exceeded")))  # EDQUOT (Linux)
        self.assertFalse(out_of_space(OSError(13, "Permission denied")))
        self.assertFalse(out_of_space(RuntimeError("unexpected pos 64 vs 0")))
        self.assertFalse(out_of_space(None))
        # torch.save raises its own error with the write's OSError as context, or as cause.
        for link in ("__context__", "__cause__"):
            outer = RuntimeError("unexpected pos 64 vs 0")
            setattr(outer, link, ValueError("middle"))
            setattr(getattr(outer, link), link, OSError(28, "No space left on device"))
            self.assertTrue(out_of_space(outer), link)
        # A chain that loops ends (no hang) and says no.
        a, b = RuntimeError("a"), RuntimeError("b")
        a.__context__, b.__context__ = b, a
        self.assertFalse(out_of_space(a))

    def test_pid_alive(self):
        self.assertTrue(rf_checkpoint._pid_alive(os.getpid()))
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        self.assertFalse(rf_checkpoint._pid_alive(child.pid))
        with mock.patch.object(rf_checkpoint.os, "kill", side_effect=PermissionError(1, "no")):
            self.assertTrue(rf_checkpoint._pid_alive(child.pid))  # someone else's process
        with mock.patch.object(rf_checkpoint.os, "kill", return_value=None):
            self.assertTrue(rf_checkpoint._pid_alive(child.pid))

    def test_fallbacks_are_tried_newest_first(self):
        save_dir = tempfile.mkdtemp(prefix="retinafocal_order_")
        self.addCleanup(shutil.rmtree, save_dir, ignore_errors=True)
        ckpt = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), save_dir)
        # Names in one order, modification times in another: the times decide. All damaged.
        for name, mtime in (("model_a.pth", 300), ("model_b.pth", 100), ("model_c.pth", 200)):
            path = os.path.join(save_dir, name)
            with open(path, "wb") as f:
                f.write(b"x")
            os.utime(path, (mtime, mtime))
        ckpt.tag_last_checkpoint("model_c.pth")
        with self.assertLogs("fvcore.common.checkpoint", "INFO") as logs:
            with self.assertRaises(CorruptCheckpointError):
                ckpt.resume_or_load("", resume=True)
        loads = [r.getMessage() for r in logs.records if r.levelname == "INFO"]
        tried = ["model_c.pth", "model_a.pth", "model_b.pth"]  # the tagged one first, once
        self.assertEqual(
            loads,
            [f"[Checkpointer] Loading from {os.path.join(save_dir, name)} ..." for name in tried],
        )


class TestKillDuringSave(unittest.TestCase):
    def test_sigkill_mid_write_then_resume(self):
        save_dir = tempfile.mkdtemp(prefix="retinafocal_kill_")
        self.addCleanup(shutil.rmtree, save_dir, ignore_errors=True)
        signal_file = os.path.join(save_dir, "writing")
        child = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "checkpoint_writer.py"), save_dir, signal_file],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(child.kill)
        deadline = time.monotonic() + 120
        while not os.path.exists(signal_file):
            if child.poll() is not None:
                self.fail(f"the writer exited early:\n{child.stderr.read().decode()}")
            self.assertLess(time.monotonic(), deadline, "the writer never reached its save")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        self.assertEqual(child.returncode, -signal.SIGKILL)

        leftovers = [n for n in os.listdir(save_dir) if n.endswith(".tmp")]
        self.assertEqual(len(leftovers), 1)  # the half-written temporary file
        self.assertGreater(os.path.getsize(os.path.join(save_dir, leftovers[0])), 0)

        # Resume as the restarted job does: the last complete checkpoint, all of its state.
        sys.path.insert(0, HERE)
        self.addCleanup(sys.path.remove, HERE)
        import checkpoint_writer

        model, optimizer, scheduler, checkpointer = checkpoint_writer.build(save_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        extra = checkpointer.resume_or_load("", resume=True)
        self.assertEqual(extra["iteration"], 2)
        self.assertEqual(scheduler.last_epoch, 1)
        self.assertAlmostEqual(optimizer.param_groups[0]["lr"], 0.05)
        self.assertGreater(sum(p.abs().sum().item() for p in model.parameters()), 0)
        for name in ("model_0000001.pth", "model_final.pth"):
            torch.load(os.path.join(save_dir, name))  # every named checkpoint is whole

        # The next save goes on from there and clears the dead process's temporary file.
        checkpointer.save("model_0000003", iteration=3)
        self.assertFalse([n for n in os.listdir(save_dir) if n.endswith(".tmp")])



class TestFailedLoadState(unittest.TestCase):
    """compat.forget_failed_load: current detectron2 keeps the file being loaded in
    ``_parsed_url_during_load`` and clears it only on success; v0.6 has no such state."""

    def test_guard_follows_the_installed_detectron2(self):
        plain = DetectionCheckpointer(torch.nn.Linear(2, 2))
        has_state = hasattr(plain, "_parsed_url_during_load")
        self.assertEqual("checkpoint_load_state" in compat.ACTIVE, has_state)
        listed = "checkpointer load state" in compat.describe()
        self.assertEqual(listed, has_state)

    def test_clears_only_where_needed(self):
        stale = mock.Mock(_parsed_url_during_load="file:///damaged.pth")
        with mock.patch.dict(compat.ACTIVE, clear=True):
            compat.forget_failed_load(stale)
        self.assertEqual(stale._parsed_url_during_load, "file:///damaged.pth")
        with mock.patch.dict(compat.ACTIVE, checkpoint_load_state="on"):
            compat.forget_failed_load(stale)
        self.assertIsNone(stale._parsed_url_during_load)

    def test_same_checkpointer_loads_after_a_damaged_file(self):
        save_dir = tempfile.mkdtemp(prefix="retinafocal_ckpt_")
        self.addCleanup(shutil.rmtree, save_dir, ignore_errors=True)
        model = torch.nn.Linear(2, 2)
        checkpointer = AtomicDetectionCheckpointer(model, save_dir)
        checkpointer.save("good")
        damaged = os.path.join(save_dir, "damaged.pth")
        with open(damaged, "wb") as f:
            f.write(b"not a checkpoint")
        with self.assertRaises(CorruptCheckpointError):
            checkpointer.load(damaged)
        checkpointer.load(os.path.join(save_dir, "good.pth"))  # no stale-state assert

    def test_failed_load_clears_the_state_of_the_file(self):
        """Whatever the parent leaves in current detectron2's per-load state when a load fails
        is cleared (simulated, so that v0.6 checks it too)."""

        def fail(checkpointer, path, *args, **kwargs):
            checkpointer._parsed_url_during_load = path
            raise CorruptCheckpointError(f"{path} is damaged")

        checkpointer = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2))
        with mock.patch.dict(compat.ACTIVE, checkpoint_load_state="on"), mock.patch.object(
            DetectionCheckpointer, "load", autospec=True, side_effect=fail
        ), self.assertRaisesRegex(CorruptCheckpointError, "damaged.pth is damaged"):
            checkpointer.load("damaged.pth")
        self.assertIsNone(checkpointer._parsed_url_during_load)


if __name__ == "__main__":
    unittest.main()
