#!/usr/bin/env python
"""Side-by-side benchmark: retinafocal's ``FocalRetinaNet`` against detectron2's built-in
``RetinaNet`` and torchvision's ``retinanet_resnet50_fpn``, in one run.

    # CPU, 2 threads, 512 x 683 images, the realistic regime (finishes in minutes):
    python tools/benchmark_detectors.py --profile --output benchmark_cpu.json
    # ... all three regimes, and ours in bf16 (MODEL.RETINAFOCAL.PRECISION) as well:
    python tools/benchmark_detectors.py --regime all --precision fp32 bf16
    # GPU, the paper's 800 px and 600 px scales, fp32 / AMP / bf16 / compiled loss:
    python tools/benchmark_detectors.py --device cuda --output benchmark_gpu.json

Prints one table per image size and regime (a row per figure and precision variant, a ratio
column against each peer at the same precision), whether the issue's targets are met,
optionally torch.profiler's top operators, and writes everything to --output.

All three are ResNet-50-FPN RetinaNets with the paper's settings (P3-P7, 9 anchors, 4-conv
subnets of 256 channels, 80 classes, focal loss, IoU 0.4/0.5 matching, top-1000 candidates per
level above 0.05, NMS 0.5, 100 detections), randomly initialised (nothing is downloaded), fed the
same images at the same size and batch. Figures:

* training iteration: forward + backward + SGD step on a batch of ``train_batch`` images, as a
  trainer's ordinary iterations: the iteration count runs on, so that retinafocal's imbalance
  diagnostics run at their configured period (every 20 iterations: in the untimed iteration 0,
  and in 1 of 20 timed ones after it), as in real training;
* inference latency: one image (batch 1), post-processing included;
* throughput: images per second at batch ``throughput_batch``;
* peak memory (float32, the first regime): the high-water mark of the resident set (CPU) or
  ``max_memory_allocated`` (CUDA) of a fresh subprocess that builds one model and runs one
  phase, so peaks never mix.

Timings run in this process with the three models interleaved round by round (the starting
model rotates), so that load from other processes hits all three alike; the median of the
measured rounds after warm-up is reported. Each (regime, precision) run starts from the same
weights with a fresh optimiser. A detector that fails in one run is reported as failed there,
with its error under the table, and the rest run on.

Precision variants (``--precision``): "fp32"; "amp" (CUDA): every detector under fp16 autocast
with a gradient scaler, as detectron2's AMPTrainer (SOLVER.AMP.ENABLED), ours with
MODEL.RETINAFOCAL.PRECISION fp16 inside it; "bf16": the peers under bf16 autocast, ours with
MODEL.RETINAFOCAL.PRECISION bf16; "compiled-loss": float32, ours with
MODEL.RETINAFOCAL.LOSS.COMPILE (its first, warm-up, step holds the compile time).

Making random weights behave like trained ones, identically for all three:

* The ResNets use frozen BatchNorm as when fine-tuning from ImageNet (torchvision's builder
  only does so when given weights: its BatchNorm layers are replaced by ``FrozenBatchNorm2d``
  and its stem and first stage frozen, which is what it does with pretrained weights). With
  identity statistics a random ResNet-50's activations grow block after block (features around
  1e4, saturated logits); each frozen BN's statistics are therefore set to those of its input on
  the first training batch (one forward pass, in network order), as a pretrained network's are.
* The head's last convs are set per regime (``--regime``, ``benchmark_regimes.py``):
  "realistic" (the default and headline: logits and deltas spread as a trained model's, no
  saturation, and about 600 candidates above the score threshold per image, what a trained
  model gives at COCO scale), "all-candidates" (the class bias at logit(0.05): about half of
  all pairs pass, every level fills its top-1000) and "prior" (the paper's initial bias: almost
  no candidate). Training and inference both run with them.
* Training uses the paper's SGD (momentum 0.9, weight decay 1e-4) at the first learning rate of
  its warm-up, 0.01 x 0.001: a step costs the same at any rate, and random weights stay finite.
* retinafocal's model gets detectron2's weights (the parameter names are equal), so the two
  must give the same detections in float32; the benchmark checks it.
* torchvision resizes inside the model. Its size limits are set to the benchmark size, so
  that resize is by a factor of 1 and leaves the image as it is; torchvision's figures include
  the cost of that (an interpolation per image), as they would in use. detectron2's models
  leave resizing to the data loader.

This script runs the benchmark and prints it; its parts are ``benchmark_setup.py`` (settings and
images), ``benchmark_models.py`` (the detectors), ``benchmark_regimes.py`` (the regimes),
``benchmark_measure.py`` (time, memory, profiles) and ``benchmark_report.py`` (figures, targets,
tables).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
from benchmark_measure import (
    describe_error,
    measure_memory,
    measure_times,
    memory_worker,
    profile_detectors,
)
from benchmark_models import build_detector, prepare, set_regime
from benchmark_report import check_targets, environment, format_table, ratio, summarize
from benchmark_setup import (
    DETECTORS,
    OURS_VARIANTS,
    PRECISIONS,
    REGIMES,
    BenchmarkSettings,
    make_samples,
)


def run_benchmark(settings: BenchmarkSettings, profile: bool = False,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The whole benchmark; returns the json-ready result: settings, environment, raw times
    (per regime and precision) and memory; per regime the class outputs' statistics, figures,
    ratios and table; the headline's (first regime, first precision) figures, ratios and target
    checks; the tables; optional profiles."""
    torch.set_num_threads(settings.threads)
    num_images = max(settings.train_batch, settings.throughput_batch)
    samples = make_samples(settings, num_images, settings.seed)
    log(f"building {', '.join(settings.detectors)} ({settings.height}x{settings.width}, "
        f"{settings.device}, {settings.threads} threads)")
    detectors = {name: build_detector(name, settings) for name in settings.detectors}
    prepared = prepare(detectors, settings, samples)
    runs: Dict[str, Dict[str, Any]] = {}
    profiles: Dict[str, str] = {}
    for regime in settings.regimes:
        runs[regime] = {}
        for precision in settings.precisions:
            log(f"timing: {regime} regime, {precision} (interleaved rounds)")
            try:
                set_regime(detectors, prepared, regime)
                runs[regime][precision] = measure_times(detectors, settings, samples, precision)
                if profile and not profiles:
                    profiles = profile_detectors(detectors, settings, samples)
            except Exception as e:  # noqa: BLE001  (reported; the other runs go on)
                error = describe_error(e)
                runs[regime][precision] = {"errors": {d: error for d in settings.detectors}}
            if settings.device.startswith("cuda"):
                torch.cuda.empty_cache()
    del detectors
    raw: Dict[str, Any] = {"runs": runs}
    if settings.memory:
        # Round-robin over the detectors, so that a slow drift of the machine hits all alike.
        raw["memory"] = {name: {"train": [], "inference": []} for name in settings.detectors}
        for repeat in range(settings.memory_repeats):
            for name in settings.detectors:
                log(f"peak memory of {name} (fresh subprocesses, round {repeat + 1} of "
                    f"{settings.memory_repeats})")
                for phase in ("train", "inference"):
                    raw["memory"][name][phase].append(measure_memory(name, phase, settings))
    headline_regime, headline_precision = settings.regimes[0], settings.precisions[0]
    raw["times"] = runs[headline_regime][headline_precision]
    per_regime: Dict[str, Any] = {}
    for regime, by_precision in runs.items():
        figures = {
            precision: summarize(times, raw.get("memory") if (
                regime == headline_regime and precision == "fp32") else None, settings)
            for precision, times in by_precision.items()
        }  # fmt: skip
        errors = {p: t["errors"] for p, t in by_precision.items() if t.get("errors")}
        statistics = {name: prepared[name]["statistics"][regime] for name in prepared}
        per_regime[regime] = {
            "statistics": statistics,
            "figures": figures,
            "ratios": _ratios(figures, settings),
            "errors": errors,
            "table": format_table(figures, settings, errors),
        }
    headline = per_regime[headline_regime]
    result = {
        "settings": asdict(settings),
        "environment": environment(),
        "raw": raw,
        "regimes": per_regime,
        "figures": headline["figures"][headline_precision],
        "ratios": headline["ratios"][headline_precision],
        "targets": check_targets(headline["figures"]) if "retinafocal" in settings.detectors
        else [],
        "table": "\n\n".join(_regime_heading(r, per_regime[r]) + "\n\n" + per_regime[r]["table"]
                             for r in per_regime),
    }
    if profiles:
        result["profiles"] = profiles
    return result


