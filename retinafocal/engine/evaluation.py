"""Evaluators: COCO AP that says what it covers, and the model's inference time (detectron2's
``inference_on_dataset`` only logs it; :class:`InferenceStats` returns it with the metrics)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm
from torch import nn

__all__ = ["CheckedCOCOEvaluator", "InferenceStats"]

logger = logging.getLogger(__name__)


class CheckedCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` whose AP covers the images evaluated (not those left out
    as unreadable, which would count as missed) and is 0, not NaN, when the model detected
    nothing; both are logged."""

    def _eval_predictions(
        self, predictions: List[Dict[str, Any]], img_ids: Optional[Sequence[Any]] = None
    ) -> None:
        # ``predictions``: one per image evaluated, of all processes, with its detections in
        # COCO json ("instances"); COCOEvaluator.evaluate gathers them and calls this.
        evaluated = {p["image_id"] for p in predictions}
        in_json = self._coco_api.getImgIds()
        if img_ids is None and len(evaluated) < len(in_json):
            img_ids = sorted(evaluated)
            logger.warning(
                f"COCO AP on {self._metadata.name} covers the {len(evaluated)} images evaluated, "
                f"of {len(in_json)} in its json (the others were left out)."
            )
        super()._eval_predictions(predictions, img_ids)
        if "bbox" in self._results and not any(p["instances"] for p in predictions):
            logger.warning(
                f"The model made no detection on {self._metadata.name} (none scored above its "
                "test score threshold): every bbox metric is 0 (pycocotools would give NaN)."
            )
            bbox = self._results["bbox"]
            self._results["bbox"] = {k: 0.0 if math.isnan(v) else v for k, v in bbox.items()}


class InferenceStats(DatasetEvaluator):
    """Time per image of ``model``'s forward calls in one evaluation, and its detections:
    ``evaluate()`` returns, on the main process, ``{"inference": {"s_per_image": float,
    "images": float, "detections": float}}``. ``s_per_image`` is this process's forward time
    (synchronised on a GPU) per image without the first ``min(warmup, calls - 1)`` calls, as
    detectron2 times (NaN without calls); the counts sum all processes. ``model`` may be DDP;
    ``clock`` gives seconds (tests fake it)."""

    def __init__(
        self, model: nn.Module, *, warmup: int = 5, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._model = model
        self._warmup = warmup
        self._clock = clock
        self._hooks: List[Any] = []
        self._start = 0.0
        self._calls: List[Tuple[float, int]] = []  # (seconds, images) per forward call
        self._images = 0
        self._detections = 0

    def reset(self) -> None:
        self._remove_hooks()
        self._calls, self._images, self._detections = [], 0, 0
        self._hooks = [
            self._model.register_forward_pre_hook(self._before_forward),
            self._model.register_forward_hook(self._after_forward),
        ]

    def _before_forward(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        self._start = self._clock()

    def _after_forward(self, module: nn.Module, args: Tuple[Any, ...], output: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        batch = args[0] if args else ()
        self._calls.append((self._clock() - self._start, len(batch)))

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def process(self, inputs: Sequence[Dict[str, Any]], outputs: Sequence[Dict[str, Any]]) -> None:
        self._images += len(inputs)
        self._detections += sum(len(o["instances"]) for o in outputs if "instances" in o)

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        self._remove_hooks()
        counts = comm.gather((self._images, self._detections), dst=0)
        if not comm.is_main_process():
            return {}
        timed = self._calls[min(self._warmup, max(len(self._calls) - 1, 0)) :]
        seconds, images = sum(t for t, _ in timed), sum(n for _, n in timed)
        return {
            "inference": {
                "s_per_image": seconds / images if images else float("nan"),
                "images": float(sum(n for n, _ in counts)),
                "detections": float(sum(d for _, d in counts)),
            }
        }
