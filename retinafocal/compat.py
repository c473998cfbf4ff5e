"""The one home of workarounds for older detectron2 builds on today's packages: most serve v0.6
from the pure-Python ``pb1-detectron2`` archive (no compiled ``_C``), some every version up to
current main. Each checks the installed detectron2 (or torch) first and does nothing where not
needed; :func:`describe` lists the active ones. :func:`apply` runs on ``import retinafocal``,
before detectron2's ``layers``, ``modeling`` or ``evaluation`` are first imported."""
from __future__ import annotations

import functools
import importlib
import importlib.resources
import importlib.util
import inspect
import logging
import re
import sys
import types
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional
from urllib.parse import parse_qs

if TYPE_CHECKING:
    import numpy as np
    from detectron2.data import DatasetMapper

__all__ = [
    "ACTIVE",
    "HAS_D2_C",
    "apply",
    "describe",
    "dataset_mapper_call",
    "forget_failed_load",
    "checkpoint_url_options",
]

logger = logging.getLogger(__name__)

# True when a compiled ``detectron2._C`` is importable (official builds).
HAS_D2_C: bool = False
# The active workarounds, name -> what describe() says of it: each function below adds its entry
# when it applies its workaround (or finds its assumption about detectron2 holds).
ACTIVE: Dict[str, str] = {}

_NO_OPS = "none (detectron2 built without its C++ ops)"


class _MissingCompiledOps(types.ModuleType):
    """``detectron2._C`` for v0.6 without C++ ops, which ``layers/`` and ``evaluation/`` import
    at module level although RetinaNet needs none of them. Using an op raises, naming it."""

    # v0.6's collect_env_info (logged by default_setup) asks _C for its build info.
    get_compiler_version = get_cuda_version = staticmethod(lambda: _NO_OPS)
    has_cuda = staticmethod(lambda: False)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2._C.{name} is unavailable: this detectron2 was installed without its "
            "compiled ops (pb1-detectron2 v0.6 archive). Install the official detectron2 to use "
            "deformable convs, rotated boxes or COCOEvaluator(use_fast_impl=True)."
        )


def _detectron2_source(relpath: str) -> str:
    """Text of a file of the installed detectron2, read without importing it; "" if absent."""
    path = importlib.resources.files("detectron2") / relpath
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _stub_missing_d2_c() -> None:
    """v0.6 (pb1 archive): provide ``detectron2._C`` so that its packages import."""
    global HAS_D2_C
    existing = sys.modules.get("detectron2._C")
    if existing is not None or importlib.util.find_spec("detectron2._C") is not None:
        HAS_D2_C = not isinstance(existing, _MissingCompiledOps)  # False: our stub, from before
        return
    sys.modules["detectron2._C"] = _MissingCompiledOps("detectron2._C")
    import detectron2

    detectron2._C = sys.modules["detectron2._C"]  # type: ignore[attr-defined]
    ACTIVE["d2_c_stub"] = "_C stub"
    logger.info("detectron2._C is not built; using retinafocal.compat's stub (v0.6 archive)")


def _alias_pil_linear() -> None:
    """v0.6 on Pillow >= 10: ``data/transforms/transform.py`` has the removed ``Image.LINEAR``
    (= BILINEAR) as a default argument, so ``import detectron2.data`` fails."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return
    if "Image.LINEAR" not in _detectron2_source("data/transforms/transform.py"):
        return
    Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    ACTIVE["pil_linear"] = "PIL Image.LINEAR alias"


def _fix_map_dataset_retry() -> None:
    """v0.6 on Python >= 3.11: when the mapper returns None (a skipped image), ``MapDataset``
    calls ``random.sample`` on a set, which 3.11 rejects. Current detectron2's retry loop."""
    if sys.version_info < (3, 11) or "map_dataset_retry" in ACTIVE:
        return
    if "sample(self._fallback_candidates, k=1)" not in _detectron2_source("data/common.py"):
        return
    from detectron2.data.common import MapDataset

    def __getitem__(self, idx):
        retry_count = 0
        cur_idx = int(idx)
        while True:
            data = self._map_func(self._dataset[cur_idx])
            if data is not None:
                self._fallback_candidates.add(cur_idx)
                return data
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:  # v0.6 raised a bare IndexError here
                raise RuntimeError(
                    f"The mapper rejected every one of the {len(self._dataset)} images it was "
                    "given (with DATALOADER.ON_UNREADABLE_IMAGE 'skip': none could be read)."
                )
            cur_idx = self._rng.choice(sorted(self._fallback_candidates))
            if retry_count >= 3:
                logging.getLogger("detectron2.data.common").warning(
                    f"Failed to apply `_map_func` for idx: {idx}, retry count: {retry_count}"
                )

    MapDataset.__getitem__ = __getitem__
    ACTIVE["map_dataset_retry"] = "MapDataset retry on Python 3.11"