def _ratios(figures: Dict[str, Dict[str, Dict[str, float]]], settings: BenchmarkSettings
            ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{precision: {"ours/peer": {figure: ratio}}}, each peer at the same precision."""
    if "retinafocal" not in settings.detectors:
        return {p: {} for p in figures}
    return {
        precision: {
            f"ours/{peer}": {fig: ratio(figs, fig, peer) for fig in figs
                             if fig != "detections_per_image"}
            for peer in settings.detectors if peer != "retinafocal"
        }
        for precision, figs in figures.items()
    }  # fmt: skip


def _regime_heading(regime: str, result: Dict[str, Any]) -> str:
    """The regime's name and what it gives: candidates above the score threshold per image."""
    counts = ", ".join(
        f"{name} {s['candidates_per_image']:.0f} ({s['candidates_min']:.0f}-"
        f"{s['candidates_max']:.0f})" for name, s in result["statistics"].items()
        if name != "retinafocal"
    )  # fmt: skip
    return f"Regime: {regime}; candidates above the score threshold per image, median (range): " \
        f"{counts or '-'}"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="retinafocal vs detectron2's RetinaNet vs torchvision's RetinaNet "
        "(R50-FPN, random init), side by side in one run."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="image size; repeat for several runs (default: 512 683 on CPU, "
                        "800 1067 and 600 800 on CUDA, the paper's scales at a 4:3 aspect)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--throughput-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, nargs=3, metavar=("TRAIN", "LATENCY", "THROUGHPUT"),
                        help="measured rounds (default 4 8 2 on CPU, 20 50 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up rounds of every phase (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--regime", nargs="+", default=["realistic"],
                        choices=list(REGIMES) + ["all"],
                        help="regimes of the head's outputs, one table each; the first is the "
                        "headline, where memory is measured (default realistic; all: all three)")
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS) + ["all"],
                        help="precision variants, rows of each table (default: fp32 on CPU, "
                        "all four on CUDA; amp needs CUDA)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh processes per detector and phase; the median is reported")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators per detector")
    parser.add_argument("--ours-opts", nargs="*", default=[],
                        help="yacs overrides for retinafocal only (KEY VALUE ...)")
    parser.add_argument("--ours-variants", nargs="*", default=[], choices=OURS_VARIANTS,
                        help="candidate optimisations applied to retinafocal only")
    parser.add_argument("--output", default="benchmark_detectors.json",
                        help="json file for the results (default benchmark_detectors.json)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("DETECTOR", "PHASE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace) -> List[BenchmarkSettings]:
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    sizes = args.size or ([(800, 1067), (600, 800)] if cuda else [(512, 683)])
    iters = tuple(args.iters or ((20, 50, 10) if cuda else (4, 8, 2)))
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    regimes = REGIMES if "all" in args.regime else tuple(dict.fromkeys(args.regime))
    precisions = args.precision or (["all"] if cuda else ["fp32"])
    precisions = PRECISIONS if "all" in precisions else tuple(dict.fromkeys(precisions))
    return [
        BenchmarkSettings(
            device=args.device, threads=args.threads, height=h, width=w,
            train_batch=args.train_batch, throughput_batch=args.throughput_batch,
            warmup=warmup, iters=iters,
            regimes=regimes, precisions=precisions, detectors=tuple(args.detectors),
            ours_opts=tuple(args.ours_opts), ours_variants=tuple(args.ours_variants),
            memory=not args.no_memory, memory_repeats=args.memory_repeats,
        )
        for h, w in sizes
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.memory_worker:
        settings = BenchmarkSettings(**json.loads(args.settings_json))
        print(json.dumps(memory_worker(*args.memory_worker, settings)))
        return 0
    results = []
    for settings in settings_from_args(args):
        result = run_benchmark(settings, profile=args.profile,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
        results.append(result)
        print(f"\n{settings.height}x{settings.width}, {settings.device}, "
              f"{settings.threads} threads, training batch {settings.train_batch}:\n")
        print(result["table"])
        print("\nsame detections as detectron2 (float32):",
              result["raw"]["times"].get("same_detections_as_detectron2"))
        for check in result["targets"]:
            state = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
            print(f"  target ours ({check['precision']}) / {check['peer']} (fp32) "
                  f"{check['figure']} {'<=' if check['limit'] < 1 else '<'} {check['limit']}: "
                  f"{check['ratio']:.2f}x {state}")
        for title, table in result.get("profiles", {}).items():
            print(f"\n--- profile: {title}\n{table}")
        # After every size, so that a run stopped by a time limit keeps the sizes it finished.
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)
        print(f"\nresults written to {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
