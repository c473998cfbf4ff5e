"""Describe built training objects (model, optimizer, LR scheduler, data loaders) as flat dicts
of plain values and tensors, and list where two descriptions differ. Used by
``recipe_forms.py`` to compare the two config forms of a recipe.

Keys of a description:

- ``type <module>``, ``model.<module>.<attr>``: every module's class and public attributes (a
  meta-architecture's box loss and test-time settings, an anchor generator's strides and
  offset, a matcher's thresholds, a loss's parameters, ...);
- ``param <name>``: shape, strides (the memory layout), dtype and trainability of a parameter;
  ``init <name>``: its value; ``buffer <name>``: every buffer, persistent or not (pixel mean and
  std, cell anchors, BatchNorm statistics); ``state_dict``: the checkpoint's keys;
- ``optimizer ...``: the optimizer's class and defaults, and for each trainable parameter the
  hyper-parameters of its group;
- ``schedule lr@<iter>``: the LR of each group at given iterations;
- ``data.train ...``, ``data.test[i] ...``: the dataset names a loader asks for and how many
  images it keeps, batch size, workers, sampler, and its mapper with the augmentations.
"""
from __future__ import annotations

import contextlib
import enum
import math
import types
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

import retinafocal  # noqa: F401  (compat first)
from detectron2.data import DatasetCatalog
from detectron2.data import build as d2_data_build
from detectron2.data.common import MapDataset
from detectron2.engine import hooks
from detectron2.structures import BoxMode
from retinafocal.data import datasets as rf_datasets
from retinafocal.engine import trainer as rf_trainer

Description = Dict[str, Any]

#: Optimizer options that choose how the update is computed (a loop over tensors or one batched
#: kernel), not what it computes. detectron2's yacs ``build_optimizer`` sets ``foreach=True`` on
#: current versions and leaves it unset on v0.6; a LazyConfig keeps torch's default.
IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable", "differentiable")

#: Relative tolerance of float comparisons (tensors are compared exactly).
FLOAT_RTOL = 1e-12


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def plain(value: Any, module_names: Optional[Dict[int, str]] = None, depth: int = 0) -> Any:
    """``value`` as comparable plain data: sequences as lists, mappings as dicts, modules by
    their name in the model, callables by qualified name, other objects as their class and
    public attributes. Tensors stay tensors. ``module_names``: ``{id(module): name}``."""
    module_names = module_names or {}
    if value is None or isinstance(value, (bool, str, torch.Tensor)):
        return value
    if isinstance(value, enum.Enum):
        return repr(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, torch.nn.Module):
        return f"<module {module_names.get(id(value), type(value).__name__)}>"
    if isinstance(value, (dict, DictConfig)):
        return {str(k): plain(v, module_names, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, ListConfig)):
        return [plain(v, module_names, depth + 1) for v in value]
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return _qualname(value)
    if depth < 6 and hasattr(value, "__dict__"):
        return {"class": _qualname(type(value)), **_public_attrs(value, module_names, depth + 1)}
    return repr(value)


def _public_attrs(obj: Any, module_names: Dict[int, str], depth: int = 0) -> Dict[str, Any]:
    return {
        k: plain(v, module_names, depth)
        for k, v in vars(obj).items()
        if not k.startswith("_") and k != "training"
    }


# model --------------------------------------------------------------------------------------------
def describe_model(model: torch.nn.Module) -> Description:
    """Module classes and attributes, parameters, initial values and buffers of ``model``."""
    names = {id(m): name for name, m in model.named_modules()}
    out: Description = {}
    for name, module in model.named_modules():
        prefix = f"model.{name}." if name else "model."
        out[f"type {name or '<model>'}"] = _qualname(type(module))
        for attr, value in _public_attrs(module, names).items():
            out[prefix + attr] = value
    for name, p in model.named_parameters():
        out[f"param {name}"] = {
            "shape": tuple(p.shape),
            "stride": p.stride(),
            "dtype": str(p.dtype),
            "requires_grad": p.requires_grad,
        }
        out[f"init {name}"] = p.detach()
    for name, b in model.named_buffers():
        out[f"buffer {name}"] = b
    out["state_dict"] = sorted(model.state_dict())
    return out


# optimizer, LR ------------------------------------------------------------------------------------
def describe_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> Description:
    """The optimizer's class and defaults, and each trainable parameter's group settings."""
    names = {id(p): n for n, p in model.named_parameters()}

    def settings(group: Dict[str, Any]) -> Dict[str, Any]:
        return {
            k: plain(v)
            for k, v in group.items()
            if k != "params" and k not in IMPLEMENTATION_SWITCHES
        }

    out: Description = {
        "optimizer class": _qualname(type(optimizer)),
        "optimizer defaults": settings(optimizer.defaults),
    }
    for group in optimizer.param_groups:
        for p in group["params"]:
            out[f"optimizer group of {names[id(p)]}"] = settings(group)
    return out


def describe_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_iter: int,
    iterations: Sequence[int],
    model: torch.nn.Module,
) -> Description:
    """The LR of each param group (named by its first parameter) at ``iterations``.

    ``scheduler`` goes through detectron2's ``LRScheduler`` hook, as in both training loops: the
    hook turns a LazyConfig's ``lr_multiplier`` (a ParamScheduler) into the ``LRMultiplier``
    that the yacs ``build_lr_scheduler`` returns directly.
    """
    hook = hooks.LRScheduler(optimizer=optimizer, scheduler=scheduler)
    # before_train reads the loop's length and position from the trainer.
    hook.trainer = types.SimpleNamespace(optimizer=optimizer, max_iter=max_iter, iter=0)
    hook.before_train()
    lr_scheduler = hook.scheduler
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [names[id(g["params"][0])] for g in optimizer.param_groups]
    out: Description = {}
    for it in iterations:
        lr_scheduler.last_epoch = it
        out[f"schedule lr@{it}"] = dict(zip(groups, lr_scheduler.get_lr()))
    return out


