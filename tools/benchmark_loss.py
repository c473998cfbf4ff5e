#!/usr/bin/env python
"""Focal loss forward+backward at the paper's scale: fvcore vs torchvision vs retinafocal.

Setting: N images of HxW (default 2 x 800x1333, padded to a multiple of 32), anchors on P3-P7
(strides 8..128) with 9 anchors per location, K = 80 classes, ~0.1% positive and ~1% ignored
anchors. fvcore and torchvision run the way detectron2's RetinaNet feeds them: gather the
non-ignored anchors, build a one-hot target, sum the elementwise loss. retinafocal runs its fused
label-based loss on the full (N, R, K) logits, eagerly and under torch.compile.

Each implementation's memory and first call are measured in a fresh subprocess of its own:
  * CPU: resident-set growth. After a warm-up call the worker records its RSS, resets the kernel's
    peak-RSS mark (``/proc/self/clear_refs``), runs one forward+backward and reads the new peak
    (``VmHWM``). Peak extra memory = peak - RSS before the call, i.e. everything the loss and its
    gradient allocate on top of the inputs.
  * CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
The first call of the compiled column includes compilation (with a cold inductor cache in a
temporary directory: what a fresh machine pays). Times come from one more subprocess that runs
every implementation round-robin, so load from other processes drifts over all columns alike.

Usage:
    python tools/benchmark_loss.py                    # CPU, 2 threads
    python tools/benchmark_loss.py --device cuda      # GPU (written for it, untested here)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

IMPLS = ("fvcore", "torchvision", "ours_eager", "ours_compiled")
TITLES = {
    "fvcore": "fvcore",
    "torchvision": "torchvision",
    "ours_eager": "ours (eager)",
    "ours_compiled": "ours (compiled)",
}
STRIDES = (8, 16, 32, 64, 128)
ANCHORS_PER_LOCATION = 9


def num_anchors(height: int, width: int) -> int:
    """Anchors per image on P3-P7 for an image padded to a multiple of 32 (detectron2's
    size_divisibility for FPN); deeper levels round up like the stride-2 convs that make them."""
    hp, wp = math.ceil(height / 32) * 32, math.ceil(width / 32) * 32
    return sum(math.ceil(hp / s) * math.ceil(wp / s) for s in STRIDES) * ANCHORS_PER_LOCATION


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and OpenMP)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--pos-frac", type=float, default=0.001)
    parser.add_argument("--ignore-frac", type=float, default=0.01)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up")
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--gamma", type=float, default=2.0)
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated columns")
    parser.add_argument("--worker", choices=IMPLS + ("timing",), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Worker: one implementation, one process.
# ------------------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_memory() -> None:
    import gc

    gc.collect()
    try:  # give malloc's free lists back, so the baseline RSS holds only live data
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _make_inputs(args, torch):
    gen = torch.Generator().manual_seed(0)
    n, k = args.images, args.classes
    r = num_anchors(args.height, args.width)
    # Logits near the paper's prior initialisation (sigmoid(-4.6) ~ 0.01), with spread.
    logits = torch.randn(n, r, k, generator=gen) - 4.6
    labels = torch.full((n, r), k, dtype=torch.long)
    total = n * r
    perm = torch.randperm(total, generator=gen)
    num_pos, num_ign = round(args.pos_frac * total), round(args.ignore_frac * total)
    flat = labels.view(-1)
    flat[perm[:num_pos]] = torch.randint(0, k, (num_pos,), generator=gen)
    flat[perm[num_pos : num_pos + num_ign]] = -1
    dtype = getattr(torch, args.dtype)
    logits = logits.to(device=args.device, dtype=dtype).requires_grad_()
    return logits, labels.to(args.device)


def _make_step(impl: str, args, torch):
    import torch.nn.functional as F

    alpha, gamma, k = args.alpha, args.gamma, args.classes

    if impl in ("fvcore", "torchvision"):
        if impl == "fvcore":
            from fvcore.nn import sigmoid_focal_loss as reference
        else:
            from torchvision.ops import sigmoid_focal_loss as reference

        def loss_fn(logits, labels):
            # detectron2's RetinaNet.losses(): gather valid anchors, one-hot without background.
            valid = labels >= 0
            target = F.one_hot(labels[valid], num_classes=k + 1)[:, :-1].to(logits.dtype)
            return reference(logits[valid], target, alpha=alpha, gamma=gamma, reduction="sum")

    else:
        import retinafocal  # noqa: F401
        from retinafocal.losses import label_focal_loss

        use_compile = impl == "ours_compiled"

        def loss_fn(logits, labels):
            return label_focal_loss(logits, labels, alpha, gamma, "sum", compile=use_compile)

    def step(logits, labels):
        loss = loss_fn(logits, labels)
        loss.backward()
        return loss

    return step


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    return torch, *_make_inputs(args, torch)


def run_memory_worker(args) -> dict:
    """One implementation alone: first call (compilation included), then the peak extra memory
    of one more forward+backward."""
    torch, logits, labels = _setup(args)
    step = _make_step(args.worker, args, torch)
    device = args.device

    t0 = time.perf_counter()
    loss = step(logits, labels)
    _sync(torch, device)
    first_call = time.perf_counter() - t0
    value = float(loss)
    logits.grad = None

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(logits, labels)
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - base
        memory_method = "cuda.max_memory_allocated"
    else:
        _release_free_memory()
        base = _rss_bytes("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            memory_method = "VmHWM after clear_refs"
        except OSError:
            memory_method = "ru_maxrss (lifetime peak, includes the warm-up)"
        step(logits, labels)
        peak_extra = _rss_bytes("VmHWM") - base
    return {
        "first_call_s": first_call,
        "peak_extra_bytes": peak_extra,
        "memory_method": memory_method,
        "loss": value,
    }


def run_timing_worker(args, impls) -> dict:
    """All implementations in one process, timed round-robin (rotating the order each round) so
    that load from other processes drifts over every column alike."""
    torch, logits, labels = _setup(args)
    device = args.device
    steps = {impl: _make_step(impl, args, torch) for impl in impls}
    for step in steps.values():  # warm-up, compilation included
        step(logits, labels)
        logits.grad = None
    times = {impl: [] for impl in impls}
    for rnd in range(args.repeats):
        order = impls[rnd % len(impls) :] + impls[: rnd % len(impls)]
        for impl in order:
            _sync(torch, device)
            t0 = time.perf_counter()
            steps[impl](logits, labels)
            _sync(torch, device)
            times[impl].append(time.perf_counter() - t0)
            logits.grad = None

    # What streaming the logits in and a same-sized gradient out costs on this device: one copy.
    src = logits.detach()
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch outside the timing
    copies = []
    for _ in range(max(3, args.repeats)):
        _sync(torch, device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(torch, device)
        copies.append(time.perf_counter() - t0)
    return {
        "median_s": {impl: statistics.median(t) for impl, t in times.items()},
        "stream_s": min(copies),
        "num_anchors": logits.shape[1],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_name": (torch.cuda.get_device_name() if device == "cuda" else _cpu_name()),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


# ------------------------------------------------------------------------------------------------
# Driver: one subprocess per implementation, then one table.
# ------------------------------------------------------------------------------------------------


def run_subprocess(worker: str, argv, args) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="retinafocal_inductor_") as cache:
        # Cold compile caches: the first call then shows what a fresh machine pays.
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
        env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", worker]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"benchmark worker {worker} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results: dict, args) -> str:
    impls = list(results)
    ref = results.get("fvcore")
    rows = [("", [TITLES[i] for i in impls])]

    def add(name, fn):
        rows.append((name, [fn(results[i]) for i in impls]))

    add("fwd+bwd median (ms)", lambda r: f"{r['median_s'] * 1e3:.1f}")
    if ref:
        add("time ratio to fvcore", lambda r: f"{r['median_s'] / ref['median_s']:.3f}")
        add("speed-up vs fvcore", lambda r: f"{ref['median_s'] / r['median_s']:.1f}x")
    add("peak extra memory (MB)", lambda r: f"{r['peak_extra_bytes'] / 2**20:.0f}")
    if ref:
        add(
            "memory ratio to fvcore",
            lambda r: f"{r['peak_extra_bytes'] / max(ref['peak_extra_bytes'], 1):.2f}",
        )
    add("time / stream time", lambda r: f"{r['median_s'] / r['stream_s']:.1f}")
    add("first call (s)", lambda r: f"{r['first_call_s']:.2f}")
    if ref:
        add("loss rel. diff to fvcore", lambda r: f"{abs(r['loss'] / ref['loss'] - 1):.1e}")

    widths = [max(len(row[0]) for row in rows)] + [
        max(len(row[1][j]) for row in rows) for j in range(len(impls))
    ]
    lines = []
    for idx, (name, cells) in enumerate(rows):
        line = "| " + name.ljust(widths[0]) + " | "
        line += " | ".join(c.rjust(w) for c, w in zip(cells, widths[1:])) + " |"
        lines.append(line)
        if idx == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - set(IMPLS)
    if unknown:
        raise SystemExit(f"--impls: unknown {sorted(unknown)}; choose from {IMPLS}")
    if args.worker == "timing":
        print(json.dumps(run_timing_worker(args, impls)))
        return
    if args.worker:
        print(json.dumps(run_memory_worker(args)))
        return
    results = {}
    for impl in impls:
        print(f"memory, first call: {TITLES[impl]} ...", file=sys.stderr, flush=True)
        results[impl] = run_subprocess(impl, argv, args)
    print("timing, all implementations round-robin ...", file=sys.stderr, flush=True)
    timing = run_subprocess("timing", argv, args)
    for impl in impls:
        results[impl]["median_s"] = timing["median_s"][impl]
        results[impl]["stream_s"] = timing["stream_s"]
    n, k = args.images, args.classes
    print(
        f"Focal loss forward+backward, {n} images of {args.height}x{args.width} -> "
        f"R = {timing['num_anchors']} anchors/image (P3-P7, 9 per location), K = {k}, "
        f"{args.dtype}, {args.pos_frac:.1%} positive, {args.ignore_frac:.0%} ignored anchors"
    )
    threads = f", {timing['threads']} threads" if args.device == "cpu" else ""
    memory_method = next(iter(results.values()))["memory_method"]
    print(
        f"device: {args.device} ({timing['device_name']}{threads}), torch {timing['torch']}; "
        f"time: median of {args.repeats} round-robin calls; memory: {memory_method}; "
        f"stream time = one copy of the logits: {timing['stream_s'] * 1e3:.1f} ms"
    )
    print(format_table(results, args))


if __name__ == "__main__":
    main()