def _fix_default_trainer_state() -> None:
    """v0.6: ``DefaultTrainer`` checkpoints lack the inner trainer's state (optimizer, AMP
    scaler), so ``--resume`` restarts with fresh momentum. Current detectron2's two methods."""
    from detectron2.engine import DefaultTrainer, TrainerBase

    if "trainer_state" in ACTIVE or "state_dict" in DefaultTrainer.__dict__:
        return

    def state_dict(self):
        return {**TrainerBase.state_dict(self), "_trainer": self._trainer.state_dict()}

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    DefaultTrainer.state_dict = state_dict
    DefaultTrainer.load_state_dict = load_state_dict
    ACTIVE["trainer_state"] = "DefaultTrainer checkpoints the optimizer"


def _export_without_caffe2() -> None:
    """v0.6: ``export/__init__.py`` star-imports ``api.py``, which needs ``caffe2`` (gone from
    PyTorch), so ``TracingAdapter`` cannot be imported. Register the package without running its
    ``__init__``, with the caffe2-free names current detectron2 exports."""
    if "export" in ACTIVE or "detectron2.export" in sys.modules:
        return
    init = _detectron2_source("export/__init__.py")
    if "from .api import *" not in init or "except ImportError" in init:
        return  # current detectron2: caffe2 is already optional
    if importlib.util.find_spec("caffe2") is not None:
        return
    import detectron2

    spec = importlib.util.find_spec("detectron2.export")
    package = importlib.util.module_from_spec(spec)  # not executed: its __init__ is what fails
    sys.modules["detectron2.export"] = package
    detectron2.export = package  # type: ignore[attr-defined]
    from detectron2.export import flatten, torchscript

    package.TracingAdapter = flatten.TracingAdapter  # type: ignore[attr-defined]
    package.dump_torchscript_IR = torchscript.dump_torchscript_IR  # type: ignore[attr-defined]
    package.scripting_with_instances = torchscript.scripting_with_instances  # type: ignore
    package.__all__ = ["TracingAdapter", "dump_torchscript_IR", "scripting_with_instances"]
    ACTIVE["export"] = "detectron2.export without caffe2"


def _check_dataset_mapper_reads_through_utils() -> None:
    """v0.6 to current main: :func:`dataset_mapper_call` relies on ``DatasetMapper.__call__``
    reading its image with the module global ``utils.read_image``."""
    from detectron2.data import DatasetMapper, detection_utils

    call = DatasetMapper.__call__
    if call.__globals__.get("utils") is detection_utils and "read_image" in call.__code__.co_names:
        ACTIVE["dataset_mapper_call"] = "DatasetMapper.__call__ given a read image"


def dataset_mapper_call(mapper: DatasetMapper, dataset_dict: dict, image: np.ndarray) -> dict:
    """Run ``DatasetMapper.__call__`` (detectron2's code, not a copy; it has no hook for this)
    with ``image``, (H, W, C) uint8 in ``mapper.image_format``, as what it reads from
    ``dataset_dict["file_name"]``: the code runs with copied globals whose ``utils`` answers the
    first ``read_image``, so nothing global changes, nor ``dataset_dict``. Raises detectron2's
    ``SizeMismatchError`` when ``image`` is not of the size the dict says."""
    from detectron2.data import DatasetMapper, detection_utils

    if "dataset_mapper_call" not in ACTIVE:
        raise RuntimeError(
            "This detectron2's DatasetMapper.__call__ does not read its image through "
            "detection_utils.read_image (as v0.6 to current main do), so retinafocal cannot hand "
            "it an image: retinafocal.compat.dataset_mapper_call needs updating for it."
        )
    used: list = []

    def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
        if not used and file_name == dataset_dict["file_name"]:
            used.append(file_name)
            return image
        return detection_utils.read_image(file_name, format)

    call = DatasetMapper.__call__
    utils = types.SimpleNamespace(**{**vars(detection_utils), "read_image": read_image})
    globals_ = {**call.__globals__, "utils": utils}
    with_image = types.FunctionType(
        call.__code__, globals_, call.__name__, call.__defaults__, call.__closure__
    )
    result = with_image(mapper, dataset_dict)
    if not used:
        raise RuntimeError(
            f"DatasetMapper.__call__ did not read {dataset_dict['file_name']!r} through "
            "utils.read_image: retinafocal.compat.dataset_mapper_call needs updating."
        )
    return result


