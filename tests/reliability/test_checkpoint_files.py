"""AtomicDetectionCheckpointer's files: permissions as a plain open() gives, temporary files of
dead processes cleared (and only those), nothing written when saving is off, names checked, and
the fallback named in the log."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import torch

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from retinafocal.checkpoint import AtomicDetectionCheckpointer, atomic_write


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestCheckpointFiles(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="retinafocal_ckpt_files_")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.model = torch.nn.Linear(2, 2)

    def test_permissions_follow_the_umask(self):
        old = os.umask(0o027)
        self.addCleanup(os.umask, old)
        AtomicDetectionCheckpointer(self.model, self.dir).save("model_0000001")
        for name in ("model_0000001.pth", "last_checkpoint"):
            mode = os.stat(os.path.join(self.dir, name)).st_mode & 0o777
            self.assertEqual(mode, 0o640, name)  # 0o666 & ~0o027, as open(..., "w") gives

    def test_atomic_write_creates_and_replaces(self):
        path = os.path.join(self.dir, "f.bin")
        atomic_write(path, lambda f: f.write(b"one"))
        atomic_write(path, lambda f: f.write(b"two"))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"two")
        self.assertEqual(os.listdir(self.dir), ["f.bin"])

    def test_temporaries_of_dead_processes_are_removed_others_kept(self):
        dead = f".model_0000001.pth.{dead_pid()}.0a1b2c3d.tmp"
        mine = f".model_0000001.pth.{os.getpid()}.0a1b2c3d.tmp"  # a save in progress here
        unrelated = ["notes.tmp", ".model.pth.tmp", "model_0000000.pth"]
        # Another live process's temporary: test_a_live_writer_is_left_alone (a child of its
        # own, not pid 1: a mutant of the liveness probe may send its signal to that pid).
        for name in [dead, mine] + unrelated:
            with open(os.path.join(self.dir, name), "wb") as f:
                f.write(b"x")
        checkpointer = AtomicDetectionCheckpointer(self.model, self.dir)
        with self.assertLogs("fvcore.common.checkpoint", "INFO") as logs:
            checkpointer.save("model_0000002")
        left = set(os.listdir(self.dir))
        self.assertNotIn(dead, left)
        self.assertTrue({mine, *unrelated} <= left)
        self.assertIn(f"Removed {dead}, left by an interrupted save", "\n".join(logs.output))

    def test_a_live_writer_is_left_alone(self):
        """Another job saving into the same folder: its temporary file stays, and the check
        that it is alive sends it no signal (signal 0 probes; 1, SIGHUP, would end it)."""
        # SIGHUP back to its default action (a run under nohup would pass SIG_IGN down to it),
        # and only then "ready": a signal sent before that would be lost.
        writer = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, "
             "signal.SIG_DFL); print('ready', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True,
        )
        self.addCleanup(writer.stdout.close)
        self.addCleanup(writer.wait)
        self.addCleanup(writer.kill)
        self.assertEqual(writer.stdout.readline().strip(), "ready")
        theirs = f".model_0000001.pth.{writer.pid}.0a1b2c3d.tmp"
        with open(os.path.join(self.dir, theirs), "wb") as f:
            f.write(b"x")
        AtomicDetectionCheckpointer(self.model, self.dir).save("model_0000002")
        self.assertIn(theirs, os.listdir(self.dir))
        with self.assertRaises(subprocess.TimeoutExpired):
            writer.wait(timeout=0.5)  # still running

    def test_a_temporary_that_cannot_be_removed_does_not_stop_the_save(self):
        # os.remove fails (here on a folder of that name; or another job removed it first):
        # the save goes on and leaves it.
        stuck = f".model_0000001.pth.{dead_pid()}.0a1b2c3d.tmp"
        os.mkdir(os.path.join(self.dir, stuck))
        AtomicDetectionCheckpointer(self.model, self.dir).save("model_0000002")
        self.assertEqual(
            sorted(os.listdir(self.dir)), [stuck, "last_checkpoint", "model_0000002.pth"]
        )

    def test_nothing_is_written_when_saving_is_off(self):
        AtomicDetectionCheckpointer(self.model, self.dir, save_to_disk=False).save("model_final")
        AtomicDetectionCheckpointer(self.model, "").save("model_final")
        self.assertEqual(os.listdir(self.dir), [])

    def test_a_name_with_a_folder_is_refused(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.dir)
        with self.assertRaisesRegex(ValueError, "'sub/model' must not contain a path separator"):
            checkpointer.save("sub/model")

    def test_fallback_is_logged_with_the_file_used(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.dir)
        checkpointer.save("model_0000001", iteration=1)
        with open(os.path.join(self.dir, "last_checkpoint"), "w") as f:
            f.write("model_missing.pth")
        with self.assertLogs("fvcore.common.checkpoint", "WARNING") as logs:
            extra = AtomicDetectionCheckpointer(torch.nn.Linear(2, 2), self.dir).resume_or_load(
                "", resume=True
            )
        self.assertEqual(extra["iteration"], 1)
        text = "\n".join(logs.output)
        self.assertIn(f"Resumed from {os.path.join(self.dir, 'model_0000001.pth')} instead", text)
        self.assertIn("Cannot resume from the last checkpoint: last_checkpoint names", text)


if __name__ == "__main__":
    unittest.main()
