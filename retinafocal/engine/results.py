"""``<output_dir>/results.json``: what a training or evaluation run produced, for other programs.

Written atomically by the main process when training ends (also when it stops on a non-finite
loss or weights) and by ``--eval-only``, from what detectron2 keeps: the trainer's iteration,
its ``EventStorage`` (``IterationTimer``'s ``time``, the losses) and the evaluation results
(with :class:`~retinafocal.engine.evaluation.InferenceStats`). Schema :data:`SCHEMA_VERSION`;
a number that is NaN or cannot be computed is ``null``::

    {
      "schema": 2, "status": "completed" | "non_finite_loss" | "non_finite_weights",
      "eval_only": bool,
      "iterations": int, "max_iter": int,   # done and asked for; 0 for eval only
      "train_seconds": float|null,          # sum of IterationTimer's times (after its warm-up)
      "s_per_iter": float|null,             # their mean
      "bbox": {"AP": float|null, ...}|null, # last evaluation, first test set (percent)
      "inference_s_per_image": float|null, "no_detections": bool,  # of that evaluation
      "loss_history": {"iteration": [int], "total_loss": [float], "loss_cls": [...], ...},
                                            # every LOSS_WINDOW iterations and the last: the
                                            # window's median (as metrics.json); this process's
      "loss_extremes": {"first": {"iteration": int, "total_loss": ..., ...}, "largest": {...}},
                                            # single iterations: the first, the largest finite
      "evaluations": {"iteration": [int], "AP": [...], "AP50": [...], "AP75": [...]},
                                            # every bbox evaluation (iterations done before it)
      "non_finite": null | {"iteration": int, "terms": [str], "checkpoint": str|null}
    }

The three history fields are {} when they have nothing (``--eval-only``). Schema 2 added
``loss_extremes`` and ``evaluations``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
from detectron2.utils import comm

from ..checkpoint import NonFiniteWeightsError, atomic_write
from .train_loop import NonFiniteLossError

NonFiniteError = Union[NonFiniteLossError, NonFiniteWeightsError]

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "LOSS_WINDOW",
    "training_results",
    "evaluation_results",
    "write_results",
    "recording_results",
]

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2
#: Iterations per point of ``loss_history``: detectron2's default logging period and window.
LOSS_WINDOW = 20


def _finite_or_none(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _first_dataset(evaluation: Optional[Mapping]) -> Mapping:
    """detectron2 returns ``{task: metrics}`` for one test set and ``{dataset: {task: metrics}}``
    for several; the first set's ``{task: metrics}``."""
    if not evaluation:
        return {}
    first = next(iter(evaluation.values()))
    nested = isinstance(first, Mapping) and any(isinstance(v, Mapping) for v in first.values())
    return first if nested else evaluation


def _evaluation_fields(evaluation: Optional[Mapping]) -> Dict[str, Any]:
    tasks = _first_dataset(evaluation)
    bbox = tasks.get("bbox")
    inference = tasks.get("inference", {})
    detections = inference.get("detections")
    return {
        "bbox": None if bbox is None else {k: _finite_or_none(v) for k, v in bbox.items()},
        "inference_s_per_image": _finite_or_none(inference.get("s_per_image")),
        "no_detections": detections is not None and detections == 0,
    }


def _losses(storage: Any) -> Dict[str, Dict[int, float]]:
    """Loss name -> {iteration: value} from an ``EventStorage``; {} without ``total_loss``."""
    histories = storage.histories()
    if "total_loss" not in histories:
        return {}
    names = sorted(n for n in histories if n == "total_loss" or n.startswith("loss_"))
    return {n: {int(it): v for v, it in histories[n].values()} for n in names}


def _loss_history(storage: Any) -> Dict[str, List[Optional[float]]]:
    """``loss_history`` of the schema."""
    values = _losses(storage)
    if not values:
        return {}
    names = list(values)
    iterations = [int(it) for _, it in storage.histories()["total_loss"].values()]
    last = len(iterations) - 1
    points = [i for i, it in enumerate(iterations) if (it + 1) % LOSS_WINDOW == 0 or i == last]
    out: Dict[str, List[Optional[float]]] = {"iteration": [iterations[i] for i in points]}
    for name in names:
        column: List[Optional[float]] = []
        for i in points:
            window_iters = iterations[max(0, i - LOSS_WINDOW + 1) : i + 1]
            window = [values[name][it] for it in window_iters if it in values[name]]
            # np.median, as detectron2's HistoryBuffer: a NaN in the window gives NaN (null).
            column.append(_finite_or_none(np.median(window)) if window else None)
        out[name] = column
    return out


