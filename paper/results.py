"""What a run of the grid measured (:class:`RunResult`), read from the ``results.json`` that
``train_net.py`` writes into the run's directory (schema: :mod:`retinafocal.engine.results`).

No log text is read: a run without a usable ``results.json`` has failed, and its failure shows
the last line the process printed, for a person to read.

A run that stopped on a non-finite loss, or whose logged loss exploded, has *diverged*: that is a
result of the grid (Sec. 5.1 expects it), not a failure of the tool.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from retinafocal.engine.results import RESULTS_FILE, SCHEMA_VERSION

from .grid import Grid, RunSpec

__all__ = [
    "RunResult",
    "EXPLODE_FACTOR",
    "RUN_RESULT_FILE",
    "read_train_results",
    "result_from_outputs",
    "stored_result",
    "load_results",
]

#: A logged total loss above this multiple of the first logged one counts as exploding.
EXPLODE_FACTOR = 10.0

#: The grid's own record of a finished run (a :class:`RunResult`), next to train_net's
#: ``results.json``.
RUN_RESULT_FILE = "paper_result.json"


@dataclass
class RunResult:
    """What a finished (or diverged) run measured; stored as :data:`RUN_RESULT_FILE`.

    AP values are COCO percentages, NaN when the run produced no evaluation. Times are seconds
    unless named ``_ms``.

    Attributes:
        name, fingerprint: the :class:`RunSpec` this result belongs to.
        ap, ap50, ap75: COCO bbox AP, AP50, AP75 of the final evaluation.
        diverged: a loss became non-finite (``nan_iter`` set) or exploded (``exploded``).
        nan_iter: the iteration whose loss was not finite; None if none was.
        exploded: some logged total loss exceeded :data:`EXPLODE_FACTOR` x the first one.
        iterations: iterations completed; max_iter: iterations asked for (0: evaluation only).
        train_seconds: time in training steps; s_per_iter: mean time per iteration (both as
            detectron2's ``IterationTimer`` measures them).
        wall_seconds: the whole process, from start-up to the written evaluation.
        inference_ms: evaluation time per image at batch 1, model and post-processing, after 5
            warm-up images (as detectron2 times it).
        loss_history: ``[iteration, total_loss, loss_cls]`` per logged point (medians over the
            20 iterations up to it).
        error: for a diverged run, what stopped it.
        no_detections: the evaluation had no detection above the score threshold; COCO
            evaluation then gives NaN, which is stored here as AP 0 (COCO AP with recall 0).
        evaluations: ``[iteration, AP]`` per evaluation during training (the final one last);
            AP NaN when COCO gave none (no detection).
        raw_first_loss: total loss of the first iteration itself (not a median).
        raw_max_loss, raw_max_loss_iter: the largest finite per-iteration total loss, and its
            iteration.
    """

    name: str
    fingerprint: str
    ap: float = math.nan
    ap50: float = math.nan
    ap75: float = math.nan
    diverged: bool = False
    nan_iter: Optional[int] = None
    exploded: bool = False
    iterations: int = 0
    max_iter: int = 0
    train_seconds: float = math.nan
    s_per_iter: float = math.nan
    wall_seconds: float = math.nan
    inference_ms: float = math.nan
    loss_history: List[List[float]] = field(default_factory=list)
    error: str = ""
    no_detections: bool = False
    evaluations: List[List[float]] = field(default_factory=list)
    raw_first_loss: float = math.nan
    raw_max_loss: float = math.nan
    raw_max_loss_iter: Optional[int] = None

    def ap_at(self, iteration: int) -> float:
        """AP of the evaluation after ``iteration`` iterations; NaN when there was none."""
        for it, ap in self.evaluations:
            if int(it) == iteration:
                return ap
        return math.nan

    @property
    def first_loss(self) -> float:
        return self.loss_history[0][1] if self.loss_history else math.nan

    @property
    def max_loss(self) -> float:
        finite = [h[1] for h in self.loss_history if math.isfinite(h[1])]
        return max(finite) if finite else math.nan

    def to_json(self) -> Dict:
        return {k: _json_safe(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Dict) -> "RunResult":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: _from_json_safe(v) for k, v in data.items() if k in known}
        return cls(**values)


def _json_safe(value: Any) -> Any:
    """NaN/Inf as strings, so result files stay standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _from_json_safe(value: Any) -> Any:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


def _number(value: Optional[float]) -> float:
    """A results.json number; null is NaN."""
    return math.nan if value is None else float(value)


def read_train_results(run_dir: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """The ``results.json`` of a run directory.

    Returns:
        ``(contents, "")``, or ``(None, why it cannot be used)``: missing, not JSON, or another
        schema version.
    """
    path = os.path.join(run_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return None, f"no {RESULTS_FILE} in {run_dir}"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"{path} cannot be read as JSON ({e})"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        return None, f"{path} has schema {found!r}; this runner reads schema {SCHEMA_VERSION}"
    return data, ""


def _last_line(path: str, limit: int = 600) -> str:
    """The last non-empty line of a captured output, to show a person why a run failed."""
    if not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:limit] if lines else ""


def _loss_history(data: Dict[str, Any]) -> List[List[float]]:
    history = data.get("loss_history") or {}
    iterations = history.get("iteration", [])
    total = history.get("total_loss", [None] * len(iterations))
    cls_loss = history.get("loss_cls", [None] * len(iterations))
    return [[int(it), _number(t), _number(c)] for it, t, c in zip(iterations, total, cls_loss)]


def result_from_outputs(spec: RunSpec, run_dir: str, *, returncode: int,
                        wall_seconds: float) -> Tuple[Optional[RunResult], str]:  # fmt: skip
    """The result of a finished ``train_net.py`` process, from its ``results.json``.

    Returns:
        ``(result, "")`` for a run that finished or diverged; ``(None, reason)`` for a failure
        (the run can be retried).
    """
    data, problem = read_train_results(run_dir)
    last_line = _last_line(os.path.join(run_dir, "stdout.log"))
    if data is None:
        if returncode != 0:
            return None, f"exit code {returncode}: {last_line}"
        return None, f"finished without a usable results file: {problem}"

    result = RunResult(name=spec.name, fingerprint=spec.fingerprint(), max_iter=spec.max_iter,
                       wall_seconds=wall_seconds)  # fmt: skip
    result.iterations = int(data["iterations"])
    result.train_seconds = _number(data["train_seconds"])
    result.s_per_iter = _number(data["s_per_iter"])
    result.inference_ms = 1000.0 * _number(data["inference_s_per_image"])
    result.loss_history = _loss_history(data)
    extremes = data.get("loss_extremes") or {}
    if "first" in extremes:
        result.raw_first_loss = _number(extremes["first"].get("total_loss"))
    if "largest" in extremes:
        result.raw_max_loss = _number(extremes["largest"].get("total_loss"))
        result.raw_max_loss_iter = int(extremes["largest"]["iteration"])
    evaluations = data.get("evaluations") or {}
    result.evaluations = [[int(it), _number(ap)] for it, ap in
                          zip(evaluations.get("iteration", []), evaluations.get("AP", []))]
    losses = [h[1] for h in result.loss_history]
    if losses:
        finite = [v for v in losses if math.isfinite(v)]
        result.exploded = len(finite) < len(losses) or (
            losses[0] > 0 and max(finite) > EXPLODE_FACTOR * losses[0]
        )
    if data["status"] in ("non_finite_loss", "non_finite_weights"):
        stop = data["non_finite"]
        terms = ", ".join(stop["terms"]) or "the loss"
        result.diverged = True
        result.nan_iter = int(stop["iteration"])
        result.error = f"{terms} not finite at iteration {result.nan_iter}" + (
            f"; last checkpoint {stop['checkpoint']}" if stop["checkpoint"] else ""
        )
        return result, ""
    if returncode != 0:
        return None, f"exit code {returncode} after writing {RESULTS_FILE}: {last_line}"
    bbox = data["bbox"]
    if bbox is None:
        return None, "finished without a bbox evaluation (does the config have DATASETS.TEST?)"
    result.ap, result.ap50, result.ap75 = (_number(bbox.get(k)) for k in ("AP", "AP50", "AP75"))
    if data["no_detections"]:
        result.no_detections = True
        result.ap = result.ap50 = result.ap75 = 0.0
    result.diverged = result.exploded
    return result, ""


def stored_result(spec: RunSpec, run_dir: str) -> Optional[RunResult]:
    """The stored result of ``spec`` in ``run_dir``; None when there is none or it belongs to
    other settings (another fingerprint)."""
    path = os.path.join(run_dir, RUN_RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        result = RunResult.from_json(json.load(f))
    return result if result.fingerprint == spec.fingerprint() else None


def load_results(grid: Grid, runs_dir: str) -> Dict[str, RunResult]:
    """The stored results of ``grid``'s runs that match their current spec."""
    results = {}
    for spec in grid.runs:
        result = stored_result(spec, os.path.join(runs_dir, spec.name))
        if result is not None:
            results[spec.name] = result
    return results
