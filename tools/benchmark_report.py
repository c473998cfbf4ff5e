"""The benchmark's figures: medians per detector, ratios, the issue's targets and the table."""
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


def summarize(raw: Dict[str, Any], settings: BenchmarkSettings) -> Dict[str, Dict[str, float]]:
    """Figures per detector: {figure: {detector: value}}."""
    figures: Dict[str, Dict[str, float]] = {
        "train_iter_s": {}, "latency_ms": {}, "throughput_img_s": {},
        "train_iter_cpu_s": {}, "latency_cpu_ms": {},
        "train_peak_mib": {}, "train_peak_above_start_mib": {}, "inference_peak_mib": {},
        "detections_per_image": {},
    }
    times = raw["times"]
    cuda = settings.device.startswith("cuda")
    for name in settings.detectors:
        figures["train_iter_s"][name] = _median(times["train_iter_s"]["wall"][name])
        figures["latency_ms"][name] = 1000 * _median(times["latency_s"]["wall"][name])
        figures["throughput_img_s"][name] = settings.throughput_batch / _median(
            times["throughput_batch_s"]["wall"][name])
        if not cuda:  # CPU time says nothing about GPU work
            figures["train_iter_cpu_s"][name] = _median(times["train_iter_s"]["cpu"][name])
            figures["latency_cpu_ms"][name] = 1000 * _median(times["latency_s"]["cpu"][name])
        figures["detections_per_image"][name] = raw["times"]["detections_per_image"][name]
        mem = raw.get("memory", {}).get(name)
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

#: (figure, peer, largest allowed ours/peer ratio) from the issue; throughput is implied by
#: latency and not a target. "Ahead of torchvision" means a ratio below 1.
TARGETS = (
    ("train_iter_s", "detectron2", 0.85),
    ("latency_ms", "detectron2", 0.85),
    ("train_peak_mib", "detectron2", 0.80),
    ("train_iter_s", "torchvision", 1.0),
    ("latency_ms", "torchvision", 1.0),
    ("train_peak_mib", "torchvision", 1.0),
)


def ratio(figures: Dict[str, Dict[str, float]], figure: str, peer: str) -> float:
    """Ours / ``peer`` for ``figure``; NaN when either was not measured."""
    ours = figures.get(figure, {}).get("retinafocal")
    theirs = figures.get(figure, {}).get(peer)
    if ours is None or theirs is None or theirs == 0:
        return float("nan")
    return ours / theirs


def check_targets(figures: Dict[str, Dict[str, float]]) -> List[Dict[str, Any]]:
    """One entry per issue target: figure, peer, ratio (ours / peer), limit, met (None when
    the figure was not measured)."""
    checks = []
    for figure, peer, limit in TARGETS:
        value = ratio(figures, figure, peer)
        met = None if math.isnan(value) else (value < limit if limit == 1.0 else value <= limit)
        checks.append({"figure": figure, "peer": peer, "ratio": value, "limit": limit,
                       "met": met})
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


def format_table(figures: Dict[str, Dict[str, float]], settings: BenchmarkSettings) -> str:
    """A GitHub-markdown table: one row per figure, one column per detector, then ours / peer
    ratio columns."""
    peers = [d for d in settings.detectors if d != "retinafocal"]
    ours = "retinafocal" in settings.detectors
    names = [_display_name(d, settings) for d in settings.detectors]
    header = ["figure"] + names + ([f"ours/{p}" for p in peers] if ours else [])
    mem = "CUDA max allocated" if settings.device.startswith("cuda") else "RSS"
    rows = []
    for figure, values in figures.items():
        label = _FIGURE_LABELS[figure].format(mem=mem, **asdict(settings))
        row = [label] + [_fmt(values.get(d)) for d in settings.detectors]
        if ours:
            row += [
                "-" if figure == "detections_per_image" else f"{ratio(figures, figure, p):.2f}x"
                for p in peers
            ]
        rows.append(row)
    return markdown_table(header, rows)


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
