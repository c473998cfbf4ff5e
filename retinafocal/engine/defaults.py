"""Run set-up and reporting shared by the yacs and LazyConfig paths of ``train_net.py``."""
from __future__ import annotations

import argparse
import logging
from typing import Any, Mapping, Optional

from detectron2.config import CfgNode
from detectron2.engine import default_setup as d2_default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

__all__ = ["default_setup", "log_bbox_ap"]


def default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup`` (output dir, logs, environment info, saved config, seed),
    plus retinafocal's own loggers, written to the same ``log.txt``."""
    d2_default_setup(cfg, args)
    output_dir = cfg.OUTPUT_DIR if isinstance(cfg, CfgNode) else cfg.train.output_dir
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="retinafocal", abbrev_name="rf")


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
