#!/usr/bin/env python
"""The Python parts of ``tools/gpu_check.sh`` (which runs each under a time limit)::

    python tools/gpu_check.py env OUT_DIR DEVICE      # OUT_DIR/env.json; exit 1 without CUDA
    python tools/gpu_check.py train OUT_DIR NAME DEVICE ITERS [KEY VALUE ...]
    python tools/gpu_check.py has-precision          # exit 0: MODEL.RETINAFOCAL.PRECISION exists
    python tools/gpu_check.py report OUT_DIR          # OUT_DIR/GPU_CHECK.md, also printed

``train`` runs ``train_net.py``'s ``main`` on the embedded recipe inside detectron2's launch
worker with one process: the worker that ``launch`` starts per GPU for multi-GPU training
(process group: NCCL on a GPU, gloo on the CPU; local group, device, barrier), which ``launch``
skips for a single process. Extra overrides come from ``$GPU_CHECK_TRAIN_OPTS`` (shell-quoted).
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import shlex
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "Embedded", "retinanet_R18_FPN_shapes.yaml")
#: What each training run of gpu_check.sh changes, for the report.
RUNS = {
    "train_nccl": "fp32 in launch's worker (NCCL; gloo on a CPU), then evaluation",
    "train_amp": "SOLVER.AMP.ENABLED (fp16 autocast)",
    "train_compiled": "AMP + MODEL.RETINAFOCAL.LOSS.COMPILE (Triton)",
    "train_bf16": "MODEL.RETINAFOCAL.PRECISION bf16",
    "train_fp16": "MODEL.RETINAFOCAL.PRECISION fp16 + SOLVER.AMP.ENABLED",
}


def write_env(out_dir: str, device: str) -> int:
    """Record the environment in ``out_dir/env.json``; 1 when ``device`` is cuda but CUDA is not
    available."""
    import torch

    import retinafocal

    cuda = device.startswith("cuda")
    env = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(0) if cuda and torch.cuda.is_available() else device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "detectron2": retinafocal.compat.describe(),
    }
    with open(os.path.join(out_dir, "env.json"), "w", encoding="utf-8") as f:
        json.dump(env, f, indent=1)
    print(json.dumps(env, indent=1))
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available: nothing to check on a GPU here", file=sys.stderr)
        return 1
    return 0


def train(out_dir: str, name: str, device: str, iters: int, overrides: Sequence[str]) -> None:
    """``train_net.py``'s main in launch's worker, one process, output in ``out_dir/name``."""
    sys.path.insert(0, REPO_ROOT)
    import train_net  # imports retinafocal before detectron2, as the script does

    # The run's own folder last, so that every run keeps its results whatever the extra options.
    opts = ["MODEL.DEVICE", device, "SOLVER.MAX_ITER", str(iters), *overrides,
            *shlex.split(os.environ.get("GPU_CHECK_TRAIN_OPTS", "")),
            "OUTPUT_DIR", os.path.join(out_dir, name)]  # fmt: skip
    args = train_net.argument_parser().parse_args(["--config-file", CONFIG, *opts])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    worker = importlib.import_module("detectron2.engine.launch")._distributed_worker
    # (local rank, main, world size, processes per machine, machine rank, url, main's args)
    worker(0, train_net.main, 1, 1, 0, url, (args,))


def has_precision_key() -> bool:
    """Whether this checkout has issue 15's MODEL.RETINAFOCAL.PRECISION."""
    from detectron2.config import get_cfg

    import retinafocal

    cfg = get_cfg()
    retinafocal.add_retinafocal_config(cfg)
    return "PRECISION" in cfg.MODEL.RETINAFOCAL


def _read_json(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(out_dir: str) -> str:
    """``out_dir/GPU_CHECK.md`` from what the steps left there; returns its text."""
    env = _read_json(os.path.join(out_dir, "env.json")) or {}
    steps: List[List[str]] = []
    if os.path.isfile(os.path.join(out_dir, "steps.tsv")):
        with open(os.path.join(out_dir, "steps.tsv"), encoding="utf-8") as f:
            steps = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    lines = [
        f"# GPU check, {env.get('date', '?')}: {env.get('device', '?')}",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}; "
        f"{env.get('detectron2')}",
        "",
        "| step | exit code | seconds |",
        "|---|---|---|",
        *[f"| {name} | {rc} | {seconds} |" for name, rc, seconds in steps],
    ]
    runs: List[str] = []
    for name, what in RUNS.items():
        results: Dict[str, Any] = _read_json(os.path.join(out_dir, name, "results.json")) or {}
        if not results:
            continue
        bbox = results.get("bbox") or {}
        runs.append(
            f"| {name} | {what} | {results['iterations']} | {_fmt(results['s_per_iter'], 3)} | "
            f"{_fmt(bbox.get('AP'), 2)} | {results['status']} |"
        )
    if runs:
        lines += [
            "",
            f"Training: the embedded recipe ({os.path.relpath(CONFIG, REPO_ROOT)}, batch 16, "
            "128 px), from scratch.",
            "",
            "| run | settings | iterations | s/iter | bbox AP | status |",
            "|---|---|---|---|---|---|",
            *runs,
        ]
    for bench in _read_json(os.path.join(out_dir, "benchmark.json")) or []:
        s = bench["settings"]
        lines += [
            "",
            f"Benchmark (tools/benchmark_detectors.py), {s['height']} x {s['width']}, "
            f"{s['device']}, training batch {s['train_batch']}; same detections as "
            f"detectron2: {bench['raw']['times'].get('same_detections_as_detectron2')}",
            "",
            bench["table"],
        ]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "GPU_CHECK.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    if command == "env":
        return write_env(rest[0], rest[1])
    if command == "train":
        train(rest[0], rest[1], rest[2], int(rest[3]), rest[4:])
        return 0
    if command == "has-precision":
        return 0 if has_precision_key() else 1
    if command == "report":
        print(report(rest[0]))
        return 0
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
