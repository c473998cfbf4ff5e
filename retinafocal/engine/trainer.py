"""The trainer for yacs configs: detectron2's ``DefaultTrainer`` with retinafocal's parts."""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Any, List, Optional

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from torch import nn

from .. import compat
from ..checkpoint import AtomicDetectionCheckpointer
from ..data import RobustDatasetMapper, check_datasets, checked_dataset_dicts
from ..data.datasets import ensure_dataset_files
from .evaluation import CheckedCOCOEvaluator, InferenceStats
from .hooks import PredictionImageWriter
from .preflight import check_batch_size, check_model_num_classes
from .results import recording_results
from .train_loop import checked_trainer

__all__ = ["Trainer", "build_evaluator"]


def build_evaluator(dataset_name: str, output_dir: Optional[str]) -> CheckedCOCOEvaluator:
    """COCO AP (:class:`~retinafocal.engine.evaluation.CheckedCOCOEvaluator`) with per-category
    AP in the log; detectron2's C++ COCOeval when it is built, pycocotools otherwise."""
    # COCOEvaluator reads the dataset's json when it is built, so the embedded dataset must
    # exist by then even if no loader has touched it yet.
    ensure_dataset_files(dataset_name)
    return CheckedCOCOEvaluator(
        dataset_name, tasks=("bbox",), output_dir=output_dir, use_fast_impl=compat.HAS_D2_C
    )


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` (data loading, LR schedule, checkpointing, periodic
    evaluation, writers) with:

    - checks before any work starts: the batch size, the test sets (unreadable images stop the
      run or are left out, as ``DATALOADER.ON_UNREADABLE_IMAGE`` says) and, once the training
      data is loaded (:func:`~retinafocal.data.checked_dataset_dicts`), ``NUM_CLASSES`` against
      the datasets' classes;
    - :class:`RobustDatasetMapper` for training and test data;
    - COCO evaluation (:func:`build_evaluator`) with the model's inference time and detection
      count (:class:`~retinafocal.engine.evaluation.InferenceStats`);
    - a training loop that names non-finite losses (:mod:`retinafocal.engine.train_loop`);
    - checkpoints written atomically (:class:`AtomicDetectionCheckpointer`);
    - a PNG of predictions on a few images of the first test set after training;
    - ``results.json`` in the output directory when training ends
      (:mod:`retinafocal.engine.results`), also after a non-finite loss.

    ``trust_weights_file`` (``train_net.py --trust-weights-file``) lets the checkpointer read
    ``MODEL.WEIGHTS`` with full unpickling (see :class:`AtomicDetectionCheckpointer`).
    """

    def __init__(self, cfg: CfgNode, *, trust_weights_file: bool = False) -> None:
        check_batch_size(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
        # Every dataset is checked before the model is built, the test sets too: their problems
        # must not wait for the first evaluation, hours into training.
        policy = cfg.DATALOADER.ON_UNREADABLE_IMAGE
        check_datasets(cfg.DATASETS.TRAIN, on_unreadable=policy)
        check_datasets(cfg.DATASETS.TEST, on_unreadable=policy, purpose="evaluation")
        # Set first: DefaultTrainer.__init__ calls build_hooks, which makes the checkpointer.
        self._trust_weights_file = trust_weights_file
        super().__init__(cfg)

    def build_hooks(self) -> List[Optional[HookBase]]:
        # DefaultTrainer.__init__ calls this once model, optimizer, loader and checkpointer exist
        # and before any hook captures them: the place to swap in retinafocal's versions of the
        # training loop and the checkpointer.
        self.checkpointer = AtomicDetectionCheckpointer(
            self.model,
            self.cfg.OUTPUT_DIR,
            trust_weights_file=self._trust_weights_file,
            trainer=weakref.proxy(self),
        )
        plain = self._trainer
        self._trainer = checked_trainer(
            plain.model,
            plain.data_loader,
            plain.optimizer,
            amp=self.cfg.SOLVER.AMP.ENABLED,
            checkpointer=self.checkpointer,
        )
        ret = super().build_hooks()
        if self.cfg.DATASETS.TEST:
            ret.append(
                PredictionImageWriter(
                    dataset_name=self.cfg.DATASETS.TEST[0],
                    mapper=RobustDatasetMapper(self.cfg, is_train=False),
                    output_path=os.path.join(self.cfg.OUTPUT_DIR, "predictions.png"),
                )
            )
        return ret

    def train(self) -> Optional[OrderedDict]:
        """Train, write ``results.json``, then return the results of the final evaluation (None
        without test sets)."""

        def final_evaluation() -> Optional[OrderedDict]:
            # DefaultTrainer's evaluation hook keeps its latest results here.
            return getattr(self, "_last_eval_results", None)

        with recording_results(self.cfg.OUTPUT_DIR, self, final_evaluation):
            super().train()
        return final_evaluation()

    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: nn.Module,
        evaluators: Optional[List[DatasetEvaluator]] = None,
    ) -> OrderedDict:
        """detectron2's ``DefaultTrainer.test``; by default each test set's evaluator is
        :meth:`build_evaluator`'s with :class:`InferenceStats` of ``model`` next to it."""
        if evaluators is None:
            evaluators = [
                DatasetEvaluators([cls.build_evaluator(cfg, name), InferenceStats(model)])
                for name in cfg.DATASETS.TEST
            ]
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """detectron2's training loader on :func:`~retinafocal.data.checked_dataset_dicts` (the
        dicts detectron2 would load, checked, unreadable images handled before the first
        iteration), after ``NUM_CLASSES`` is checked against the train and test sets."""
        dataset = checked_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
            on_unreadable=cfg.DATALOADER.ON_UNREADABLE_IMAGE,
        )
        check_model_num_classes(cfg, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        mapper = RobustDatasetMapper(cfg, is_train=True)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Any:
        """detectron2's inference loader on the checked test set: its unreadable images stop
        the evaluation or are left out, as ``DATALOADER.ON_UNREADABLE_IMAGE`` says."""
        dataset = checked_dataset_dicts(
            [dataset_name],
            filter_empty=False,
            on_unreadable=cfg.DATALOADER.ON_UNREADABLE_IMAGE,
            purpose="evaluation",
        )
        check_model_num_classes(cfg, [dataset_name])
        return build_detection_test_loader(
            dataset=dataset,
            mapper=RobustDatasetMapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> CheckedCOCOEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(dataset_name, output_folder)
