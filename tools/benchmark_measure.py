"""Timing, peak memory and profiles of the benchmark's detectors."""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from benchmark_models import Detector, build_detector, prepare_alone, set_regime
from benchmark_setup import BenchmarkSettings, Sample, make_samples

__all__ = [
    "describe_error",
    "time_interleaved",
    "full_float32",
    "same_detections",
    "measure_times",
    "memory_worker",
    "measure_memory",
    "profile_detectors",
]

#: The script whose ``--memory-worker`` mode measures one detector in a fresh process.
_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark_detectors.py")


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    tasks: Dict[str, Callable[[int], Any]],
    warmup: int,
    iters: int,
    device: str = "cpu",
    errors: Optional[Dict[str, str]] = None,
) -> Dict[str, Dict[str, List[float]]]:
    """Run ``tasks[name](round)`` for ``warmup + iters`` rounds, every task once per round, the
    first task of a round rotating. With ``errors``, a task that raises is recorded there
    ("Type: message") and left out of the later rounds, while the others run on.

    Returns:
        {"wall": {name: seconds per measured round}, "cpu": {name: CPU seconds of this
        process (all its threads) per measured round}}. On a shared machine the CPU time is
        the steadier figure: waiting for a core inflates wall time, not CPU time.
    """
    names = list(tasks)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + iters):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if errors is not None and name in errors:
                continue
            _synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                tasks[name](r)
                _synchronize(device)
            except Exception as e:  # noqa: BLE001  (one failing detector must not stop the rest)
                if errors is None:
                    raise
                errors[name] = describe_error(e)
                continue
            if r >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}


def describe_error(error: BaseException) -> str:
    """One line: the error's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


@contextmanager
def full_float32() -> Iterator[None]:
    """Convolutions and matmuls in full float32 inside the block. PyTorch lets cuDNN use TF32
    by default, which rounds inputs to 10 mantissa bits; with that, NHWC and NCHW kernels differ
    by up to ~1e-2 in a score (measured on an H200: reports/gpu/tf32_same_detections_*.txt), far
    above the rounding that :func:`same_detections` allows."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def same_detections(a: Dict[str, Tensor], b: Dict[str, Tensor], box_atol: float = 1e-2,
                    score_atol: float = 1e-4) -> bool:
    """Equal detections within rounding: as many of them, and every detection of either that
    scores clearly above the lowest kept score has a twin in the other (same class, box within
    ``box_atol`` px, score within ``score_atol``). Near that lowest score, which of several
    near-tied candidates makes the cut is arbitrary: such detections need no twin."""
    if len(a["scores"]) != len(b["scores"]):
        return False
    if len(a["scores"]) == 0:
        return True
    a, b = ({k: v.detach().cpu().double() for k, v in d.items()} for d in (a, b))
    floor = max(float(a["scores"].min()), float(b["scores"].min())) + score_atol
    return _have_twins(a, b, floor, box_atol, score_atol) and _have_twins(
        b, a, floor, box_atol, score_atol
    )


def _have_twins(x: Dict[str, Tensor], y: Dict[str, Tensor], floor: float, box_atol: float,
                score_atol: float) -> bool:
    """Whether each detection of ``x`` scoring above ``floor`` has its own twin in ``y``."""
    free = torch.ones(len(y["scores"]), dtype=torch.bool)
    for i in torch.nonzero(x["scores"] > floor).flatten().tolist():
        twin = (
            free
            & (y["classes"] == x["classes"][i])
            & ((y["scores"] - x["scores"][i]).abs() <= score_atol)
            & ((y["boxes"] - x["boxes"][i]).abs().amax(dim=1) <= box_atol)
        )
        if not bool(twin.any()):
            return False
        free[int(torch.nonzero(twin)[0])] = False
    return True


