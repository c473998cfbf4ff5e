"""``<output_dir>/results.json``: what a training or evaluation run produced, for other programs.

Written atomically by the main process when training ends (also when it stops on a non-finite
loss or weights) and by ``--eval-only``, from the trainer's iteration, its ``EventStorage``
(``IterationTimer``'s ``time``, the losses) and the evaluation results (with
:class:`~retinafocal.engine.evaluation.InferenceStats`). A NaN or missing number is ``null``::

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

The three history fields are {} when they have nothing (``--eval-only``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np
from detectron2.utils import comm

from ..checkpoint import NonFiniteWeightsError, atomic_write
from .train_loop import NonFiniteLossError

__all__ = [
    "RESULTS_FILE",
    "SCHEMA_VERSION",
    "training_results",
    "evaluation_results",
    "write_results",
    "discard_results",
    "recording_results",
]

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2
#: Iterations per point of ``loss_history``: detectron2's default logging period and window.
LOSS_WINDOW = 20

Losses = Dict[str, Dict[int, float]]  # loss name -> {iteration: value}


def _finite_or_none(value: Any) -> Optional[float]:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def evaluation_results(evaluation: Optional[Mapping], **fields: Any) -> Dict[str, Any]:
    """The results of an evaluation-only run, with ``fields`` replacing its training fields."""
    # detectron2 returns {task: metrics} for one test set, {dataset: {task: metrics}} for more.
    tasks = evaluation or {}
    first = next(iter(tasks.values()), None)
    if isinstance(first, Mapping) and any(isinstance(v, Mapping) for v in first.values()):
        tasks = first
    bbox, inference = tasks.get("bbox"), tasks.get("inference", {})
    return {
        "schema": SCHEMA_VERSION,
        "status": "completed",
        "eval_only": True,
        "iterations": 0,
        "max_iter": 0,
        "train_seconds": None,
        "s_per_iter": None,
        "bbox": None if bbox is None else {k: _finite_or_none(v) for k, v in bbox.items()},
        "inference_s_per_image": _finite_or_none(inference.get("s_per_image")),
        "no_detections": inference.get("detections") == 0,
        "loss_history": {},
        "loss_extremes": {},
        "evaluations": {},
        "non_finite": None,
        **fields,
    }


def _losses(storage: Any) -> Losses:
    """The ``total_loss`` and ``loss_*`` histories of an ``EventStorage``; {} without the first."""
    histories = storage.histories()
    if "total_loss" not in histories:
        return {}
    names = sorted(n for n in histories if n == "total_loss" or n.startswith("loss_"))
    return {n: {int(it): v for v, it in histories[n].values()} for n in names}


def _loss_history(losses: Losses) -> Dict[str, List[Any]]:
    if not losses:
        return {}
    iterations = list(losses["total_loss"])
    last = len(iterations) - 1
    points = [i for i, it in enumerate(iterations) if (it + 1) % LOSS_WINDOW == 0 or i == last]
    out: Dict[str, List[Any]] = {"iteration": [iterations[i] for i in points]}
    for name, values in losses.items():
        out[name] = []
        for i in points:
            span = iterations[max(0, i - LOSS_WINDOW + 1) : i + 1]
            window = [values[it] for it in span if it in values]
            # np.median, as detectron2's HistoryBuffer: a NaN in the window gives NaN (null).
            out[name].append(_finite_or_none(np.median(window)) if window else None)
    return out


def _loss_extremes(losses: Losses) -> Dict[str, Dict[str, Any]]:
    totals = losses.get("total_loss")
    if not totals:
        return {}

    def at(it: int) -> Dict[str, Any]:
        return {"iteration": it, **{n: _finite_or_none(v.get(it)) for n, v in losses.items()}}

    finite = [it for it, v in totals.items() if math.isfinite(v)]
    out = {"first": at(min(totals))}
    if finite:
        out["largest"] = at(max(finite, key=totals.__getitem__))
    return out


def _evaluation_history(storage: Any, max_iter: int) -> Dict[str, List[Any]]:
    """From the flattened metrics ``EvalHook`` stores ("bbox/AP", or "<dataset>/bbox/AP" with
    several test sets: the first)."""
    histories = storage.histories()
    keys = [k for k in histories if k == "bbox/AP" or k.endswith("/bbox/AP")]
    if not keys:
        return {}
    prefix = keys[0][: -len("AP")]
    # Storage iteration i: after step i (i + 1 done); the final one is stored at max_iter.
    by_metric = {
        m: {min(int(it) + 1, max_iter): v for v, it in histories[prefix + m].values()}
        for m in ("AP", "AP50", "AP75")
        if prefix + m in histories
    }
    out: Dict[str, List[Any]] = {"iteration": sorted(by_metric["AP"])}
    for m in ("AP", "AP50", "AP75"):
        out[m] = [_finite_or_none(by_metric.get(m, {}).get(it)) for it in out["iteration"]]
    return out


def training_results(
    trainer: Any, error: Union[NonFiniteLossError, NonFiniteWeightsError, None] = None
) -> Dict[str, Any]:
    """The results of a training run, from ``trainer`` (``iter``, ``max_iter``, ``storage`` and
    the final evaluation's ``_last_eval_results``, where ``DefaultTrainer``'s evaluation hook
    keeps it) after ``train()`` returned or raised ``error``."""
    histories = trainer.storage.histories()
    times = [v for v, _ in histories["time"].values()] if "time" in histories else []
    status, non_finite = "completed", None
    if isinstance(error, NonFiniteLossError):
        status = "non_finite_loss"
        non_finite = {"iteration": int(error.iteration), "terms": list(error.terms)}
    elif isinstance(error, NonFiniteWeightsError):
        status = "non_finite_weights"
        iteration = error.iteration if error.iteration is not None else trainer.iter
        non_finite = {"iteration": int(iteration), "terms": list(error.tensors)}
    if error is not None and non_finite is not None:
        non_finite["checkpoint"] = error.checkpoint or None
    losses, max_iter = _losses(trainer.storage), int(trainer.max_iter)
    # A checkpoint is saved after its iteration's step: that iteration was done.
    done = int(trainer.iter) + isinstance(error, NonFiniteWeightsError)
    return evaluation_results(
        getattr(trainer, "_last_eval_results", None),
        status=status,
        eval_only=False,
        iterations=min(done, max_iter),
        max_iter=max_iter,
        train_seconds=_finite_or_none(sum(times)) if times else None,
        s_per_iter=_finite_or_none(sum(times) / len(times)) if times else None,
        loss_history=_loss_history(losses),
        loss_extremes=_loss_extremes(losses),
        evaluations=_evaluation_history(trainer.storage, max_iter),
        non_finite=non_finite,
    )


def write_results(output_dir: str, results: Mapping[str, Any]) -> Optional[str]:
    """Write ``<output_dir>/results.json`` on the main process; its path, or None elsewhere."""
    if not comm.is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    text = json.dumps(results, indent=1, allow_nan=False).encode("utf-8")  # NaN is null by now
    atomic_write(path, lambda f: f.write(text), "Free some space there and run again.")
    return path


def discard_results(output_dir: str) -> None:
    """Remove an earlier run's ``results.json`` (main process): a run that then crashes leaves
    none, rather than one that other programs would take for its own."""
    if comm.is_main_process():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, RESULTS_FILE))


@contextlib.contextmanager
def recording_results(output_dir: str, trainer: Any) -> Iterator[None]:
    """Around ``trainer.train()``: write ``results.json`` when it returns or raises a non-finite
    error (re-raised), and none, not even an earlier run's, when it raises anything else."""
    discard_results(output_dir)
    try:
        yield
    except (NonFiniteLossError, NonFiniteWeightsError) as e:
        write_results(output_dir, training_results(trainer, error=e))
        raise
    write_results(output_dir, training_results(trainer))
