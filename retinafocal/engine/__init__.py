"""Training and evaluation: the yacs :class:`Trainer`, the LazyConfig loop, hooks, run set-up,
and the ``results.json`` every run writes."""
from .defaults import default_setup, leave_process_group, log_bbox_ap, prepare_datasets
from .evaluation import CheckedCOCOEvaluator, InferenceStats
from .hooks import PredictionImageWriter
from .lazy import (
    build_lazy_model,
    build_lazy_trainer,
    lazy_test,
    lazy_train,
    register_lazy_datasets,
)
from .preflight import check_batch_size, check_model_num_classes, resolve_num_classes
from .results import RESULTS_FILE, discard_results, evaluation_results, write_results
from .train_loop import NonFiniteLossError, checked_trainer
from .trainer import Trainer, build_evaluator

# As detectron2.engine: the public names are those imported above (with the modules).
__all__ = [k for k in globals().keys() if not k.startswith("_")]
