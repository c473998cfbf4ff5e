"""The training loop for LazyConfig configs, with the features of the yacs ``Trainer``. A config
provides what detectron2's ``configs/common/train.py`` does, plus optionally
``datasets.coco_json`` (yacs ``DATASETS.COCO_JSON``) and ``datasets.num_classes_from_dataset``."""
from __future__ import annotations

import logging
import os
from collections import OrderedDict, abc
from typing import Any, Optional, Tuple

import torch
from detectron2.config import instantiate
from detectron2.engine import SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..checkpoint import AtomicDetectionCheckpointer
from ..data.datasets import ensure_dataset_files, register_coco_json_datasets
from .evaluation import InferenceStats
from .hooks import PredictionImageWriter
from .preflight import check_batch_size, check_model_num_classes, loader_dataset_names
from .results import recording_results
from .train_loop import checked_trainer

__all__ = [
    "register_lazy_datasets",
    "build_lazy_model",
    "build_lazy_trainer",
    "lazy_test",
    "lazy_train",
]

logger = logging.getLogger(__name__)


def register_lazy_datasets(cfg: Any) -> None:
    """Register the datasets listed in ``cfg.datasets.coco_json`` (if any)."""
    register_coco_json_datasets((cfg.get("datasets", None) or {}).get("coco_json", None) or [])


def build_lazy_model(cfg: Any) -> torch.nn.Module:
    """Instantiate ``cfg.model`` on ``cfg.train.device``."""
    return instantiate(cfg.model).to(cfg.train.device)


def build_lazy_test_loader(cfg: Any) -> Any:
    """Instantiate ``cfg.dataloader.test``, then check ``model.num_classes`` against it."""
    data_loader = instantiate(cfg.dataloader.test)
    check_model_num_classes(cfg, loader_dataset_names(cfg.dataloader.test))
    return data_loader


def lazy_test(cfg: Any, model: torch.nn.Module, data_loader: Any = None) -> OrderedDict:
    """Evaluate ``model`` on ``data_loader`` (default: built from ``cfg.dataloader.test``) with
    ``cfg.dataloader.evaluator`` and :class:`InferenceStats`."""
    if data_loader is None:
        data_loader = build_lazy_test_loader(cfg)
    ensure_dataset_files(loader_dataset_names(cfg.dataloader.test)[0])
    evaluator = instantiate(cfg.dataloader.evaluator)
    # A list of evaluators instantiates as a ListConfig (detectron2 takes any MutableSequence).
    sequence = isinstance(evaluator, (abc.MutableSequence, tuple))
    evaluators = list(evaluator) if sequence else [evaluator]
    results = inference_on_dataset(
        model, data_loader, DatasetEvaluators(evaluators + [InferenceStats(model)])
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def build_lazy_trainer(
    cfg: Any, *, trust_weights_file: bool = False
) -> Tuple[SimpleTrainer, AtomicDetectionCheckpointer]:
    """Check the batch size and both loaders' classes, then build the model, optimizer, loaders,
    checked trainer, checkpointer and hooks of ``cfg`` (:func:`lazy_train` loads and trains).
    ``trainer._last_eval_results`` keeps the last evaluation's results, as in ``DefaultTrainer``."""
    check_batch_size(cfg.dataloader.train.total_batch_size, "dataloader.train.total_batch_size")
    model = build_lazy_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    check_model_num_classes(cfg, loader_dataset_names(cfg.dataloader.train))
    # Now, so that the test set's problems stop the run before the first iteration.
    test_loader = build_lazy_test_loader(cfg)
    model = create_ddp_model(model, **cfg.train.ddp)

    trainer = checked_trainer(model, train_loader, optimizer, amp=cfg.train.amp.enabled)
    checkpointer = AtomicDetectionCheckpointer(
        model, cfg.train.output_dir, trust_weights_file=trust_weights_file, trainer=trainer
    )
    trainer.checkpointer = checkpointer
    trainer._last_eval_results = None

    def test_and_keep() -> OrderedDict:
        trainer._last_eval_results = lazy_test(cfg, model, test_loader)
        return trainer._last_eval_results

    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, test_and_keep),
            PredictionImageWriter(
                dataset_name=loader_dataset_names(cfg.dataloader.test)[0],
                mapper=instantiate(cfg.dataloader.test.mapper),
                output_path=os.path.join(cfg.train.output_dir, "predictions.png"),
            ),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None,
        ]
    )
    return trainer, checkpointer


def lazy_train(
    cfg: Any, *, resume: bool = False, trust_weights_file: bool = False
) -> Optional[OrderedDict]:
    """Train, write ``results.json`` and return the final evaluation's results."""
    trainer, checkpointer = build_lazy_trainer(cfg, trust_weights_file=trust_weights_file)
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the iteration that had just finished.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    with recording_results(cfg.train.output_dir, trainer):
        trainer.train(start_iter, cfg.train.max_iter)
    return trainer._last_eval_results
