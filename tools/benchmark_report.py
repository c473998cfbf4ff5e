"""The benchmark's figures: medians per detector, ratios, the issue's targets and the tables (one
per regime, a row per figure and precision variant)."""
from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

import torch

import retinafocal
from benchmark_models import detectron2_cfg
from benchmark_setup import BenchmarkSettings
from markdown_table import markdown_table

__all__ = ["summarize", "TARGETS", "ratio", "check_targets", "format_table", "environment"]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(times: Dict[str, Any], memory: Optional[Dict[str, Any]],
              settings: BenchmarkSettings) -> Dict[str, Dict[str, float]]:
    """Figures per detector, {figure: {detector: value}}, from one :func:`measure_times` result
    and optionally the memory measurements; a detector that failed has none."""
    figures: Dict[str, Dict[str, float]] = {
        "train_iter_s": {}, "latency_ms": {}, "throughput_img_s": {},
        "train_iter_cpu_s": {}, "latency_cpu_ms": {},
        "train_peak_mib": {}, "train_peak_above_start_mib": {}, "inference_peak_mib": {},
        "detections_per_image": {},
    }
    cuda = settings.device.startswith("cuda")
    failed = times.get("errors", {})
    for name in settings.detectors:
        if name in failed or name not in times.get("detections_per_image", {}):
            continue
        figures["train_iter_s"][name] = _median(times["train_iter_s"]["wall"][name])
        figures["latency_ms"][name] = 1000 * _median(times["latency_s"]["wall"][name])
        figures["throughput_img_s"][name] = settings.throughput_batch / _median(
            times["throughput_batch_s"]["wall"][name])
        if not cuda:  # CPU time says nothing about GPU work
            figures["train_iter_cpu_s"][name] = _median(times["train_iter_s"]["cpu"][name])
            figures["latency_cpu_ms"][name] = 1000 * _median(times["latency_s"]["cpu"][name])
        figures["detections_per_image"][name] = times["detections_per_image"][name]
        mem = (memory or {}).get(name)
        if mem:  # one list of fresh-process measurements per phase: their medians
            key = "cuda_peak_mib" if cuda else "peak_rss_mib"
            figures["train_peak_mib"][name] = _median([m[key] for m in mem["train"]])
            figures["inference_peak_mib"][name] = _median([m[key] for m in mem["inference"]])
            if not cuda:
                figures["train_peak_above_start_mib"][name] = _median(
                    [m["peak_rss_mib"] - m["start_rss_mib"] for m in mem["train"]])
    return {k: v for k, v in figures.items() if v}


_FIGURE_LABELS = {
    "train_iter_s": "training iteration, batch {train_batch} (s, lower is better)",
    "latency_ms": "inference latency, batch 1 (ms, lower is better)",
    "throughput_img_s": "inference throughput, batch {throughput_batch} (img/s, higher is better)",
    "train_iter_cpu_s": "training iteration, CPU time of all threads (s)",
    "latency_cpu_ms": "inference latency, CPU time of all threads (ms)",
    "train_peak_mib": "peak memory, training ({mem}, MiB, median of {memory_repeats} processes)",
    "train_peak_above_start_mib": "  of which above the process's start (MiB)",
    "inference_peak_mib": "peak memory, inference batch {throughput_batch} ({mem}, MiB)",
    "detections_per_image": "detections per image (sanity: equal regime)",
}

#: (precision of ours, figure, peer, largest allowed ours/peer ratio) from issue 15, the peers
#: in float32; throughput is implied by latency and not a target. "Ahead of torchvision" means
#: a ratio below 1.
TARGETS = (
    ("fp32", "train_iter_s", "detectron2", 0.8),
    ("fp32", "latency_ms", "detectron2", 0.8),
    ("fp32", "train_peak_mib", "detectron2", 0.75),
    ("fp32", "train_iter_s", "torchvision", 1.0),
    ("fp32", "latency_ms", "torchvision", 1.0),
    ("fp32", "train_peak_mib", "torchvision", 1.0),
    ("bf16", "train_iter_s", "detectron2", 0.7),
    ("bf16", "latency_ms", "detectron2", 0.6),
)


def ratio(figures: Dict[str, Dict[str, float]], figure: str, peer: str,
          peer_figures: Optional[Dict[str, Dict[str, float]]] = None) -> float:
    """Ours / ``peer`` for ``figure`` (the peer's from ``peer_figures`` when given, e.g. float32
    against ours in bf16); NaN when either was not measured."""
    ours = figures.get(figure, {}).get("retinafocal")
    theirs = (figures if peer_figures is None else peer_figures).get(figure, {}).get(peer)
    if ours is None or theirs is None or theirs == 0:
        return float("nan")
    return ours / theirs


def check_targets(by_precision: Dict[str, Dict[str, Dict[str, float]]]) -> List[Dict[str, Any]]:
    """One entry per issue target whose precision was run: precision, figure, peer, ratio (ours
    at that precision / the peer in float32), limit, met (None when not measured)."""
    checks = []
    fp32 = by_precision.get("fp32", {})
    for precision, figure, peer, limit in TARGETS:
        if precision not in by_precision:
            continue
        value = ratio(by_precision[precision], figure, peer, fp32)
        met = None if math.isnan(value) else (value < limit if limit == 1.0 else value <= limit)
        checks.append({"precision": precision, "figure": figure, "peer": peer, "ratio": value,
                       "limit": limit, "met": met})
    return checks


def _fmt(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _display_name(detector: str, settings: BenchmarkSettings) -> str:
    """Ours is named with its memory layout and whatever the run changed."""
    if detector != "retinafocal":
        return detector
    layout = detectron2_cfg(settings, "FocalRetinaNet").MODEL.RETINAFOCAL.MEMORY_FORMAT
    changes = list(settings.ours_variants) + list(settings.ours_opts[::2])
    return f"retinafocal ({layout})" + (f" + {', '.join(changes)}" if changes else "")


def format_table(by_precision: Dict[str, Dict[str, Dict[str, float]]],
                 settings: BenchmarkSettings,
                 errors: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """A GitHub-markdown table: a row per figure and precision variant, a column per detector,
    then ours / peer ratio columns, each peer at the same precision (and under the same
    autocast). A detector that failed at a precision shows "failed" there; its errors are
    listed under the table."""
    peers = [d for d in settings.detectors if d != "retinafocal"]
    ours = "retinafocal" in settings.detectors
    names = [_display_name(d, settings) for d in settings.detectors]
    header = ["figure", "precision"] + names + ([f"ours/{p}" for p in peers] if ours else [])
    mem = "CUDA max allocated" if settings.device.startswith("cuda") else "RSS"
    errors = errors or {}
    rows = []
    for figure in _FIGURE_LABELS:
        for precision, figures in by_precision.items():
            if figure not in figures:
                continue
            values = figures[figure]
            failed = errors.get(precision, {})
            row = [_FIGURE_LABELS[figure].format(mem=mem, **asdict(settings)), precision]
            row += ["failed" if d in failed else _fmt(values.get(d)) for d in settings.detectors]
            if ours:
                row += [
                    "-" if figure == "detections_per_image" else
                    f"{ratio(figures, figure, p):.2f}x" for p in peers
                ]  # fmt: skip
            rows.append(row)
    text = markdown_table(header, rows)
    notes = [f"- {name}, {precision}: {message}" for precision, failed in errors.items()
             for name, message in failed.items()]  # fmt: skip
    return text + ("\n\nFailed:\n" + "\n".join(notes) if notes else "")


def environment() -> Dict[str, Any]:
    import detectron2
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "compat": retinafocal.compat.describe(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
