"""Run set-up and reporting shared by the yacs and LazyConfig paths of ``train_net.py``."""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Mapping, Optional

import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.engine import default_setup as d2_default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.datasets import ensure_dataset_files
from .preflight import dataset_names, resolve_num_classes

__all__ = [
    "default_setup",
    "leave_process_group",
    "log_bbox_ap",
    "plain_logs_off_terminal",
    "prepare_datasets",
]

# ANSI escape sequences (colours, bold, blink): CSI ... final byte.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def default_setup(cfg: Any, args: argparse.Namespace) -> None:
    """detectron2's ``default_setup`` plus retinafocal's logger in the same ``log.txt``, with
    plain logs off terminals, after :func:`prepare_datasets` and
    :func:`~retinafocal.engine.preflight.resolve_num_classes`."""
    output_dir = cfg.OUTPUT_DIR if isinstance(cfg, CfgNode) else cfg.train.output_dir
    rank = comm.get_rank()
    # detectron2's default_setup makes these calls; setup_logger is cached, so it reuses these
    # handlers, made plain before it logs anything.
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(output_dir, distributed_rank=rank, name="retinafocal", abbrev_name="rf")
    plain_logs_off_terminal()
    # Before detectron2's, which logs the config and saves it (config.yaml): both must show the
    # number of classes the model is built with.
    prepare_datasets(cfg)
    resolve_num_classes(cfg)
    d2_default_setup(cfg, args)


class _PlainFormatter(logging.Formatter):
    """The formatter it wraps, with ANSI escape sequences removed from its output."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", self.inner.format(record))


def plain_logs_off_terminal() -> None:
    """Make the handlers of the run's loggers write plain text unless they write to a terminal
    that may show colours (``NO_COLOR`` unset). Idempotent. detectron2 colours console lines and
    the printed config whatever the output is, which would put escape sequences in ``log.txt``
    and a redirected console."""
    for name in ("detectron2", "fvcore", "retinafocal"):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            isatty = getattr(stream, "isatty", None)
            colours = not os.environ.get("NO_COLOR") and callable(isatty) and bool(isatty())
            if stream is None or colours or handler.formatter is None:
                continue
            if not isinstance(handler.formatter, _PlainFormatter):
                handler.setFormatter(_PlainFormatter(handler.formatter))


def prepare_datasets(cfg: Any) -> None:
    """Generate the embedded datasets ``cfg`` uses in the main process while the others wait
    (several writers would corrupt the files)."""
    if comm.is_main_process():
        for name in dataset_names(cfg):
            ensure_dataset_files(name)
    comm.synchronize()


def log_bbox_ap(results: Optional[Mapping]) -> None:
    """Log each evaluated dataset's bbox AP from detectron2's results (``{"bbox": ...}`` for one
    dataset, ``{name: {"bbox": ...}}`` for several)."""
    if not results or not comm.is_main_process():
        return
    per_dataset = {"": results} if "bbox" in results else results
    for name, res in per_dataset.items():
        if "bbox" in res:
            where = f" on {name}" if name else ""
            logging.getLogger("detectron2").info(f"bbox AP{where} = {res['bbox']['AP']:.2f}")


def leave_process_group() -> None:
    """End a multi-process run together: wait for every rank, destroy the process groups and
    drop detectron2's references to them (no-op in one process). Gloo's worker threads live as
    long as a group object does, and ``destroy_process_group`` frees none that detectron2's
    ``comm`` still holds; a worker thread that finishes its last collective during interpreter
    exit aborts the process ("terminate called without an active exception", SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
        # Freeing the group objects joins their threads, now rather than at interpreter exit.
        comm._get_global_gloo_group.cache_clear()
        comm._LOCAL_PROCESS_GROUP = None
        if hasattr(comm, "create_local_process_group"):  # current detectron2 caches it too
            comm.create_local_process_group.cache_clear()
