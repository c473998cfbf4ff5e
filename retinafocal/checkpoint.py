"""A checkpointer whose files are always whole, finite and safe to load. fvcore's ``save``
streams into the final files (a kill leaves a truncated checkpoint or an empty
``last_checkpoint``); here each is written by :func:`atomic_write`. NaN/Inf states are not saved,
a full disk is named as such, and a resume falls back from an unreadable last checkpoint to the
newest readable one."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import re
import secrets
import shutil
import zipfile
from collections import defaultdict
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from . import compat
from .weights_file import WeightsFileError, read_weights_file
from .weights_fit import MissingWeightsError, check_fit

__all__ = [
    "AtomicDetectionCheckpointer",
    "CorruptCheckpointError",
    "DiskFullError",
    "NonFiniteWeightsError",
    "atomic_write",
    "load_inference_weights",
    "non_finite_tensors",
]

logger = logging.getLogger(__name__)

# ".<final name>.<pid>.<random>.tmp": never "*.pth" (so that detectron2's
# get_all_checkpoint_files ignores them), and tied to the process that wrote them.
_TMP_PATTERN = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


class CorruptCheckpointError(WeightsFileError):
    """A checkpoint file exists but cannot be read; the message names it."""


class DiskFullError(OSError):
    """A file could not be written for lack of space (ENOSPC, EDQUOT); the message names it."""


class NonFiniteWeightsError(FloatingPointError):
    """The state to checkpoint (``file``, of ``iteration`` or None) holds NaN or Inf in
    ``tensors`` (at most :data:`MAX_NAMED` names), so it was not saved; ``checkpoint`` is the
    last one written, all finite ("" when none)."""

    def __init__(
        self, file: str, iteration: Optional[int], tensors: List[str], checkpoint: str
    ) -> None:
        self.file, self.iteration = file, iteration
        self.tensors, self.checkpoint = tensors, checkpoint
        when = f" after iteration {iteration}" if iteration is not None else ""
        last = (
            f"The last checkpoint is {checkpoint}, whose tensors are all finite: resume from it "
            "with --resume"
            if checkpoint
            else "No checkpoint has been written yet: start again"
        )
        super().__init__(
            f"Not saving {file}: the model state became NaN or infinite{when} "
            f"({', '.join(tensors)}). Training diverged. {last}, perhaps with a lower learning "
            "rate (SOLVER.BASE_LR) or a longer warm-up (SOLVER.WARMUP_ITERS)."
        )

    def __reduce__(self) -> Any:  # pickle (process pools): rebuild from the arguments
        return type(self), (self.file, self.iteration, self.tensors, self.checkpoint)


#: Most non-finite tensor names kept in a :class:`NonFiniteWeightsError`.
MAX_NAMED = 5


def _floating_tensors(obj: Any, prefix: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every floating-point tensor in nested dicts / lists."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, (Mapping, list, tuple)):
        items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
        for key, value in items:
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def non_finite_tensors(state: Any) -> List[str]:
    """Names of the floating-point tensors in ``state`` (nested dicts and lists) holding NaN or
    Inf, in order; one device-to-host copy per device."""
    named = list(_floating_tensors(state))
    flags: Dict[torch.device, List[Tuple[int, torch.Tensor]]] = defaultdict(list)
    for i, (_, tensor) in enumerate(named):
        flags[tensor.device].append((i, torch.isfinite(tensor.detach()).all()))
    bad = []
    for device_flags in flags.values():
        host = torch.stack([flag for _, flag in device_flags]).cpu().tolist()
        bad += [i for (i, _), finite in zip(device_flags, host) if not finite]
    return [named[i][0] for i in sorted(bad)]


def _out_of_space(error: Optional[BaseException]) -> bool:
    """Whether ``error`` or its cause / context chain is "no space" or "quota exceeded"
    (torch.save wraps the write's OSError)."""
    full = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in full:
            return True
        error = error.__cause__ or error.__context__
    return False


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); nothing where it cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], Any], advice: str = "") -> None:
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file under a
    temporary name in the same folder, then fsynced and renamed: on any failure or kill ``path``
    is untouched. Raises :class:`DiskFullError` (naming ``path``, ending with ``advice``)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    try:
        # os.open with mode 0o666 lets the umask decide permissions, as a plain open() would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    except Exception as e:
        if not _out_of_space(e):
            raise
        try:
            free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MB free there now"
        except OSError:
            free = "free space unknown"
        raise DiskFullError(
            errno.ENOSPC,
            f"No space left on device while writing {path} ({free}): it was not written, and an "
            f"earlier version of it, if any, is whole. {advice}".rstrip(),
        ) from e
    _fsync_directory(directory)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (EPERM), or no kill() support: assume alive
        return True
    return True


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves (the parent's for a non-local ``save_dir``)
    and safe loads: ``read_weights_file``, then ``check_fit``, exact when the load restores the
    whole state (``load(path)``, as when resuming or evaluating), else as initial weights
    (``load(path, checkpointables=[])``, as for ``MODEL.WEIGHTS``). ``trust_weights_file=True``
    reads files with full unpickling (may run code), with a warning."""

    # The load in progress, for _load_model (fvcore passes it only the file's contents).
    _exact_load: bool
    _loading_path: str

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        trust_weights_file: bool = False,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.trust_weights_file = trust_weights_file

    def save(self, name: str, **kwargs: Any) -> None:
        """Save the model, checkpointables and ``kwargs`` as ``<save_dir>/<name>.pth`` and tag
        it in ``last_checkpoint``, each atomically. Raises :class:`NonFiniteWeightsError` (nothing
        written) or :class:`DiskFullError` (earlier checkpoints stay whole)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()}, **kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"Checkpoint name {name!r} must not contain a path separator")
        self._refuse_non_finite(save_file, data)
        # A URL (file:// too) goes to PathManager: os calls would read "file:///x" as "file:/x".
        if "://" in self.save_dir:
            super().save(name, **kwargs)
            return
        self._remove_stale_temporaries()
        self.logger.info(f"Saving checkpoint to {save_file}")
        last = self.get_checkpoint_file()  # "" when there is no last_checkpoint
        advice = "Free some space (or write elsewhere: OUTPUT_DIR, train.output_dir), then run "
        advice += f"again with --resume, which continues from {last}." if last else "again."
        atomic_write(save_file, lambda f: torch.save(data, f), advice)
        self.tag_last_checkpoint(basename)

    def _refuse_non_finite(self, save_file: str, data: Dict[str, Any]) -> None:
        bad = non_finite_tensors(data)
        if not bad:
            return
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        named = bad[:MAX_NAMED] + ([f"{len(bad) - MAX_NAMED} more"] if len(bad) > MAX_NAMED else [])
        iteration = data.get("iteration")
        raise NonFiniteWeightsError(
            save_file, int(iteration) if iteration is not None else None, named, last
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Write ``last_checkpoint`` atomically (a kill never leaves it empty)."""
        if "://" in self.save_dir:  # a URL: as in save
            super().tag_last_checkpoint(last_filename_basename)
            return
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),  # UTF-8
            "Free some space there, then run again with --resume.",
        )

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by processes that no longer exist."""
        try:
            names = os.listdir(self.save_dir)
        except OSError:
            return
        for file_name in names:
            match = _TMP_PATTERN.match(file_name)
            if match and not _pid_alive(int(match.group("pid"))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.save_dir, file_name))
                    self.logger.info(f"Removed {file_name}, left by an interrupted save")

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """fvcore's ``load(path, checkpointables=None)``; see the class for the fit rules."""
        checkpointables = args[0] if args else kwargs.get("checkpointables")
        self._exact_load = checkpointables is None
        self._loading_path = path
        try:
            return super().load(path, *args, **kwargs)
        except BaseException:
            # A damaged file must not stop resume_or_load from trying the next one.
            compat.forget_failed_load(self)
            raise

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            checkpoint = read_weights_file(filename, trusted=self.trust_weights_file)
        except WeightsFileError:
            raise  # unsafe, TorchScript or not a dict: the message already says what it is
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            if filename.endswith(".pth") and zipfile.is_zipfile(filename):
                # An intact torch.save archive: not damage, so show the error as it is.
                raise
            raise CorruptCheckpointError(
                f"Checkpoint {filename} cannot be read; it is truncated or corrupt "
                f"({type(e).__name__}: {e})"
            ) from e
        if not filename.endswith((".pkl", ".pyth")):
            # Current detectron2 reads ?matching_heuristics=True from a .pth URL only.
            checkpoint.update(compat.checkpoint_url_options(self))
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        model_keys = list(self.model.state_dict())
        incompatible = super()._load_model(checkpoint)
        # fvcore's _IncompatibleKeys: (missing_keys, unexpected_keys, incorrect_shapes).
        check_fit(self._loading_path, model_keys, *incompatible, exact=self._exact_load)
        return incompatible

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """As the parent's, but when ``last_checkpoint`` names a missing or unreadable file,
        resume from the newest readable ``.pth`` in ``save_dir`` (logging the error), or raise
        :class:`CorruptCheckpointError` if there is none."""
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        tagged = self.get_checkpoint_file()
        if tagged and os.path.isfile(tagged):
            try:
                return self.load(tagged)
            except CorruptCheckpointError as e:
                error = str(e)
        else:
            error = f"last_checkpoint names {tagged or 'nothing'}, which does not exist"
        self.logger.error(f"Cannot resume from the last checkpoint: {error}")
        exclude = os.path.abspath(tagged or "")
        others = [f for f in self.get_all_checkpoint_files() if os.path.abspath(f) != exclude]
        for candidate in sorted(others, key=os.path.getmtime, reverse=True):  # newest first
            try:
                checkpoint = self.load(candidate)
            except CorruptCheckpointError as e:
                self.logger.error(str(e))
                continue
            self.logger.warning(f"Resumed from {candidate} instead")
            return checkpoint
        raise CorruptCheckpointError(
            f"Cannot resume from {self.save_dir}: {error}, and no other checkpoint there is "
            "readable. Start without --resume (or restore a checkpoint) to go on."
        )


