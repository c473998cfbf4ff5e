"""Run a :class:`~paper.grid.Grid`: one ``train_net.py`` process per run, seeded,
resumable and with an ETA over the grid.

Each run writes under ``<runs_dir>/<name>/``: detectron2's usual outputs (``log.txt``,
``metrics.json``, checkpoints, ``inference/``), ``stdout.log``, ``spec.json`` (what was asked) and,
once it has finished or diverged, ``result.json`` (:class:`RunResult`). A run whose
``result.json`` holds the same spec fingerprint is not run again; a run interrupted before that
continues from its last checkpoint (``--resume``); a run whose spec changed starts afresh.

A run that diverges (a NaN/Inf loss stops detectron2's trainer with a ``FloatingPointError``, or
a logged loss explodes) is a result, not a failure of the tool. Any other failure is reported and
the grid goes on; runs that depend on it are skipped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .grid import Grid, RunSpec

__all__ = [
    "RunResult",
    "LaunchOptions",
    "GridRunner",
    "read_metrics",
    "parse_log",
    "result_from_outputs",
    "load_results",
    "EXPLODE_FACTOR",
]

logger = logging.getLogger(__name__)

#: A logged total loss above this multiple of the first logged one counts as exploding.
EXPLODE_FACTOR = 10.0

RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
ERROR_FILE = "error.txt"


@dataclass
class RunResult:
    """What a finished (or diverged) run measured; stored as ``result.json``.

    AP values are COCO percentages (detectron2's ``bbox/AP`` etc.), NaN when the run produced no
    evaluation. Times are seconds unless named ``_ms``.

    Attributes:
        name, fingerprint: the :class:`RunSpec` this result belongs to.
        ap, ap50, ap75: COCO bbox AP, AP50, AP75 of the final evaluation.
        diverged: a loss became non-finite (``nan_iter`` set) or exploded (``exploded``).
        nan_iter: the iteration whose loss was not finite; None if none was.
        nan_iter_exact: False when ``nan_iter`` is only bracketed by the last logged iteration
            (the trainer's message did not name it).
        exploded: some logged total loss exceeded :data:`EXPLODE_FACTOR` x the first one.
        iterations: iterations completed; max_iter: iterations asked for (0: evaluation only).
        train_seconds: detectron2's total training time; s_per_iter: its mean time per iteration.
        wall_seconds: the whole process, from start-up to the written evaluation.
        inference_ms: evaluation time per image at batch 1, model and post-processing
            (detectron2's "pure compute time", which skips the first 5 images).
        loss_history: ``[iteration, total_loss, loss_cls]`` per logged point (windowed medians).
        error: for a diverged run, the trainer's message.
        no_detections: the evaluation had no detection above the score threshold; detectron2
            then reports NaN, which is stored here as AP 0 (COCO AP with recall 0).
    """

    name: str
    fingerprint: str
    ap: float = math.nan
    ap50: float = math.nan
    ap75: float = math.nan
    diverged: bool = False
    nan_iter: Optional[int] = None
    nan_iter_exact: bool = True
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


def _json_safe(value):
    """NaN/Inf as strings, so result files stay standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _from_json_safe(value):
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- reading outputs
def read_metrics(path: str) -> List[Dict]:
    """The records of a detectron2 ``metrics.json`` (one JSON object per line), merged per
    iteration (a resumed run appends; the later value wins). A truncated last line is ignored.
    Non-finite values written by Python's json (``NaN``, ``Infinity``) are kept as floats."""
    by_iter: Dict[int, Dict] = {}
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            it = int(record.get("iteration", -1))
            by_iter.setdefault(it, {}).update(record)
    return [by_iter[k] for k in sorted(by_iter)]


_COPYPASTE = re.compile(r"copypaste: (.*)$")
_PURE_COMPUTE = re.compile(
    r"Total inference pure compute time: .*\(([0-9.eE+-]+) s / iter per device"
)
_TRAIN_SPEED = re.compile(r"Overall training speed: (\d+) iterations in .*\(([0-9.eE+-]+) s / it\)")
_TRAIN_TIME = re.compile(r"Total training time: (?:(\d+) days?, )?(\d+):(\d+):(\d+)")
# The iteration in a non-finite-loss message, e.g. retinafocal's NonFiniteLossError ("Loss became
# NaN or infinite at iteration 7") or detectron2's ("Loss became infinite or NaN at iteration=7").
_NONFINITE_ITER = re.compile(
    r"(?:NaN or infinite|infinite or NaN|non-finite|not finite)[^\n]*?iteration[ =:]*(\d+)"
)
_FP_ERROR = re.compile(r"\b(FloatingPointError|NonFiniteLossError)\b")
_NO_PREDICTIONS = "No predictions from the model!"  # detectron2's COCOEvaluator warning


def parse_log(path: str) -> Dict:
    """Figures from a detectron2 ``log.txt`` (or captured stdout).

    Returns a dict with any of: ``bbox`` (dict AP/AP50/AP75/... from the last ``copypaste``
    block of task bbox), ``inference_s_per_image``, ``train_iterations``, ``s_per_iter``,
    ``train_seconds``, ``floating_point_error`` (bool), ``nan_iter`` (int) and
    ``no_predictions`` (bool: COCOEvaluator found no detection to evaluate).
    """
    out: Dict = {}
    if not os.path.isfile(path):
        return out
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    task, header = None, None
    for line in lines:
        m = _COPYPASTE.search(line)
        if m:
            text = m.group(1).strip()
            if text.startswith("Task: "):
                task, header = text[len("Task: "):], None
            elif header is None:
                header = text.split(",")
            else:
                if task == "bbox":
                    values = [float(v) if v not in ("nan", "") else math.nan
                              for v in text.split(",")]  # fmt: skip
                    out["bbox"] = dict(zip(header, values))
                header = None
            continue
        m = _PURE_COMPUTE.search(line)
        if m:
            out["inference_s_per_image"] = float(m.group(1))
        m = _TRAIN_SPEED.search(line)
        if m:
            out["train_iterations"], out["s_per_iter"] = int(m.group(1)), float(m.group(2))
        m = _TRAIN_TIME.search(line)
        if m:
            d, h, mi, s = (int(g or 0) for g in m.groups())
            out["train_seconds"] = float(((d * 24 + h) * 60 + mi) * 60 + s)
        if _FP_ERROR.search(line):
            out["floating_point_error"] = True
        if _NO_PREDICTIONS in line:
            out["no_predictions"] = True
        m = _NONFINITE_ITER.search(line)
        if m:
            out["nan_iter"] = int(m.group(1))
    return out


def _error_excerpt(path: str, limit: int = 600) -> str:
    """The last FloatingPointError line of a captured log, else its last non-empty line."""
    if not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    for line in reversed(lines):
        if _FP_ERROR.search(line):
            return line[:limit]
    return lines[-1][:limit] if lines else ""


def result_from_outputs(spec: RunSpec, run_dir: str, *, returncode: int,
                        wall_seconds: float) -> Tuple[Optional[RunResult], str]:  # fmt: skip
    """Build the result of a finished process from its outputs.

    Returns:
        ``(result, "")`` for a run that finished or diverged; ``(None, reason)`` for a failure
        that is not a divergence (the run can be retried).
    """
    metrics = read_metrics(os.path.join(run_dir, "metrics.json"))
    log = parse_log(os.path.join(run_dir, "log.txt"))
    stdout = parse_log(os.path.join(run_dir, "stdout.log"))
    # log.txt holds everything detectron2 logged; the traceback of a crash is only in stdout.
    for key, value in stdout.items():
        log.setdefault(key, value)
    fp_error = bool(log.get("floating_point_error")) and returncode != 0

    result = RunResult(name=spec.name, fingerprint=spec.fingerprint(), max_iter=spec.max_iter,
                       wall_seconds=wall_seconds)  # fmt: skip
    history = []
    for rec in metrics:
        if "total_loss" in rec:
            history.append([int(rec["iteration"]), float(rec["total_loss"]),
                            float(rec.get("loss_cls", math.nan))])  # fmt: skip
    result.loss_history = history
    evals = [rec for rec in metrics if "bbox/AP" in rec]
    bbox = {k[len("bbox/"):]: float(v) for k, v in evals[-1].items() if k.startswith("bbox/")} \
        if evals else log.get("bbox", {})  # fmt: skip
    result.ap = float(bbox.get("AP", math.nan))
    result.ap50 = float(bbox.get("AP50", math.nan))
    result.ap75 = float(bbox.get("AP75", math.nan))
    if log.get("no_predictions") and math.isnan(result.ap):
        result.no_detections = True
        result.ap = result.ap50 = result.ap75 = 0.0
    if "inference_s_per_image" in log:
        result.inference_ms = 1000.0 * log["inference_s_per_image"]
    result.s_per_iter = float(log.get("s_per_iter", math.nan))
    result.train_seconds = float(log.get("train_seconds", math.nan))
    iters = [int(rec["iteration"]) for rec in metrics if "total_loss" in rec]
    result.iterations = (max(iters) + 1) if iters else 0

    losses = [h[1] for h in history]
    if losses:
        result.exploded = any(not math.isfinite(v) for v in losses) or (
            losses[0] > 0
            and max(v for v in losses if math.isfinite(v)) > EXPLODE_FACTOR * losses[0]
        )
    if fp_error:
        result.diverged = True
        if "nan_iter" in log:
            result.nan_iter = int(log["nan_iter"])
        else:
            # The failing iteration logged nothing; the last logged one precedes it.
            last = max((int(rec["iteration"]) for rec in metrics), default=-1)
            result.nan_iter, result.nan_iter_exact = last + 1, False
        result.error = _error_excerpt(os.path.join(run_dir, "stdout.log"))
        return result, ""
    if returncode != 0:
        excerpt = _error_excerpt(os.path.join(run_dir, "stdout.log"))
        return None, f"exit code {returncode}: {excerpt}"
    result.diverged = result.exploded
    if not evals and "bbox" not in log:
        return None, "finished without a bbox evaluation (does the config have DATASETS.TEST?)"
    return result, ""


def load_results(grid: Grid, runs_dir: str) -> Dict[str, RunResult]:
    """The stored results of ``grid``'s runs that match their current spec."""
    results = {}
    for spec in grid.runs:
        path = os.path.join(runs_dir, spec.name, RESULT_FILE)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            result = RunResult.from_json(json.load(f))
        if result.fingerprint == spec.fingerprint():
            results[spec.name] = result
    return results


# --------------------------------------------------------------------------- running
@dataclass
class LaunchOptions:
    """How to start ``train_net.py``; the distributed flags are detectron2's ``launch``'s.

    Attributes:
        train_net: path of ``train_net.py``.
        python: interpreter to run it with.
        num_gpus, num_machines, machine_rank, dist_url: passed through unchanged.
        threads: intra-op threads per run (``OMP_NUM_THREADS``); 0 = leave the environment as is.
        cwd: working directory of the runs (relative config paths resolve against it).
    """

    train_net: str
    python: str = sys.executable
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    threads: int = 0
    cwd: Optional[str] = None

    def command(self, spec: RunSpec, run_dir: str, weights: Optional[str]) -> List[str]:
        cmd = [self.python, self.train_net, "--config-file", spec.config_file,
               "--num-gpus", str(self.num_gpus), "--num-machines", str(self.num_machines),
               "--machine-rank", str(self.machine_rank), "--dist-url", self.dist_url]  # fmt: skip
        if spec.eval_only:
            cmd.append("--eval-only")
        else:
            cmd.append("--resume")
        cmd += list(spec.opts) + ["SEED", str(spec.seed), "OUTPUT_DIR", run_dir]
        if weights is not None:
            cmd += ["MODEL.WEIGHTS", weights]
        return cmd


@dataclass
class _Active:
    spec: RunSpec
    run_dir: str
    process: subprocess.Popen
    started: float
    stdout: object


class GridRunner:
    """Runs the grid's jobs, ``jobs`` at a time, in order, each after the run it evaluates.

    With several machines, every machine runs the same grid in the same order (detectron2's
    ``launch`` joins them per run); ``runs_dir`` must be on a filesystem they share, so that
    they agree on which runs are done.

    Args:
        grid: what to run.
        runs_dir: one sub-directory per run.
        launch: how to start ``train_net.py``.
        jobs: runs at the same time (on one machine; use 1 with several machines).
        only: run just these names (others are left as they are).
        log: a callable for progress lines (default: this module's logger).
    """

    def __init__(self, grid: Grid, runs_dir: str, launch: LaunchOptions, *, jobs: int = 1,
                 only: Optional[Sequence[str]] = None, log=None) -> None:  # fmt: skip
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        if not os.path.isfile(launch.train_net):
            raise FileNotFoundError(f"train_net.py not found at {launch.train_net!r}")
        if only:
            unknown = sorted(set(only) - {r.name for r in grid.runs})
            if unknown:
                raise KeyError(f"--only names runs not in grid {grid.name!r}: {unknown}")
        self.grid = grid
        self.runs_dir = os.path.abspath(runs_dir)
        self.launch = launch
        self.jobs = jobs
        self.only = set(only) if only else None
        self._log = log or logger.info
        self.results: Dict[str, RunResult] = {}
        self.failures: Dict[str, str] = {}
        # Measured so far, for the ETA: seconds per iteration and per-run overhead.
        self._iter_seconds: List[float] = []
        self._overheads: List[float] = []
        self._eval_seconds: List[float] = []

    # -- bookkeeping
    def run_dir(self, name: str) -> str:
        return os.path.join(self.runs_dir, name)

    def _stored_result(self, spec: RunSpec) -> Optional[RunResult]:
        path = os.path.join(self.run_dir(spec.name), RESULT_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            result = RunResult.from_json(json.load(f))
        return result if result.fingerprint == spec.fingerprint() else None

    def _prepare_dir(self, spec: RunSpec) -> str:
        """Create the run's directory; a directory left by another spec is cleared so that
        ``--resume`` cannot pick up a checkpoint of a different setting."""
        run_dir = self.run_dir(spec.name)
        spec_path = os.path.join(run_dir, SPEC_FILE)
        if self.launch.machine_rank != 0:
            # The first machine owns the directory (shared between machines).
            os.makedirs(run_dir, exist_ok=True)
            return run_dir
        if os.path.isdir(run_dir):
            old = None
            if os.path.isfile(spec_path):
                with open(spec_path) as f:
                    old = json.load(f).get("fingerprint")
            if old != spec.fingerprint():
                shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        with open(spec_path, "w") as f:
            json.dump({"fingerprint": spec.fingerprint(), **asdict(spec)}, f, indent=1)
        return run_dir

    def _estimate(self, spec: RunSpec) -> float:
        """Seconds this run is expected to take, from what the grid has measured so far."""
        if spec.eval_only:
            if self._eval_seconds:
                return sum(self._eval_seconds) / len(self._eval_seconds)
            return sum(self._overheads) / len(self._overheads) if self._overheads else math.nan
        if not self._iter_seconds:
            return math.nan
        per_iter = sum(self._iter_seconds) / len(self._iter_seconds)
        overhead = sum(self._overheads) / len(self._overheads)
        return spec.max_iter * per_iter + overhead

    def _eta(self, pending: Sequence[RunSpec], active: Sequence[_Active]) -> str:
        now = time.time()
        total = sum(self._estimate(s) for s in pending)
        total += sum(max(0.0, self._estimate(a.spec) - (now - a.started)) for a in active)
        if not math.isfinite(total):
            return "ETA after the first finished run"
        return f"ETA {total / self.jobs / 60:.1f} min"

    def _record(self, spec: RunSpec, result: RunResult) -> None:
        if spec.eval_only:
            self._eval_seconds.append(result.wall_seconds)
        elif math.isfinite(result.s_per_iter) and result.iterations and not result.diverged:
            self._iter_seconds.append(result.s_per_iter)
            self._overheads.append(
                max(0.0, result.wall_seconds - result.s_per_iter * result.iterations)
            )

    # -- execution
    def _start(self, spec: RunSpec) -> _Active:
        run_dir = self._prepare_dir(spec)
        weights = None
        if spec.eval_only:
            weights = os.path.join(self.run_dir(spec.eval_of), "model_final.pth")
        cmd = self.launch.command(spec, run_dir, weights)
        env = dict(os.environ)
        if self.launch.threads > 0:
            env["OMP_NUM_THREADS"] = str(self.launch.threads)
            env["MKL_NUM_THREADS"] = str(self.launch.threads)
        rank = self.launch.machine_rank
        log_name = "stdout.log" if rank == 0 else f"stdout.{rank}.log"
        stdout = open(os.path.join(run_dir, log_name), "a")
        stdout.write("$ " + " ".join(cmd) + "\n")
        stdout.flush()
        process = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, env=env,
                                   cwd=self.launch.cwd)  # fmt: skip
        return _Active(spec, run_dir, process, time.time(), stdout)

    def _finish(self, active: _Active) -> None:
        active.stdout.close()
        wall = time.time() - active.started
        spec = active.spec
        result, reason = result_from_outputs(
            spec, active.run_dir, returncode=active.process.returncode, wall_seconds=wall
        )
        if self.launch.machine_rank != 0:
            # The first machine owns the results. Here a finished process only has to let the
            # runs that depend on it start, in step with the first machine.
            if active.process.returncode == 0:
                self.results[spec.name] = RunResult(name=spec.name, fingerprint=spec.fingerprint())
            else:
                self.failures[spec.name] = f"exit code {active.process.returncode}"
            return
        if result is None:
            self.failures[spec.name] = reason
            with open(os.path.join(active.run_dir, ERROR_FILE), "w") as f:
                f.write(reason + "\n")
            self._log(f"{spec.name}: FAILED ({reason}); see {active.run_dir}/stdout.log")
            return
        path = os.path.join(active.run_dir, RESULT_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(result.to_json(), f, indent=1)
        os.replace(path + ".tmp", path)
        self.results[spec.name] = result
        self._record(spec, result)
        state = "DIVERGED" if result.diverged else "done"
        self._log(
            f"{spec.name}: {state} in {wall:.0f} s, AP {result.ap:.2f} "
            f"(AP50 {result.ap50:.2f}, AP75 {result.ap75:.2f})"
            + (f", {result.s_per_iter:.2f} s/iter" if math.isfinite(result.s_per_iter) else "")
        )

    def run(self) -> Dict[str, RunResult]:
        """Run every pending job; returns all results of the grid (stored and new)."""
        pending: List[RunSpec] = []
        for spec in self.grid.runs:
            stored = self._stored_result(spec)
            if stored is not None:
                self.results[spec.name] = stored
                self._record(spec, stored)
            elif self.only is None or spec.name in self.only:
                pending.append(spec)
        total = len(self.grid.runs)
        done_before = len(self.results)
        self._log(
            f"grid {self.grid.name!r}: {total} runs, {done_before} already done, "
            f"{len(pending)} to run, {self.jobs} at a time, output in {self.runs_dir}"
        )
        active: List[_Active] = []
        finished = done_before
        while pending or active:
            # Start what can start: dependencies finished (or failed -> skip).
            progressed = True
            while progressed and len(active) < self.jobs:
                progressed = False
                for spec in list(pending):
                    if spec.eval_only:
                        parent_active = any(a.spec.name == spec.eval_of for a in active)
                        parent_pending = any(p.name == spec.eval_of for p in pending)
                        if parent_active or parent_pending:
                            continue
                        parent = self.results.get(spec.eval_of)
                        if parent is None or parent.diverged:
                            why = "failed" if parent is None else "diverged"
                            self.failures[spec.name] = f"skipped: {spec.eval_of} {why}"
                            self._log(f"{spec.name}: skipped ({spec.eval_of} {why})")
                            pending.remove(spec)
                            finished += 1
                            progressed = True
                            continue
                    pending.remove(spec)
                    self._log(
                        f"[{finished + len(active) + 1}/{total}] start {spec.name}: "
                        f"{spec.description}"
                    )
                    active.append(self._start(spec))
                    progressed = True
                    break
            if not active:
                continue
            time.sleep(0.2)
            for a in list(active):
                if a.process.poll() is None:
                    continue
                active.remove(a)
                finished += 1
                self._finish(a)
                self._log(f"[{finished}/{total}] {self._eta(pending, active)}")
        return self.results
