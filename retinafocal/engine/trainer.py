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
    """:class:`CheckedCOCOEvaluator` for bbox; C++ COCOeval when detectron2's ``_C`` is built."""
    # COCOEvaluator reads the json when built, maybe before any loader generated it.
    ensure_dataset_files(dataset_name)
    return CheckedCOCOEvaluator(
        dataset_name, tasks=("bbox",), output_dir=output_dir, use_fast_impl=compat.HAS_D2_C
    )


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with: the batch size, datasets and ``NUM_CLASSES``
    checked before work starts; :class:`RobustDatasetMapper`; COCO evaluation with
    :class:`InferenceStats`; the checked training loop; :class:`AtomicDetectionCheckpointer`
    (given ``trust_weights_file``); a predictions PNG after training; and ``results.json``."""

    def __init__(self, cfg: CfgNode, *, trust_weights_file: bool = False) -> None:
        check_batch_size(cfg.SOLVER.IMS_PER_BATCH, "SOLVER.IMS_PER_BATCH")
        # The test sets too: their problems must not wait for the first evaluation.
        policy = cfg.DATALOADER.ON_UNREADABLE_IMAGE
        check_datasets(cfg.DATASETS.TRAIN, on_unreadable=policy)
        check_datasets(cfg.DATASETS.TEST, on_unreadable=policy, purpose="evaluation")
        # Set first: DefaultTrainer.__init__ calls build_hooks, which makes the checkpointer.
        self._trust_weights_file = trust_weights_file
        super().__init__(cfg)

    def build_hooks(self) -> List[Optional[HookBase]]:
        # DefaultTrainer.__init__ calls this before any hook captures the training loop and the
        # checkpointer: the place to swap in ours.
        self.checkpointer = AtomicDetectionCheckpointer(
            self.model,
            self.cfg.OUTPUT_DIR,
            trust_weights_file=self._trust_weights_file,
            trainer=weakref.proxy(self),
        )
        self._trainer = checked_trainer(
            self._trainer.model,
            self._trainer.data_loader,
            self._trainer.optimizer,
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
        """Train, write ``results.json``, return the final evaluation's results (or None)."""
        with recording_results(self.cfg.OUTPUT_DIR, self):
            super().train()
        return getattr(self, "_last_eval_results", None)  # set by DefaultTrainer's EvalHook

    @classmethod
    def test(
        cls, cfg: CfgNode, model: nn.Module, evaluators: Optional[List[DatasetEvaluator]] = None
    ) -> OrderedDict:
        """``DefaultTrainer.test``; default evaluators: :meth:`build_evaluator` and
        :class:`InferenceStats` per test set."""
        if evaluators is None:
            evaluators = [
                DatasetEvaluators([cls.build_evaluator(cfg, name), InferenceStats(model)])
                for name in cfg.DATASETS.TEST
            ]
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> Any:
        """detectron2's training loader on :func:`~retinafocal.data.checked_dataset_dicts`, with
        ``NUM_CLASSES`` checked against the train and test sets."""
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
        """detectron2's inference loader on the checked test set."""
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
