"""Training and evaluation: the yacs :class:`Trainer`, the LazyConfig loop, hooks, run set-up."""
from .defaults import dataset_names, default_setup, log_bbox_ap, prepare_datasets
from .hooks import PredictionImageWriter, draw_predictions
from .lazy import (
    build_lazy_model,
    build_lazy_trainer,
    lazy_test,
    lazy_train,
    register_lazy_datasets,
)
from .train_loop import (
    CheckedAMPTrainer,
    CheckedSimpleTrainer,
    NonFiniteLossError,
    checked_trainer,
)
from .trainer import Trainer, build_evaluator

__all__ = [
    "CheckedAMPTrainer",
    "CheckedSimpleTrainer",
    "NonFiniteLossError",
    "PredictionImageWriter",
    "Trainer",
    "build_evaluator",
    "build_lazy_model",
    "build_lazy_trainer",
    "checked_trainer",
    "dataset_names",
    "default_setup",
    "draw_predictions",
    "lazy_test",
    "lazy_train",
    "log_bbox_ap",
    "prepare_datasets",
    "register_lazy_datasets",
]