def load_inference_weights(
    model: nn.Module,
    weights: str,
    *,
    weights_key: str,
    save_dir: str = "",
    resume: bool = False,
    random_weights: bool = False,
    trust_weights_file: bool = False,
) -> Dict[str, Any]:
    """Load the weights of a model run for its outputs (``--eval-only``, demo, export): the
    file ``weights`` (or URL; "" for none), from config key ``weights_key`` (named in errors),
    must fit exactly. With ``resume``, the last checkpoint in ``save_dir`` (if any) wins; no
    weights is an error unless ``random_weights``, which keeps the random initialisation.
    Returns the checkpoint's data other than the weights (e.g. ``{"iteration": 89999}``).
    Raises MissingWeightsError (no weights, no ``random_weights``), ValueError (``resume``
    without ``save_dir``), WeightsFileError (weights and ``random_weights``; as ``load``)."""
    if resume and not save_dir:
        raise ValueError("load_inference_weights: resume needs the save_dir to resume from")
    # Every load below restores the whole state, so is checked exactly.
    checkpointer = AtomicDetectionCheckpointer(
        model, save_dir, trust_weights_file=trust_weights_file
    )
    if resume and checkpointer.has_checkpoint():
        return checkpointer.resume_or_load(weights, resume=True)
    if weights and random_weights:
        raise WeightsFileError(
            f"{weights_key} is {weights!r} and --random-weights asks for no weights: drop one"
        )
    if not weights:
        if random_weights:
            logger.warning(
                f"No weights ({weights_key} is empty): the model keeps its random "
                "initialisation (--random-weights); its outputs mean nothing"
            )
            return {}
        where = f", and {save_dir} has no checkpoint to resume from" if resume else ""
        # LazyConfig overrides are key=value, yacs ones KEY VALUE.
        example = f"{weights_key}{'=' if weights_key.islower() else ' '}output/model_final.pth"
        raise MissingWeightsError(
            f"No weights to run the model with: {weights_key} is empty{where}. Give the "
            f"checkpoint to use (e.g. {example}), or pass "
            "--random-weights to run a randomly initialised model on purpose."
        )
    return checkpointer.load(weights)  # the model only: the checkpointer has nothing else