def _detect_checkpoint_load_state() -> None:
    """Current detectron2 (not v0.6): ``DetectionCheckpointer.load`` sets
    ``_parsed_url_during_load`` and clears it only on success, so after one failed load every
    later ``load()`` fails its assert."""
    if "_parsed_url_during_load" in _detectron2_source("checkpoint/detection_checkpoint.py"):
        ACTIVE["checkpoint_load_state"] = (
            "checkpointer load state cleared after a failed load, URL options read"
        )


def forget_failed_load(checkpointer: object) -> None:
    """After a ``DetectionCheckpointer.load`` raised, clear current detectron2's per-load state
    so that the checkpointer can load another file. Nothing on v0.6."""
    if "checkpoint_load_state" in ACTIVE:
        checkpointer._parsed_url_during_load = None  # type: ignore[attr-defined]


def checkpoint_url_options(checkpointer: object) -> Dict[str, Any]:
    """The options current detectron2 reads from the URL query of the file being loaded (only
    ``?matching_heuristics=True``; others raise, as there), for a subclass that reads files
    itself. {} on v0.6."""
    parsed = getattr(checkpointer, "_parsed_url_during_load", None)
    if "checkpoint_load_state" not in ACTIVE or parsed is None:
        return {}
    queries = parse_qs(parsed.query)
    heuristics = queries.pop("matching_heuristics", None) == ["True"]
    if queries:
        raise ValueError(
            f"Unsupported option(s) {sorted(queries)} in the query of {parsed.geturl()}; "
            "detectron2 knows only matching_heuristics=True"
        )
    return {"matching_heuristics": True} if heuristics else {}


# Modules that call torch.jit.script when imported (fvcore 0.1.5, detectron2 v0.6 to main).
_SCRIPTING_MODULES = ("fvcore.nn.focal_loss", "detectron2.modeling.box_regression")
_JIT_SCRIPT_DEPRECATION = "`torch.jit.script` is deprecated"


def _import_scripting_modules_quietly() -> None:
    """torch >= 2.14 deprecates ``torch.jit.script``, which fvcore and detectron2 call on import:
    import those modules once with that warning filtered out (later calls still warn)."""
    import torch

    if "jit_script_warnings" in ACTIVE or all(m in sys.modules for m in _SCRIPTING_MODULES):
        return
    try:
        if _JIT_SCRIPT_DEPRECATION not in inspect.getsource(torch.jit.script):
            return  # this torch does not deprecate it
    except (OSError, TypeError):
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=re.escape(_JIT_SCRIPT_DEPRECATION), category=FutureWarning
        )
        for module in _SCRIPTING_MODULES:
            importlib.import_module(module)
    ACTIVE["jit_script_warnings"] = "import-time torch.jit.script deprecation warnings silenced"


def _keep_registered_builtins_alive() -> None:
    """torch <= 2.14: TorchScript's builtin table is keyed by ``id()``, and ``torch._ops`` may
    drop an op it registered there (``_refresh_packet``, when a ``torch.library`` adds an
    overload, as inductor's freezing does); an object later born at its address is taken for it,
    and scripting fails at random ("builtin cannot be used as a value"). Keep registered objects
    alive in the list that keeps torch's own builtins alive."""
    import torch.jit._builtins as builtins

    if "jit_builtins" in ACTIVE:
        return
    register = builtins._register_builtin
    try:
        if "_builtin_ops" in inspect.getsource(register):
            return  # this torch keeps them alive itself
    except (OSError, TypeError):
        return

    @functools.wraps(register)
    def register_and_keep(fn: Any, op: str) -> None:
        builtins._builtin_ops.append((fn, op))
        register(fn, op)

    builtins._register_builtin = register_and_keep
    ACTIVE["jit_builtins"] = "TorchScript's registered builtin ops kept alive"