def _loss_extremes(storage: Any) -> Dict[str, Dict[str, Any]]:
    """``loss_extremes`` of the schema."""
    values = _losses(storage)
    totals = values.get("total_loss")
    if not totals:
        return {}
    finite = [it for it, v in totals.items() if math.isfinite(v)]

    def at(iteration: int) -> Dict[str, Any]:
        point: Dict[str, Any] = {"iteration": iteration}
        point.update({n: _finite_or_none(v.get(iteration)) for n, v in values.items()})
        return point

    out = {"first": at(min(totals))}
    if finite:
        out["largest"] = at(max(finite, key=lambda it: totals[it]))
    return out


def _evaluation_history(storage: Any, max_iter: int) -> Dict[str, List[Any]]:
    """``evaluations`` of the schema, from the flattened metrics ``EvalHook`` stores ("bbox/AP",
    or "<dataset>/bbox/AP" with several test sets: the first)."""
    histories = storage.histories()
    keys = [k for k in histories if k == "bbox/AP" or k.endswith("/bbox/AP")]
    if not keys:
        return {}
    prefix = keys[0][: -len("AP")]

    def done(iteration: int) -> int:
        # Storage iteration i: after step i (i + 1 done); the final one is stored at max_iter.
        return min(int(iteration) + 1, max_iter)

    out: Dict[str, List[Any]] = {"iteration": sorted({done(it) for _, it in
                                                      histories[keys[0]].values()})}  # fmt: skip
    for metric in ("AP", "AP50", "AP75"):
        pairs = histories[prefix + metric].values() if prefix + metric in histories else []
        by_iter = {done(it): v for v, it in pairs}
        out[metric] = [_finite_or_none(by_iter.get(it)) for it in out["iteration"]]
    return out


def training_results(
    trainer: Any, evaluation: Optional[Mapping], error: Optional[NonFiniteError] = None
) -> Dict[str, Any]:
    """The results of a training run, from ``trainer`` (``iter``, ``max_iter``, ``storage``)
    after ``train()`` returned or raised ``error``, and the final ``evaluation`` (or None)."""
    histories = trainer.storage.histories()
    times = [v for v, _ in histories["time"].values()] if "time" in histories else []
    non_finite, status = None, "completed"
    if isinstance(error, NonFiniteLossError):
        status = "non_finite_loss"
        non_finite = {"iteration": int(error.iteration), "terms": list(error.terms)}
    elif isinstance(error, NonFiniteWeightsError):
        status = "non_finite_weights"
        iteration = error.iteration if error.iteration is not None else trainer.iter
        non_finite = {"iteration": int(iteration), "terms": list(error.tensors)}
    if error is not None and non_finite is not None:
        non_finite["checkpoint"] = error.checkpoint or None
    return {
        "schema": SCHEMA_VERSION,
        "status": status,
        "eval_only": False,
        "iterations": min(int(trainer.iter), int(trainer.max_iter)),
        "max_iter": int(trainer.max_iter),
        "train_seconds": _finite_or_none(sum(times)) if times else None,
        "s_per_iter": _finite_or_none(sum(times) / len(times)) if times else None,
        **_evaluation_fields(evaluation),
        "loss_history": _loss_history(trainer.storage),
        "loss_extremes": _loss_extremes(trainer.storage),
        "evaluations": _evaluation_history(trainer.storage, int(trainer.max_iter)),
        "non_finite": non_finite,
    }


def evaluation_results(evaluation: Optional[Mapping]) -> Dict[str, Any]:
    """The results of an evaluation-only run."""
    return {
        "schema": SCHEMA_VERSION,
        "status": "completed",
        "eval_only": True,
        "iterations": 0,
        "max_iter": 0,
        "train_seconds": None,
        "s_per_iter": None,
        **_evaluation_fields(evaluation),
        "loss_history": {},
        "loss_extremes": {},
        "evaluations": {},
        "non_finite": None,
    }


def write_results(output_dir: str, results: Mapping[str, Any]) -> Optional[str]:
    """Write ``<output_dir>/results.json`` on the main process; its path, or None elsewhere."""
    if not comm.is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    # NaN was made null: standard JSON.
    text = json.dumps(results, indent=1, allow_nan=False).encode("utf-8")
    atomic_write(path, lambda f: f.write(text), "Free some space there and run again.")
    return path


@contextlib.contextmanager
def recording_results(
    output_dir: str, trainer: Any, evaluation: Callable[[], Optional[Mapping]]
) -> Iterator[None]:
    """Around ``trainer.train()``: write ``results.json`` when it returns or raises a non-finite
    error (re-raised). ``evaluation()`` gives the final evaluation's results."""
    try:
        yield
    except (NonFiniteLossError, NonFiniteWeightsError) as e:
        write_results(output_dir, training_results(trainer, evaluation(), error=e))
        raise
    write_results(output_dir, training_results(trainer, evaluation()))