# data ---------------------------------------------------------------------------------------------
def _fake_records(name: str) -> List[Dict[str, Any]]:
    """Two images per dataset: one with a box, one without (whether a loader keeps the second
    tells whether it filters images without annotations)."""
    box = {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
    image = {"height": 8, "width": 8}
    return [
        {"file_name": f"{name}/0.jpg", "image_id": 0, **image, "annotations": [box]},
        {"file_name": f"{name}/1.jpg", "image_id": 1, **image, "annotations": []},
    ]


class _MapDatasetKeepingMapper(MapDataset):
    """detectron2's MapDataset that also keeps the mapper it was given, for inspection."""

    def __init__(self, dataset: Any, map_func: Callable) -> None:
        super().__init__(dataset, map_func)
        self.kept_mapper = map_func


def _record_batch_loader(dataset: Any, sampler: Any, total_batch_size: int, **kwargs: Any):
    """Stands in for detectron2's ``build_batch_data_loader``: returns its arguments."""
    return {"dataset": dataset, "sampler": sampler, "total_batch_size": total_batch_size, **kwargs}


@contextlib.contextmanager
def recording_data(requested: List[str]) -> Iterator[None]:
    """While active, detectron2's loaders build on :func:`_fake_records` (no files are read;
    the names asked for are appended to ``requested``), the training loader returns the
    arguments of its batching step instead of a loader, and each MapDataset keeps its mapper."""

    def fake_get(name: str) -> List[Dict[str, Any]]:
        requested.append(name)
        return _fake_records(name)

    def fake_check(
        names: Any, *, on_unreadable: Optional[str] = None, purpose: str = "training"
    ) -> Dict[str, Any]:
        # The check before loading reads the json; record what it was asked instead.
        for name in [names] if isinstance(names, str) else names:
            requested.append(f"checked {name} (on_unreadable={on_unreadable}, for {purpose})")
        return {}

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(DatasetCatalog, "get", fake_get))
        for module in (rf_datasets, rf_trainer):
            stack.enter_context(mock.patch.object(module, "check_datasets", fake_check))
        stack.enter_context(
            mock.patch.object(d2_data_build, "MapDataset", _MapDatasetKeepingMapper)
        )
        stack.enter_context(
            mock.patch.object(d2_data_build, "build_batch_data_loader", _record_batch_loader)
        )
        yield


def _describe_mapped(prefix: str, dataset: Any, requested: List[str]) -> Description:
    return {
        f"{prefix} datasets": list(requested),
        f"{prefix} images": len(dataset),
        f"{prefix} mapper": plain(dataset.kept_mapper),
    }


def describe_train_loader(build: Callable[[], Dict[str, Any]]) -> Description:
    """What ``build()`` (a training-loader builder) would feed the model."""
    requested: List[str] = []
    with recording_data(requested):
        args = build()
    out = _describe_mapped("data.train", args.pop("dataset"), requested)
    out["data.train sampler"] = _qualname(type(args.pop("sampler")))
    for key, value in args.items():
        out[f"data.train {key}"] = plain(value)
    return out


def describe_test_loaders(builds: Sequence[Callable[[], Any]]) -> Description:
    """What each test-loader builder in ``builds`` would feed the model."""
    out: Description = {"data.test loaders": len(builds)}
    for i, build in enumerate(builds):
        requested: List[str] = []
        with recording_data(requested), warnings.catch_warnings():
            # torch warns about more workers than cores; this loader is never iterated.
            warnings.filterwarnings("ignore", message="This DataLoader will create")
            loader = build()
        prefix = f"data.test[{i}]"
        out.update(_describe_mapped(prefix, loader.dataset, requested))
        out[f"{prefix} batch_size"] = loader.batch_size
        out[f"{prefix} num_workers"] = loader.num_workers
        out[f"{prefix} sampler"] = _qualname(type(loader.sampler))
        out[f"{prefix} collate_fn"] = plain(loader.collate_fn)
    return out


# comparison ---------------------------------------------------------------------------------------
def _tensors_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality of two tensors of one dtype and shape. numpy compares CPU tensors several
    times faster than torch.equal here, which counts for the ~40M parameters of an R101 model."""
    a, b = a.detach().cpu(), b.detach().cpu()
    if a.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):  # no numpy dtype
        return bool(torch.equal(a, b))
    return bool(np.array_equal(a.numpy(), b.numpy()))


def mismatches(a: Any, b: Any, path: str) -> List[Tuple[str, Any, Any]]:
    """``(path, a_part, b_part)`` for every innermost place where ``a`` and ``b`` differ."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and _tensors_equal(a, b)
        )
        return [] if same else [(path, a, b)]
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                out.append((f"{path}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                out += mismatches(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in mismatches(x, y, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if isinstance(a, bool) or isinstance(b, bool):
            same = a is b
        else:
            # Within float rounding: yacs builds step multipliers as 0.1 ** k, and 0.1 ** 2 is
            # 0.010000000000000002, not the 0.01 a LazyConfig writes.
            same = math.isclose(a, b, rel_tol=FLOAT_RTOL, abs_tol=0.0)
    else:
        same = type(a) is type(b) and a == b
    return [] if same else [(path, a, b)]


def short(value: Any, limit: int = 160) -> str:
    if isinstance(value, torch.Tensor):
        text = f"tensor{tuple(value.shape)} {value.dtype} sum={value.double().sum().item():.6g}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
