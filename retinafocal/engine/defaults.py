"""Run set-up and reporting shared by the yacs and LazyConfig paths of ``train_net.py``."""
from __future__ import annotations

import argparse
import logging
from typing import Any, List, Mapping, Optional

from detectron2.config import CfgNode
from detectron2.engine import default_setup as d2_default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.datasets import ensure_dataset_files

__all__ = ["default_setup", "dataset_names", "prepare_datasets", "log_bbox_ap"]


def default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup`` (output dir, logs, environment info, saved config, seed),
    plus retinafocal's own loggers, written to the same ``log.txt``."""
    d2_default_setup(cfg, args)
    output_dir = cfg.OUTPUT_DIR if isinstance(cfg, CfgNode) else cfg.train.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="retinafocal", abbrev_name="rf")
    prepare_datasets(cfg)


def dataset_names(cfg: Any) -> List[str]:
    """The train and test dataset names of a yacs config or a LazyConfig."""
    if isinstance(cfg, CfgNode):
        return list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    names: List[str] = []
    for part in ("train", "test"):
        loader = cfg.dataloader.get(part)
        if loader is not None and "dataset" in loader and "names" in loader.dataset:
            value = loader.dataset.names
            names += [value] if isinstance(value, str) else list(value)
    return names


def prepare_datasets(cfg: Any) -> None:
    """Generate the embedded datasets that ``cfg`` uses, in the main process only, while the
    other processes wait: several processes writing the same files would corrupt them."""
    if comm.is_main_process():
        for name in dataset_names(cfg):
            ensure_dataset_files(name)
    comm.synchronize()


def log_bbox_ap(results: Optional[Mapping]) -> None:
    """Log one line per evaluated dataset with its COCO bbox AP, the figure a run is judged by.

    ``results`` is what detectron2's evaluation returns: ``{"bbox": {"AP": ...}}`` for one
    dataset, ``{dataset_name: {"bbox": ...}}`` for several.
    """
    if not results or not comm.is_main_process():
        return
    per_dataset = {"": results} if "bbox" in results else results
    logger = logging.getLogger("detectron2")
    for name, res in per_dataset.items():
        if "bbox" in res:
            where = f" on {name}" if name else ""
            logger.info(f"bbox AP{where} = {res['bbox']['AP']:.2f}")
