"""Weights files for the checkpoint tests: malicious ones, model-zoo ones, trusted custom ones."""
import io
import os
import pickle
from typing import Dict

import numpy as np
import torch
from torch import nn


class CreatesMarker:
    """Unpickling an instance opens ``path`` for writing, i.e. creates the file: what a
    malicious weights file would do with ``os.system`` instead."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class TrustedNote:
    """A harmless custom class that a user's own weights file may hold: only full unpickling
    (the opt-out) can rebuild it."""

    def __init__(self, text: str):
        self.text = text


def malicious_pkl(path: str, marker: str, protocol: int = pickle.DEFAULT_PROTOCOL) -> str:
    """A ``.pkl`` in detectron2's model-zoo layout whose unpickling creates ``marker``."""
    data = {"model": {"w": np.zeros(2, np.float32)}, "__author__": CreatesMarker(marker)}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def malicious_pth(path: str, marker: str, model: nn.Module = None) -> str:
    """A ``torch.save`` checkpoint (the model's real weights, if given) whose unpickling
    creates ``marker``."""
    weights = model.state_dict() if model is not None else {"w": torch.zeros(2)}
    torch.save({"model": weights, "iteration": CreatesMarker(marker)}, path)
    return path


def as_numpy(model: nn.Module) -> Dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def zoo_pkl(path: str, weights: Dict[str, np.ndarray], *, numpy1: bool = False,
            protocol: int = 2, **extra) -> str:
    """A ``.pkl`` as detectron2's model zoo holds them: {"model": {name: ndarray},
    "__author__": ..., **extra}. ``numpy1``: name numpy's functions by numpy 1's module paths
    (``numpy.core.multiarray``), as the zoo's files (written with numpy 1) do."""
    data = {"model": weights, "__author__": "retinafocal tests", **extra}
    buffer = io.BytesIO()
    pickle.dump(data, buffer, protocol=protocol)
    raw = buffer.getvalue()
    if numpy1:
        # Protocol 2 names globals as "module\nname\n" lines: rename the module in place.
        assert protocol <= 2, "numpy1 renames GLOBAL opcodes, which protocol <= 2 writes"
        renamed = raw.replace(b"numpy._core.", b"numpy.core.")
        assert renamed != raw or b"numpy.core." in raw, "no numpy global found"
        raw = renamed
    with open(path, "wb") as f:
        f.write(raw)
    return path


def write_bytes(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def marker_path(folder: str) -> str:
    return os.path.join(folder, "code_ran.txt")