def measure_times(detectors: Dict[str, Detector], settings: BenchmarkSettings,
                  samples: Sequence[Sample], precision: str = "fp32") -> Dict[str, Any]:
    """Inference latency, throughput and training iteration time of every detector at the
    precision variant ``precision``, with the weights they hold (a regime's). A detector that
    fails is named in "errors" with its error, and the others are timed."""
    n = len(samples)
    train_iters, latency_iters, throughput_iters = settings.iters
    errors: Dict[str, str] = {}
    out: Dict[str, Any] = {"detections_per_image": {}, "errors": errors}
    for name, det in detectors.items():
        try:
            det.set_precision(precision, settings)
            out["detections_per_image"][name] = len(
                det.infer(det.inference_inputs(samples[:1]))[0]["scores"])
        except Exception as e:  # noqa: BLE001  (reported in the table; the others run on)
            errors[name] = describe_error(e)
    live = {name: det for name, det in detectors.items() if name not in errors}
    single = {name: [d.inference_inputs([s]) for s in samples] for name, d in live.items()}
    batch = {name: d.inference_inputs(samples[: settings.throughput_batch])
             for name, d in live.items()}
    train = {name: d.training_inputs(samples[: settings.train_batch]) for name, d in live.items()}
    if precision == "fp32" and "retinafocal" in live and "detectron2" in live:
        with full_float32():  # the timings below keep PyTorch's defaults (TF32 on CUDA)
            out["same_detections_as_detectron2"] = all(
                same_detections(live["retinafocal"].infer(single["retinafocal"][i])[0],
                                live["detectron2"].infer(single["detectron2"][i])[0])
                for i in range(min(n, 2))
            )
    out["latency_s"] = time_interleaved(
        {name: (lambda r, d=det, x=single[name]: d.infer(x[r % n])) for name, det in
         live.items()},
        settings.warmup, latency_iters, settings.device, errors,
    )
    out["throughput_batch_s"] = time_interleaved(
        {name: (lambda r, d=det, x=batch[name]: d.infer(x)) for name, det in live.items()},
        settings.warmup, throughput_iters, settings.device, errors,
    )
    out["train_losses"] = {}

    def train_task(name, det):
        def run(r):
            loss = det.train_step(train[name])
            out["train_losses"].setdefault(name, []).append(loss)
        return run

    out["train_iter_s"] = time_interleaved(
        {name: train_task(name, det) for name, det in live.items()},
        settings.warmup, train_iters, settings.device, errors,
    )
    if precision == "compiled-loss" and "retinafocal" in live and "retinafocal" not in errors:
        # The fused loss falls back to eager code (with a warning) when compiling fails: then
        # this row would time the eager loss under the compiled loss's name.
        runner = getattr(live["retinafocal"].model.classification_loss, "runner", None)
        if runner is None or getattr(runner, "_compile_failed", False) or not getattr(
                runner, "_compiled", None):  # fmt: skip
            errors["retinafocal"] = "the loss did not compile (it ran eagerly): see the log"
    return out


# ---------------------------------------------------------------------------- memory
def _rss_mib() -> Tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    current = peak = float("nan")
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if math.isnan(peak):
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return current, peak


def memory_worker(name: str, phase: str, settings: BenchmarkSettings) -> Dict[str, float]:
    """Build one detector and run one phase ("train" or "inference" at the throughput batch)
    in this process; return its memory figures in MiB. Meant for a fresh subprocess."""
    torch.set_num_threads(settings.threads)
    start_rss, _ = _rss_mib()
    det = build_detector(name, settings)
    samples = make_samples(settings, max(settings.train_batch, settings.throughput_batch),
                           settings.seed)
    headline = replace(settings, regimes=settings.regimes[:1])
    set_regime({name: det}, {name: prepare_alone(det, headline, samples)}, headline.regimes[0])
    if settings.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if phase == "train":
        inputs = det.training_inputs(samples[: settings.train_batch])
        for _ in range(settings.memory_iters):
            det.train_step(inputs)
    elif phase == "inference":
        det.infer(det.inference_inputs(samples[: settings.throughput_batch]))
    else:
        raise ValueError(f"unknown phase {phase!r}")
    _, peak = _rss_mib()
    result = {"start_rss_mib": start_rss, "peak_rss_mib": peak}
    if settings.device.startswith("cuda"):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_memory(name: str, phase: str, settings: BenchmarkSettings) -> Dict[str, float]:
    """Run :func:`memory_worker` in a fresh Python process and return its result."""
    cmd = [sys.executable, _SCRIPT, "--memory-worker", name, phase,
           "--settings-json", json.dumps(asdict(settings))]
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory measurement of {name} ({phase}) failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_detectors(detectors: Dict[str, Detector], settings: BenchmarkSettings,
                      samples: Sequence[Sample], row_limit: int = 15) -> Dict[str, str]:
    """torch.profiler tables (top operators by self time) of one training step and one batch-1
    inference per detector, at the weights and precision they hold, after the timed runs (so
    nothing is cold)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if settings.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
        # torch >= 2.4 names it "device"; older releases only know "cuda".
        from torch.autograd.profiler_util import FunctionEventAvg

        has_device = hasattr(FunctionEventAvg, "self_device_time_total")
        sort_by = "self_device_time_total" if has_device else "self_cuda_time_total"
    tables = {}
    for name, det in detectors.items():
        train = det.training_inputs(samples[: settings.train_batch])
        single = det.inference_inputs(samples[:1])
        with profile(activities=activities) as prof:
            det.train_step(train)
            _synchronize(settings.device)
        tables[f"{name} training"] = prof.key_averages().table(sort_by=sort_by,
                                                                row_limit=row_limit)
        with profile(activities=activities) as prof:
            det.infer(single)
            _synchronize(settings.device)
        tables[f"{name} inference"] = prof.key_averages().table(sort_by=sort_by,
                                                                 row_limit=row_limit)
    return tables
