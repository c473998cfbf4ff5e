"""Build both forms of a recipe (yacs ``.yaml`` and LazyConfig ``.py``) as ``train_net.py`` runs
them, and describe what each one would train (see :mod:`.describe`); used by
``test_recipe_forms.py``.

Both models are built under the same seed, so equal recipes give equal initial weights (conv
init and the prior bias of the class head are compared too). Settings that exist only as config
values (initial weights, iterations, checkpoint and eval periods, seed, ...) are read through
:data:`RUN_SETTINGS` as ``run <yacs key>``. Two forms of one recipe must give equal descriptions
except for :data:`ALLOWED_TO_DIFFER`.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Sequence, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

import retinafocal  # noqa: F401  (compat first)
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from retinafocal import add_retinafocal_config
from retinafocal.config_overrides import merge_yacs_file
from retinafocal.engine import Trainer, build_lazy_model

from .common import CONFIG_DIR
from .describe import (
    Description,
    describe_model,
    describe_optimizer,
    describe_schedule,
    describe_test_loaders,
    describe_train_loader,
    mismatches,
    plain,
    short,
)

#: (yacs key, LazyConfig key, LazyConfig default or _REQUIRED): run settings with no built
#: object to read them from. The LazyConfig defaults are those of retinafocal's LazyConfig loop
#: and of detectron2's ``default_setup`` (``train.cudnn_benchmark``).
_REQUIRED = object()
RUN_SETTINGS: Tuple[Tuple[str, str, Any], ...] = (
    ("MODEL.WEIGHTS", "train.init_checkpoint", _REQUIRED),
    ("SOLVER.MAX_ITER", "train.max_iter", _REQUIRED),
    ("SOLVER.CHECKPOINT_PERIOD", "train.checkpointer.period", _REQUIRED),
    ("TEST.EVAL_PERIOD", "train.eval_period", _REQUIRED),
    ("SEED", "train.seed", _REQUIRED),
    ("MODEL.DEVICE", "train.device", _REQUIRED),
    ("SOLVER.AMP.ENABLED", "train.amp.enabled", _REQUIRED),
    ("CUDNN_BENCHMARK", "train.cudnn_benchmark", False),
    ("DATASETS.COCO_JSON", "datasets.coco_json", []),
    ("MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET", "datasets.num_classes_from_dataset", False),
    ("OUTPUT_DIR", "train.output_dir", _REQUIRED),
)

#: Keys whose values may differ between the two forms of a recipe, and why.
ALLOWED_TO_DIFFER: Dict[str, str] = {
    "run OUTPUT_DIR": "where the run writes; the embedded recipe's forms write to different "
    "directories so that --resume never continues the other form's checkpoint",
}

#: The iterations at which schedules are compared: this many evenly spaced ones, plus the
#: neighbours of the yacs form's warm-up end and LR steps.
SCHEDULE_SAMPLES = 400

#: Same seed for both builds, so equal recipes give equal initial weights.
BUILD_SEED = 0


def recipe_pairs(config_dir: str = CONFIG_DIR) -> List[str]:
    """Stems (relative to ``config_dir``, no extension) of every recipe that has both a ``.yaml``
    and a ``.py`` form, sorted."""
    stems = []
    for dirpath, _, files in os.walk(config_dir):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext == ".yaml" and stem + ".py" in files:
                stems.append(os.path.relpath(os.path.join(dirpath, stem), config_dir))
    return sorted(stems)


def load_yacs(path: str) -> CfgNode:
    """A ``.yaml`` recipe as ``train_net.py`` loads it (without command-line overrides)."""
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, path)
    return cfg


def load_lazy(path: str) -> DictConfig:
    """A ``.py`` recipe as ``train_net.py`` loads it (without command-line overrides)."""
    return LazyConfig.load(path)


def schedule_iterations(cfg: CfgNode, lazy_max_iter: int) -> List[int]:
    """Where the two forms' LR schedules are compared: evenly spaced iterations over the longer
    of the two runs, plus both sides of the yacs form's warm-up end and of each of its steps
    (a step moved by one iteration in either form shows up there)."""
    max_iter = max(int(cfg.SOLVER.MAX_ITER), int(lazy_max_iter))
    points = set(range(0, max_iter, max(1, max_iter // SCHEDULE_SAMPLES)))
    for edge in [int(cfg.SOLVER.WARMUP_ITERS), *map(int, cfg.SOLVER.STEPS)]:
        points.update((edge - 1, edge, edge + 1))
    points.update((1, max_iter - 1))
    return sorted(i for i in points if 0 <= i < max_iter)


def describe_yacs(cfg: CfgNode, iterations: Sequence[int]) -> Description:
    """Everything the yacs recipe ``cfg`` trains with, built by retinafocal's ``Trainer`` (the
    class ``train_net.py`` uses), on CPU. ``cfg`` is not modified."""
    out: Description = {
        f"run {key}": plain(_yacs_value(cfg, key)) for key, _, _ in RUN_SETTINGS
    }
    # DefaultTrainer's PeriodicCheckpointer has no max_to_keep: every checkpoint is kept.
    out["run checkpoints all kept"] = True
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(BUILD_SEED)
    model = Trainer.build_model(cfg)
    out.update(describe_model(model))
    optimizer = Trainer.build_optimizer(cfg, model)
    out.update(describe_optimizer(optimizer, model))
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    out.update(describe_schedule(optimizer, scheduler, cfg.SOLVER.MAX_ITER, iterations, model))
    out.update(describe_train_loader(lambda: Trainer.build_train_loader(cfg)))
    test_builds = [
        lambda name=name: Trainer.build_test_loader(cfg, name) for name in cfg.DATASETS.TEST
    ]
    out.update(describe_test_loaders(test_builds))
    return out


def _yacs_value(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def describe_lazy(cfg: DictConfig, iterations: Sequence[int]) -> Description:
    """Everything the LazyConfig recipe ``cfg`` trains with, built as retinafocal's LazyConfig
    loop builds it, on CPU. ``cfg`` is not modified."""
    out: Description = {}
    for yacs_key, key, default in RUN_SETTINGS:
        value = OmegaConf.select(cfg, key, default=default)
        out[f"run {yacs_key}"] = "<missing>" if value is _REQUIRED else plain(value)
    keep = OmegaConf.select(cfg, "train.checkpointer.max_to_keep", default=None)
    periodic = cfg.train.max_iter // cfg.train.checkpointer.period
    # detectron2's PeriodicCheckpointer deletes all but the last max_to_keep checkpoints.
    out["run checkpoints all kept"] = keep is None or periodic <= keep
    cfg = copy.deepcopy(cfg)
    cfg.train.device = "cpu"
    torch.manual_seed(BUILD_SEED)
    model = build_lazy_model(cfg)
    out.update(describe_model(model))
    cfg.optimizer.params.model = model  # as the LazyConfig loop does
    optimizer = instantiate(cfg.optimizer)
    out.update(describe_optimizer(optimizer, model))
    multiplier = instantiate(cfg.lr_multiplier)
    out.update(describe_schedule(optimizer, multiplier, cfg.train.max_iter, iterations, model))
    out.update(describe_train_loader(lambda: instantiate(cfg.dataloader.train)))
    out.update(describe_test_loaders([lambda: instantiate(cfg.dataloader.test)]))
    return out


def describe_pair(stem: str, config_dir: str = CONFIG_DIR) -> Tuple[Description, Description]:
    """The descriptions of ``<stem>.yaml`` and ``<stem>.py``, schedules sampled alike."""
    yacs_cfg = load_yacs(os.path.join(config_dir, stem + ".yaml"))
    lazy_cfg = load_lazy(os.path.join(config_dir, stem + ".py"))
    iterations = schedule_iterations(yacs_cfg, lazy_cfg.train.max_iter)
    return describe_yacs(yacs_cfg, iterations), describe_lazy(lazy_cfg, iterations)


def differences(yacs: Description, lazy: Description) -> List[str]:
    """One line per innermost value that differs between the two descriptions (or that only one
    has), in key order, except under the keys of :data:`ALLOWED_TO_DIFFER`."""
    lines = []
    for key in sorted(set(yacs) | set(lazy)):
        if key in ALLOWED_TO_DIFFER:
            continue
        if key not in lazy or key not in yacs:
            side = "yaml" if key in yacs else "py"
            value = yacs[key] if key in yacs else lazy[key]
            lines.append(f"{key}: only in the {side} form ({short(value)})")
            continue
        for path, a, b in mismatches(yacs[key], lazy[key], key):
            lines.append(f"{path}: yaml {short(a)} != py {short(b)}")
    return lines
