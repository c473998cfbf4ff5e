"""Run a :class:`~paper.grid.Grid`: one ``train_net.py`` process per run, seeded, resumable and
with an ETA over the grid.

Each run writes under ``<runs_dir>/<name>/``: detectron2's usual outputs (``log.txt``,
``metrics.json``, checkpoints, ``inference/``), train_net's ``results.json``, ``stdout.log``,
``spec.json`` (what was asked) and, once it has finished or diverged, the grid's record of it
(``paper_result.json``, a :class:`~paper.results.RunResult`). A run with such a record for the
same spec fingerprint is not run again; a run interrupted before that continues from its last
checkpoint (``--resume``); a run whose spec changed starts afresh.

Results come from ``results.json`` alone (:func:`~paper.results.result_from_outputs`). A run that
diverges is a result, not a failure of the tool. Any other failure is reported and the grid goes
on; runs that depend on it are skipped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from retinafocal.engine.results import discard_results

from .grid import Grid, RunSpec
from .results import RUN_RESULT_FILE, RunResult, result_from_outputs, stored_result

__all__ = ["LaunchOptions", "GridRunner"]

logger = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
ERROR_FILE = "error.txt"


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
        # A results file left by an earlier attempt must not pass for this one's, even if this
        # one fails before train_net.py removes it itself.
        discard_results(run_dir)
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
        path = os.path.join(active.run_dir, RUN_RESULT_FILE)
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
            stored = stored_result(spec, self.run_dir(spec.name))
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
