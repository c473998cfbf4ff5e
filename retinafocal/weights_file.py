"""Reading a weights file without running code it contains (unpickling may call any function a
file names): ``.pkl`` files (detectron2's model zoo, Caffe2 / Detectron1 blobs) with an
unpickler that builds only containers, scalars, strings and numpy arrays, all else (``.pth``,
pycls ``.pyth``) with ``torch.load(weights_only=True)``. ``trusted=True``
(``--trust-weights-file``) unpickles fully."""
from __future__ import annotations

import codecs
import collections
import logging
import pickle
import re
import zipfile
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

__all__ = [
    "WeightsFileError", "UnsafeWeightsFileError", "TorchScriptWeightsError", "read_weights_file"
]

logger = logging.getLogger(__name__)

#: What the error messages tell a user who trusts the file.
OPT_OUT_HINT = (
    "If you trust where the file comes from, pass --trust-weights-file (or construct the "
    "checkpointer with trust_weights_file=True) to load it with full unpickling."
)


class WeightsFileError(RuntimeError):
    """A weights file cannot be used as asked; the message names the file and the fix."""


class UnsafeWeightsFileError(WeightsFileError):
    """The file needs a Python global that weights never need. ``global_name``: "module.name",
    or "" when PyTorch did not name it."""

    def __init__(self, message: str, global_name: str = ""):
        super().__init__(message)
        self.global_name = global_name


class TorchScriptWeightsError(WeightsFileError):
    """The file is a TorchScript archive (a traced or scripted model), not a checkpoint."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` limited to latin-1, which protocol-2 pickles use for ``bytes``."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin-1")


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    # numpy's pickling functions, asked from numpy itself rather than imported from private
    # modules: _reconstruct (protocols 0-4), _frombuffer (protocol 5) and scalar.
    array = np.zeros(1, dtype=np.float32)
    reconstruct, frombuffer = array.__reduce__()[0], array.__reduce_ex__(5)[0]
    allowed: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    # Model-zoo files name "numpy.core" (numpy 1); numpy 2 writes "numpy._core".
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = np.float32(0).__reduce__()[0]
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _WeightsUnpickler(pickle.Unpickler):
    """Builds containers, numbers, strings and numpy arrays; refuses every other global."""

    def __init__(self, file: Any, path: str):
        # latin-1: Python 2 pickles (Detectron1/Caffe2 zoo files) store raw array bytes as str.
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafeWeightsFileError(
                f"Refusing to load {self._path}: it asks for the Python global "
                f"{module}.{name}, which a weights file (arrays, numbers, strings) never "
                f"needs; unpickling it could run code. {OPT_OUT_HINT}",
                f"{module}.{name}",
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeWeightsFileError(
            f"Refusing to load {self._path}: it refers to external objects (a pickle persistent "
            "id, as torch.save's legacy format writes), which a .pkl weights file never does. "
            f"Save it as .pth with torch.save instead. {OPT_OUT_HINT}"
        )


def _is_torchscript_archive(path: str) -> bool:
    """True for ``torch.jit.save`` archives (``constants.pkl``, ``code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _refused_global(message: str, path: str) -> Optional[str]:
    """The global that made torch's weights_only unpickler refuse ``path`` ("" if unnamed), or
    None when nothing was refused (damage). For a plain pickle torch stops before the global
    (at numpy's functions or protocol 4-5 opcodes), so :class:`_WeightsUnpickler` finds it."""
    if zipfile.is_zipfile(path):
        # torch >= 2.4 says "Unsupported global: GLOBAL m.n", older ones "Unsupported class m.n".
        match = re.search(r"Unsupported (?:global: GLOBAL|class) (\S+)", message)
        return match.group(1) if match else ""
    try:
        with open(path, "rb") as f:
            _WeightsUnpickler(f, path).load()  # builds nothing but allowed objects
    except UnsafeWeightsFileError as e:
        return e.global_name
    except Exception:  # unpickling raises several types on bytes that are not a pickle
        pass
    return None  # damage, or a plain pickle of arrays: not a torch file, so damaged as a .pth


def _torch_load(path: str, trusted: bool) -> Any:
    try:
        # Explicit: torch < 2.6 defaults to weights_only=False, which unpickles anything.
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        text = str(e)
        name = _refused_global(text, path) if "weights only" in text.lower() else None
        if name is None:
            raise  # not a refusal: damage, which the checkpointer reports as such
        if name:
            what = f"the Python global {name}"
        else:  # torch's own words, without its advice to turn the check off
            detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            what = f"something outside its allowlist ({detail})"
        raise UnsafeWeightsFileError(
            f"Refusing to load {path}: it asks for {what}, which torch.load(weights_only=True) "
            "does not build (it builds tensors, numbers, strings and containers); unpickling "
            f"it could run code. {OPT_OUT_HINT}",
            name,
        ) from None


def _expect_dict(data: Any, path: str) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise WeightsFileError(
            f"{path} holds a {type(data).__name__}, not a dict of weights: is it a checkpoint?"
        )
    return data


def _pkl_checkpoint(path: str, trusted: bool) -> Dict[str, Any]:
    """As detectron2 reads a ``.pkl``: its model-zoo files are checkpoints; others are Caffe2 /
    Detectron1 blobs, mapped by matching heuristics."""
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1") if trusted else _WeightsUnpickler(f, path).load()
    if "model" in _expect_dict(data, path) and "__author__" in data:
        return data
    # Detection models keep their weights under "blobs", ImageNet models at the top.
    blobs = _expect_dict(data.get("blobs", data), path)
    # "*_momentum" blobs are the SGD momentum of the weight of the same name, not weights.
    weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def read_weights_file(path: str, *, trusted: bool = False) -> Dict[str, Any]:
    """Read the local weights file ``path`` without running code (unless ``trusted``) into the
    layout ``DetectionCheckpointer._load_model`` takes: ``"model"`` ({name: tensor or ndarray})
    and whatever else the file holds (``iteration``, ...; ``__author__`` and
    ``matching_heuristics`` for ``.pkl`` / ``.pyth``).

    Raises:
        UnsafeWeightsFileError: the file needs a global outside the allowlist.
        TorchScriptWeightsError: the file is a TorchScript archive.
        WeightsFileError: the file holds something other than a dict.
        pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile: the file is damaged.
    """
    if _is_torchscript_archive(path):
        raise TorchScriptWeightsError(
            f"{path} is a TorchScript archive (a traced or scripted model, such as the model.ts "
            "that tools/export_model.py writes), not a checkpoint: its weights cannot be loaded "
            "into a model built from a config. Run it as it is with torch.jit.load (its "
            "export_info.json describes the input), or give the .pth checkpoint it was exported "
            "from (e.g. output/model_final.pth) as the weights."
        )
    if trusted:
        logger.warning(
            f"Loading {path} with full unpickling (--trust-weights-file): any code in this "
            "file runs now. Do this only for files from a source you trust."
        )
    if path.endswith(".pkl") and not zipfile.is_zipfile(path):
        return _pkl_checkpoint(path, trusted)
    data = _expect_dict(_torch_load(path, trusted), path)
    if not path.endswith(".pyth"):
        return data if "model" in data else {"model": data}
    # pycls: weights under "model_state"; BatchNorm's step counters are not weights.
    if "model_state" not in data:
        raise WeightsFileError(f"{path}: a pycls .pyth checkpoint must contain 'model_state'")
    state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": state, "__author__": "pycls", "matching_heuristics": True}
