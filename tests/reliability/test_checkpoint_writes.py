"""What a save writes, logs and says: temporary files, permissions, the exact words of the errors,
and saving through a PathManager URL (the non-atomic fallback)."""
import errno
import logging
import os
import re
import shutil
import types
import unittest
from unittest import mock

import torch
from iopath.common.file_io import PathHandler

import retinafocal  # noqa: F401  (applies retinafocal.compat before detectron2 is imported)
from detectron2.utils.file_io import PathManager
from retinafocal import checkpoint as rf_checkpoint
from retinafocal.checkpoint import (
    MAX_NAMED,
    AtomicDetectionCheckpointer,
    DiskFullError,
    NonFiniteWeightsError,
    atomic_write,
    non_finite_tensors,
)

from .checkpoint_case import CheckpointTestCase


class _OtherDeviceTensor(torch.Tensor):
    """A CPU tensor that says it lives on a second device (cpu:1): on a machine without a GPU,
    it stands in for the tensors of a state spread over a GPU and the CPU."""

    @property
    def device(self):
        return torch.device("cpu", 1)


def _on_other_device(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_subclass(_OtherDeviceTensor)


class _LocalFolderHandler(PathHandler):
    """``rftest://<path>`` is the local ``<path>``: a URL that PathManager opens but that
    :class:`AtomicDetectionCheckpointer` does not take for a local folder."""

    PREFIX = "rftest://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _local(self, path):
        return path[len(self.PREFIX) :]

    def _get_local_path(self, path, **kwargs):
        return self._local(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(self._local(path), mode)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self._local(path))

    def _mkdirs(self, path, **kwargs):
        os.makedirs(self._local(path), exist_ok=True)


PathManager.register_handler(_LocalFolderHandler())


def _free(free: int):
    """What shutil.disk_usage says of a 10 MB disk with ``free`` bytes free."""
    return shutil._ntuple_diskusage(10 * 2**20, 10 * 2**20 - free, free)


def no_space(obj, f):
    """Stands in for torch.save on a full disk."""
    f.write(b"x" * 100)
    raise OSError(28, "No space left on device")


class _InTempDir(CheckpointTestCase):
    PREFIX = "retinafocal_writes_"

    def path(self, name):
        return os.path.join(self.dir, name)


class TestAtomicWrite(_InTempDir):
    def test_folder_sync_is_skipped_where_the_folder_cannot_be_opened_or_synced(self):
        """Making a rename durable is best effort: a folder that cannot be opened (gone) or
        synced (some file systems refuse) does not fail the write, and the descriptor is closed."""
        rf_checkpoint._fsync_directory(self.path("missing"))
        refused = OSError(errno.EINVAL, "Invalid argument")
        with mock.patch.object(os, "fsync", side_effect=refused), \
                mock.patch.object(os, "close", wraps=os.close) as close:
            rf_checkpoint._fsync_directory(self.dir)
        close.assert_called_once()

    def test_temporary_file_is_hidden_beside_the_target(self):
        seen = []

        def write(f):
            seen.extend(os.listdir(self.dir))
            f.write(b"data")

        atomic_write(self.path("out.bin"), write)
        # In the target's folder (a rename within one file system), named for the target and
        # this process, with 8 random hex digits: the name stays short next to a long one.
        self.assertEqual(len(seen), 1, seen)
        self.assertRegex(seen[0], rf"^\.out\.bin\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp$")
        self.assertEqual(os.listdir(self.dir), ["out.bin"])

    def test_never_writes_into_a_file_it_did_not_create(self):
        # A file already at the temporary name (another process's, or a planted link) is left
        # alone: the temporary file is created exclusively.
        clash = self.path(f".out.bin.{os.getpid()}.abcd0123.tmp")
        with open(clash, "wb") as f:
            f.write(b"theirs")
        with mock.patch.object(rf_checkpoint.secrets, "token_hex", return_value="abcd0123"):
            with self.assertRaises(FileExistsError):
                atomic_write(self.path("out.bin"), lambda f: f.write(b"mine"))
        with open(clash, "rb") as f:
            self.assertEqual(f.read(), b"theirs")
        self.assertFalse(os.path.exists(self.path("out.bin")))

    def test_permissions_follow_the_umask(self):
        old = os.umask(0o022)
        try:
            atomic_write(self.path("out.bin"), lambda f: f.write(b"data"))
        finally:
            os.umask(old)
        self.assertEqual(os.stat(self.path("out.bin")).st_mode & 0o777, 0o644)

    def test_a_vanished_temporary_file_does_not_hide_the_error(self):
        def vanish_then_fail(src, dst):
            os.remove(src)
            raise FileNotFoundError(2, "gone", src)

        with mock.patch.object(rf_checkpoint.os, "replace", vanish_then_fail):
            with self.assertRaisesRegex(FileNotFoundError, "gone"):
                atomic_write(self.path("out.bin"), lambda f: f.write(b"data"))
        self.assertEqual(os.listdir(self.dir), [])

    def test_free_space_in_megabytes(self):
        usage = _free(3 * 2**20 + 2**19 - 1)  # 3.5 MB less a byte: shown as 3
        with mock.patch.object(rf_checkpoint.shutil, "disk_usage", return_value=usage) as du:
            with self.assertRaisesRegex(DiskFullError, r"\(3 MB free there now\)"):
                atomic_write(self.path("out.bin"), lambda f: no_space(None, f))
        du.assert_called_once_with(self.dir)
        with mock.patch.object(rf_checkpoint.shutil, "disk_usage", side_effect=OSError(5, "io")):
            with self.assertRaisesRegex(DiskFullError, r"\(free space unknown\)"):
                atomic_write(self.path("out.bin"), lambda f: no_space(None, f))

    def test_full_disk_message_without_advice(self):
        with mock.patch.object(rf_checkpoint.shutil, "disk_usage", return_value=_free(0)):
            with self.assertRaises(DiskFullError) as ctx:
                atomic_write(self.path("out.bin"), lambda f: no_space(None, f))
        self.assertEqual(str(ctx.exception), (
            f"[Errno 28] No space left on device while writing {self.path('out.bin')} (0 MB "
            "free there now): it was not written, and an earlier version of it, if any, is whole."
        ))  # fmt: skip
        self.assertEqual(os.listdir(self.dir), [])

    def test_full_disk_where_errno_has_no_edquot(self):
        """Windows' errno has no EDQUOT: a full disk is still reported as one, and an OSError
        without an errno (None) or with another one passes through unchanged."""
        with mock.patch.object(rf_checkpoint, "errno", types.SimpleNamespace(ENOSPC=errno.ENOSPC)):
            with self.assertRaises(DiskFullError):
                atomic_write(self.path("out.bin"), lambda f: no_space(None, f))
            for error in (OSError("no errno"), OSError(13, "Permission denied")):

                def fail(f):
                    raise error

                with self.subTest(error=error), self.assertRaises(OSError) as ctx:
                    atomic_write(self.path("out.bin"), fail)
                self.assertIs(ctx.exception, error)
        self.assertEqual(os.listdir(self.dir), [])


class TestSaveMessages(_InTempDir):
    def full_disk_message(self, checkpointer, name):
        with mock.patch.object(rf_checkpoint.shutil, "disk_usage", return_value=_free(2**20)):
            with mock.patch.object(rf_checkpoint.torch, "save", side_effect=no_space):
                with self.assertRaises(DiskFullError) as ctx:
                    checkpointer.save(name)
        return str(ctx.exception)

    def test_full_disk_on_the_first_save_says_run_again(self):
        message = self.full_disk_message(AtomicDetectionCheckpointer(self.model, self.dir), "m0")
        self.assertEqual(message, (
            f"[Errno 28] No space left on device while writing {self.path('m0.pth')} (1 MB free "
            "there now): it was not written, and an earlier version of it, if any, is whole. "
            "Free some space (or write elsewhere: OUTPUT_DIR, train.output_dir), then run again."
        ))  # fmt: skip

    def test_full_disk_later_says_where_resume_continues_from(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.dir)
        checkpointer.save("m1")
        self.assertTrue(self.full_disk_message(checkpointer, "m2").endswith(
            "Free some space (or write elsewhere: OUTPUT_DIR, train.output_dir), then run again "
            f"with --resume, which continues from {self.path('m1.pth')}."
        ))  # fmt: skip

    def test_full_disk_while_tagging(self):
        checkpointer = AtomicDetectionCheckpointer(self.model, self.dir)
        real_replace = os.replace

        def full_on_tag(src, dst):
            if os.path.basename(dst) == "last_checkpoint":
                raise OSError(28, "No space left on device")
            real_replace(src, dst)

        with mock.patch.object(rf_checkpoint.os, "replace", full_on_tag):
            with self.assertRaises(DiskFullError) as ctx:
                checkpointer.save("m1")
        self.assertTrue(str(ctx.exception).endswith(
            "is whole. Free some space there, then run again with --resume."
        ), str(ctx.exception))  # fmt: skip

    def test_save_is_logged(self):
        with self.assertLogs("fvcore.common.checkpoint", logging.INFO) as logs:
            AtomicDetectionCheckpointer(self.model, self.dir).save("m1")
        self.assertIn(f"Saving checkpoint to {self.path('m1.pth')}", "\n".join(logs.output))

    def test_no_save_dir_saves_nothing(self):
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            AtomicDetectionCheckpointer(self.model).save("m1")
        finally:
            os.chdir(cwd)
        self.assertEqual(os.listdir(self.dir), [])

    def test_non_finite_error_names_file_and_counts_the_rest(self):
        model = torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(MAX_NAMED + 1)])
        with torch.no_grad():
            for layer in model:
                layer.bias.fill_(float("nan"))
        checkpointer = AtomicDetectionCheckpointer(model, self.dir)
        with self.assertRaises(NonFiniteWeightsError) as ctx:
            checkpointer.save("m1", iteration=7)
        err = ctx.exception
        self.assertEqual((err.file, err.iteration, err.checkpoint), (self.path("m1.pth"), 7, ""))
        self.assertEqual(err.tensors, [f"model.{i}.bias" for i in range(MAX_NAMED)] + ["1 more"])
        with torch.no_grad():
            model[0].bias.fill_(0.0)  # exactly MAX_NAMED left: all named, none counted
        with self.assertRaises(NonFiniteWeightsError) as ctx:
            checkpointer.save("m1")
        named = [f"model.{i}.bias" for i in range(1, MAX_NAMED + 1)]
        self.assertEqual(ctx.exception.tensors, named)
        self.assertEqual(os.listdir(self.dir), [])

    def test_non_finite_tensors_on_two_devices(self):
        """Flags are gathered per device (a GPU model with Adam's step counters on the CPU): a
        NaN on each device is named, in the order of the state, whichever device comes last."""
        nan = float("nan")
        state = {"a": torch.tensor([nan]), "b": _on_other_device(torch.ones(2)),
                 "c": _on_other_device(torch.tensor([1.0, nan])), "d": torch.zeros(3)}  # fmt: skip
        self.assertEqual(state["b"].device, torch.device("cpu", 1))
        self.assertEqual(non_finite_tensors(state), ["a", "c"])
        state["c"] = _on_other_device(torch.ones(1))
        self.assertEqual(non_finite_tensors(state), ["a"])


class TestSaveToURL(_InTempDir):
    def test_non_local_folder_saves_through_path_manager(self):
        url = _LocalFolderHandler.PREFIX + self.dir
        checkpointer = AtomicDetectionCheckpointer(self.model, url)
        checkpointer.save("model_0000003", iteration=3)
        with open(self.path("last_checkpoint")) as f:
            self.assertEqual(f.read(), "model_0000003.pth")
        data = torch.load(self.path("model_0000003.pth"))
        self.assertEqual(data["iteration"], 3)
        self.assertTrue(torch.equal(data["model"]["weight"], self.model.weight))


if __name__ == "__main__":
    unittest.main()
