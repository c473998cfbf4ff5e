#!/usr/bin/env python
"""Does ``torch.compile`` pay for inference on this machine? Eager against compiled (inductor,
with weight freezing) backbone + head, for retinafocal and detectron2 alike.

The detectors and the realistic regime are those of ``benchmark_detectors.py`` (R50-FPN, the
same calibrated weights for both, scores spread like a trained model's). ``model.backbone`` and
``model.head`` are compiled in place of the eager modules; the rest (anchors, decoding, NMS)
stays eager. Latency of batch 1, the four variants interleaved round by round, median. The
compile time is the first compiled call on a cold inductor cache (a fresh temporary directory):
what a fresh machine pays once per input size. Usage::

    python tools/benchmark_compile.py --size 384 512 --iters 8
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from typing import Dict, Iterator

import torch
import torch._inductor.config as inductor_config

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers our model)
from benchmark_measure import same_detections, time_interleaved
from benchmark_models import Detector, build_detector, prepare, set_regime
from benchmark_setup import BenchmarkSettings, make_samples
from markdown_table import markdown_table

COMPILED_PARTS = ("backbone", "head")


class CompiledParts:
    """A detector's backbone and head, eager or compiled, swapped in by :meth:`active`."""

    def __init__(self, det: Detector):
        self.model = det.model
        self.eager = {part: getattr(self.model, part) for part in COMPILED_PARTS}
        self.compiled = {part: torch.compile(m) for part, m in self.eager.items()}

    @contextlib.contextmanager
    def active(self, compiled: bool) -> Iterator[None]:
        chosen = self.compiled if compiled else self.eager
        for part, module in chosen.items():
            setattr(self.model, part, module)
        try:
            yield
        finally:
            for part, module in self.eager.items():
                setattr(self.model, part, module)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", nargs=2, type=int, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=8, help="timed rounds (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retinafocal_inductor_") as cache:
        # Cold compile caches (inductor reads the variable at each use): what a fresh machine pays.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        run(args)


def run(args: argparse.Namespace) -> None:
    inductor_config.freezing = True  # weights as constants: prepacked convs, folded ops
    settings = BenchmarkSettings(height=args.size[0], width=args.size[1], threads=args.threads,
                                 detectors=("retinafocal", "detectron2"), regimes=("realistic",),
                                 memory=False)  # fmt: skip
    torch.set_num_threads(settings.threads)
    samples = make_samples(settings, 2, settings.seed)
    print(f"building the detectors ({args.size[0]}x{args.size[1]}, {args.threads} threads)")
    detectors = {name: build_detector(name, settings) for name in settings.detectors}
    set_regime(detectors, prepare(detectors, settings, samples), "realistic")
    inputs = {name: det.inference_inputs(samples[:1]) for name, det in detectors.items()}
    parts = {name: CompiledParts(det) for name, det in detectors.items()}
    compile_s: Dict[str, float] = {}
    same: Dict[str, bool] = {}
    for name, det in detectors.items():
        eager = det.infer(inputs[name])[0]
        print(f"compiling {name}'s backbone and head (cold cache) ...", flush=True)
        with parts[name].active(True):
            start = time.perf_counter()
            compiled = det.infer(inputs[name])[0]
            compile_s[name] = time.perf_counter() - start
        same[name] = same_detections(eager, compiled)

    def task(name: str, compiled: bool):
        def run(_round: int) -> None:
            with parts[name].active(compiled):
                detectors[name].infer(inputs[name])
        return run

    tasks = {(name, compiled): task(name, compiled)
             for name in detectors for compiled in (False, True)}  # fmt: skip
    print(f"timing {len(tasks)} variants, {args.iters} interleaved rounds ...", flush=True)
    wall = time_interleaved(tasks, warmup=1, iters=args.iters)["wall"]
    ms = {key: statistics.median(t) * 1e3 for key, t in wall.items()}
    base = ms[("detectron2", False)]
    rows = [[f"{name} {'compiled' if compiled else 'eager'}", f"{ms[(name, compiled)]:.0f}",
             f"{ms[(name, compiled)] / ms[(name, False)]:.2f}x",
             f"{ms[(name, compiled)] / base:.2f}x",
             f"{compile_s[name]:.1f}" if compiled else "-",
             ("yes" if same[name] else "NO") if compiled else "-"]
            for name, compiled in tasks]  # fmt: skip
    print(f"\nInference latency, batch 1, {args.size[0]}x{args.size[1]}, {args.threads} threads, "
          f"realistic regime, median of {args.iters} interleaved rounds; torch {torch.__version__}"
          f", inductor freezing on:\n")
    print(markdown_table(["variant", "latency (ms)", "vs own eager", "vs detectron2 eager",
                          "compile (s, cold)", "same detections as eager"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
