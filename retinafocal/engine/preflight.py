"""Checks that stop a run before any work starts, for yacs and LazyConfigs: the training batch
size, and the model's number of classes against its datasets' (or taken from them, opted in)."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..data.datasets import check_num_classes, num_classes_from_datasets

__all__ = ["check_batch_size", "check_model_num_classes", "resolve_num_classes"]

logger = logging.getLogger(__name__)

_RETINANETS = ("FocalRetinaNet", "RetinaNet")


def check_batch_size(total: Any, key: str, world_size: Optional[int] = None) -> None:
    """Check a training batch size ``total`` (config ``key``), summed over ``world_size``
    processes (default: detectron2's ``comm``). detectron2 only asserts divisibility, also for
    0 or negatives; this error says what the number means."""
    world = comm.get_world_size() if world_size is None else world_size
    what = (
        f"{key} is {total!r}: it is the number of images per training iteration, summed over "
        f"all {world} process(es)"
    )
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        raise ValueError(f"{what}, so it must be a positive integer (e.g. {2 * world}).")
    if total % world:
        nearest = max(world, round(total / world) * world)
        raise ValueError(f"{what}, so it must be a multiple of {world} (e.g. {nearest}).")


def loader_dataset_names(loader: Any) -> List[str]:
    """The ``dataset.names`` of a LazyConfig data loader, as a list ([] when it has none)."""
    dataset = loader.get("dataset", None) if loader is not None else None
    names = dataset.get("names", None) if dataset is not None else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def dataset_names(cfg: Any, parts: Sequence[str] = ("train", "test")) -> List[str]:
    """The names of the ``parts`` datasets of a yacs config or a LazyConfig."""
    if isinstance(cfg, CfgNode):
        return [n for part in parts for n in cfg.DATASETS[part.upper()]]
    return [n for part in parts for n in loader_dataset_names(cfg.dataloader.get(part))]


def _setting(cfg: Any) -> Optional[Tuple[int, str, str, bool]]:
    """(K, its key, the opt-in key that takes K from the training datasets, the opt-in's value)
    for a RetinaNet config, else None."""
    if isinstance(cfg, CfgNode):
        if cfg.MODEL.META_ARCHITECTURE not in _RETINANETS:
            return None
        flag = cfg.MODEL.get("RETINAFOCAL", {}).get("NUM_CLASSES_FROM_DATASET", False)
        opt_in = "MODEL.RETINAFOCAL.NUM_CLASSES_FROM_DATASET"
        return cfg.MODEL.RETINANET.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES", opt_in, bool(flag)
    if "num_classes" not in cfg.model:
        return None
    flag = (cfg.get("datasets", None) or {}).get("num_classes_from_dataset")
    opt_in = "datasets.num_classes_from_dataset"
    return cfg.model.num_classes, "model.num_classes", opt_in, bool(flag)


def check_model_num_classes(cfg: Any, names: Sequence[str]) -> None:
    """:func:`~retinafocal.data.datasets.check_num_classes` for a RetinaNet config."""
    setting = _setting(cfg)
    if setting is not None:
        num_classes, key, opt_in, _ = setting
        check_num_classes(num_classes, names, key=key, opt_in=f"{opt_in} True")


def resolve_num_classes(cfg: Any) -> None:
    """When the config opts in, set its number of classes in place to the training datasets'."""
    setting = _setting(cfg)
    if setting is None or not setting[3]:
        return
    _, key, opt_in, _ = setting
    names = dataset_names(cfg, ("train",))
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