def _distributed_worker(
    local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout=None
) -> None:
    """One worker of v0.6's ``launch`` (same arguments), as current detectron2 starts it: NCCL
    and one GPU each with CUDA, gloo on CPU. (Spawned by module and name: workers import us.)"""
    import torch
    import torch.distributed as dist
    from detectron2.engine.launch import DEFAULT_TIMEOUT
    from detectron2.utils import comm

    use_cuda = torch.cuda.is_available()
    if use_cuda and per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"launch asked for {per_machine} workers per machine but CUDA sees "
            f"{torch.cuda.device_count()} GPU(s)"
        )
    rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout or DEFAULT_TIMEOUT,
        )
    except Exception:
        logger.error(f"Could not join the process group at {dist_url} as rank {rank}")
        raise
    # v0.6's comm has no create_local_process_group; every process must create every group.
    for machine in range(world_size // per_machine):
        group = dist.new_group(list(range(machine * per_machine, (machine + 1) * per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    if use_cuda:
        torch.cuda.set_device(local_rank)
    comm.synchronize()  # all groups exist everywhere before any worker starts its work
    main_func(*args)


def _launch_gloo_without_cuda() -> None:
    """v0.6: ``launch`` with several workers asserts CUDA and joins with NCCL, so
    ``--num-gpus 2`` cannot run on CPU; give it current detectron2's worker (gloo on CPU)."""
    source = _detectron2_source("engine/launch.py")
    if "launch_gloo" in ACTIVE or "assert torch.cuda.is_available()" not in source:
        return
    launch_module = importlib.import_module("detectron2.engine.launch")
    launch_module._distributed_worker = _distributed_worker  # launch() looks it up per call
    ACTIVE["launch_gloo"] = "launch uses gloo without CUDA"


def _ddp_cpu_model_without_device_ids() -> None:
    """v0.6 to current main: ``create_ddp_model`` passes ``device_ids=[local rank]``, which
    ``DistributedDataParallel`` rejects for a CPU model: leave them unset for a CPU model."""
    source = _detectron2_source("engine/defaults.py")
    if "ddp_cpu" in ACTIVE or 'kwargs["device_ids"] = [comm.get_local_rank()]' not in source:
        return
    import detectron2.engine
    from detectron2.engine import defaults

    detectron2_create_ddp_model = defaults.create_ddp_model

    def create_ddp_model(model, *, fp16_compression=False, **kwargs):
        first = next(model.parameters(), None)
        if "device_ids" not in kwargs and first is not None and first.device.type == "cpu":
            kwargs["device_ids"] = None
        return detectron2_create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)

    create_ddp_model.__doc__ = detectron2_create_ddp_model.__doc__
    # DefaultTrainer calls it through the module global; users import it from either place.
    defaults.create_ddp_model = create_ddp_model
    detectron2.engine.create_ddp_model = create_ddp_model
    ACTIVE["ddp_cpu"] = "create_ddp_model gives CPU models no device_ids"


def apply() -> None:
    """Apply every workaround the installed detectron2 needs. Idempotent."""
    _stub_missing_d2_c()
    _alias_pil_linear()
    _import_scripting_modules_quietly()  # needs the _C stub; before anything imports them
    _keep_registered_builtins_alive()
    _fix_map_dataset_retry()  # imports detectron2.data: needs the two above first
    _fix_default_trainer_state()  # imports detectron2.engine: likewise
    _export_without_caffe2()
    _check_dataset_mapper_reads_through_utils()
    _detect_checkpoint_load_state()
    _launch_gloo_without_cuda()
    _ddp_cpu_model_without_device_ids()


def describe() -> str:
    """One line saying which detectron2 is installed and which workarounds are active."""
    import detectron2

    compiled = "compiled" if HAS_D2_C else "absent"
    parts = [f"detectron2 {detectron2.__version__} at {detectron2.__path__[0]}", f"_C={compiled}"]
    return ", ".join(parts + [f"compat: {label}" for label in ACTIVE.values()])
