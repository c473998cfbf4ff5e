"""Checks that stop a run before any work starts, for yacs and LazyConfigs: the training batch
size, and the model's number of classes against its datasets' (or taken from them, opted in).
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.classes import check_num_classes, num_classes_from_datasets

__all__ = ["NUM_CLASSES_KEYS", "check_batch_size", "check_model_num_classes", "resolve_num_classes"]

logger = logging.getLogger(__name__)

#: (number of classes, opt-in that takes it from the training datasets), per config form.
NUM_CLASSES_KEYS = {
    "yacs": ("MODEL.RETINANET.NUM_CLASSES", "MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET"),
    "lazy": ("model.num_classes", "datasets.num_classes_from_dataset"),
}
_RETINANETS = ("FocalRetinaNet", "RetinaNet")


def check_batch_size(total: Any, key: str, world_size: Optional[int] = None) -> None:
    """Check a training batch size ``total`` (config ``key``), summed over ``world_size``
    processes (default: detectron2's ``comm``). detectron2 only asserts divisibility, also for
    0 or negatives; this error says what the number means."""
    world = comm.get_world_size() if world_size is None else world_size
    if isinstance(total, int) and not isinstance(total, bool) and total > 0 and total % world == 0:
        return
    what = (
        f"{key} is {total!r}: it is the number of images per training iteration, summed over "
        f"all {world} process(es)"
    )
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        raise ValueError(f"{what}, so it must be a positive integer (e.g. {2 * world}).")
    nearest = max(world, round(total / world) * world)
    raise ValueError(f"{what}, so it must be a multiple of {world} (e.g. {nearest}).")


def _setting(cfg: Any) -> Optional[Tuple[int, str, str, bool]]:
    """(K, its key, the opt-in key, the opt-in's value) for a RetinaNet config, else None."""
    if isinstance(cfg, CfgNode):
        if cfg.MODEL.META_ARCHITECTURE not in _RETINANETS:
            return None
        key, opt_in = NUM_CLASSES_KEYS["yacs"]
        flag = bool(cfg.MODEL.get("RETINAFOCAL", {}).get("NUM_CLASSES_FROM_DATASET", False))
        return cfg.MODEL.RETINANET.NUM_CLASSES, key, opt_in, flag
    if "num_classes" not in cfg.model:
        return None
    key, opt_in = NUM_CLASSES_KEYS["lazy"]
    datasets = cfg.get("datasets", None) or {}
    return cfg.model.num_classes, key, opt_in, bool(datasets.get("num_classes_from_dataset"))


def _train_names(cfg: Any) -> Sequence[str]:
    if isinstance(cfg, CfgNode):
        return list(cfg.DATASETS.TRAIN)
    names = cfg.dataloader.train.dataset.names
    return [names] if isinstance(names, str) else list(names)


def check_model_num_classes(cfg: Any, names: Sequence[str]) -> None:
    """:func:`~retinafocal.data.classes.check_num_classes` for a RetinaNet config."""
    setting = _setting(cfg)
    if setting is not None:
        num_classes, key, opt_in, _ = setting
        check_num_classes(num_classes, names, key=key, opt_in=f"{opt_in} True")


def resolve_num_classes(cfg: Any) -> None:
    """When the config opts in (:data:`NUM_CLASSES_KEYS`), set its number of classes in place
    to the training datasets'."""
    setting = _setting(cfg)
    if setting is None or not setting[3]:
        return
    _, key, opt_in, _ = setting
    names = _train_names(cfg)
    num_classes = num_classes_from_datasets(names, key=opt_in)
    if isinstance(cfg, CfgNode):
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
        if frozen:
            cfg.freeze()
    else:
        cfg.model.num_classes = num_classes
    logger.info(f"{key} = {num_classes}, the number of classes of {names} ({opt_in}).")
