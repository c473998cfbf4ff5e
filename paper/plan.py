"""``python -m paper --plan``: the runs of a grid, their commands, and how long they will take.

The estimate is a cost model per run, with figures measured on this project's 2-core machine:

    training run          = start-up + iterations x s/iter(classes) + 2 x val images x s/image
    evaluation-only run   = start-up + val images x s/image

(a training run is evaluated at 75% of its schedule and at the end, for the convergence rule).
The figures are for idle cores; other jobs on the machine make every run slower.
"""
from __future__ import annotations

import math
import os
import shlex
from typing import List, Set

from retinafocal.data.shapes import DEFAULT_SPLITS

from .grid import Grid, RunSpec
from .runner import LaunchOptions
from .sweep import SWEEP_VAL_IMAGES

__all__ = [
    "PLAN_S_PER_ITER",
    "PLAN_S_PER_ITER_PER_CLASS",
    "PLAN_START_S",
    "PLAN_S_PER_EVAL_IMAGE",
    "PLAN_FIXED_S",
    "run_seconds",
    "estimate_seconds",
    "plan_text",
]

#: s/iter of the embedded recipe (5 classes, batch 16, 128 px): the 250-iteration runs of the
#: 2026-11-29 `make paper` took 0.33-0.37 s/iter on idle cores (reports/paper/REPORT.md at commit
#: 05c7c70; OHEM at batch 512 0.49), rounded up.
PLAN_S_PER_ITER = 0.4
#: The recipe's classes, which PLAN_S_PER_ITER was measured with.
PLAN_BASE_CLASSES = 5
#: Extra s/iter per class beyond PLAN_BASE_CLASSES: the classification conv's A x K outputs and
#: the loss's K terms per anchor. Measured by alternating training steps of the sweep's FL runs
#: with the Table 1 FL run in one process and comparing CPU time (1 thread; the machine was busy,
#: so only the ratio is meaningful): 80 classes 1.45-1.49x, 20 classes 1.0x, 5 classes 0.94x
#: the Table 1 run. 1.5 x 0.4 = 0.6 s/iter at 80 classes = 0.4 + 75 x 0.0027.
PLAN_S_PER_ITER_PER_CLASS = 0.0027
#: Start-up of a run: imports, model, data loader, dataset registration.
PLAN_START_S = 10.0
#: Per evaluated image: inference at batch 1 (about 20 ms of pure compute for the 128 px model,
#: Table 1e of the 2026-11-29 report), data loading, and the COCO evaluation (about 6 s for 500
#: images at 80 classes). 10 s + 2 x 200 x 0.03 s = 22 s per Table 1 run, where 20 s had been
#: measured; 10 s + 200 x 0.03 s = 16 s per evaluation-only run (15 s measured).
PLAN_S_PER_EVAL_IMAGE = 0.03
#: Outside the runs: generating the sweep's 2,500 images (about 15 s), measuring each grid's
#: imbalance (about 5 s a grid) and Figure 4's loss analysis (about 1 min).
PLAN_FIXED_S = 120.0
#: Validation images of the embedded shapes set, which the Table 1 runs evaluate on.
_SHAPES_VAL_IMAGES = DEFAULT_SPLITS["val"][0]


def _num_classes(spec: RunSpec) -> int:
    opts = dict(zip(spec.opts[::2], spec.opts[1::2]))
    return int(opts.get("MODEL.RETINANET.NUM_CLASSES", PLAN_BASE_CLASSES))


def run_seconds(spec: RunSpec, val_images: int) -> float:
    """Estimated wall time of one run on 2 idle cores.

    Args:
        spec: the run; its ``max_iter`` and its ``MODEL.RETINANET.NUM_CLASSES`` override (the
            recipe's 5 without one) set the training time.
        val_images: images of its validation set.
    """
    if spec.eval_only:
        return PLAN_START_S + val_images * PLAN_S_PER_EVAL_IMAGE
    extra_classes = max(0, _num_classes(spec) - PLAN_BASE_CLASSES)
    s_per_iter = PLAN_S_PER_ITER + extra_classes * PLAN_S_PER_ITER_PER_CLASS
    return PLAN_START_S + spec.max_iter * s_per_iter + 2 * val_images * PLAN_S_PER_EVAL_IMAGE


def _sweep_runs(grid: Grid) -> Set[str]:
    return {row.run for row in grid.rows_of("sweep")}


def estimate_seconds(grid: Grid) -> float:
    """Estimated wall time of a shapes grid on 2 idle cores, from nothing run to the report:
    every run, one after the other, plus :data:`PLAN_FIXED_S`."""
    sweep = _sweep_runs(grid)
    total = PLAN_FIXED_S
    for spec in grid.runs:
        total += run_seconds(spec, SWEEP_VAL_IMAGES if spec.name in sweep else _SHAPES_VAL_IMAGES)
    return total


def plan_text(grid: Grid, launch: LaunchOptions) -> str:
    """Each run's description and command, then the counts and the time estimate."""
    lines: List[str] = []
    for spec in grid.runs:
        weights = f"<runs>/{spec.eval_of}/model_final.pth" if spec.eval_only else None
        cmd = launch.command(spec, os.path.join("<output>", "runs", spec.name), weights)
        lines.append(f"{spec.name}: {spec.description}\n    {shlex.join(cmd)}")
    if grid.name == "coco":
        lines.append(f"\n{len(grid.runs)} runs, each the 1x schedule of its COCO config on "
                     "the GPUs given (--num-gpus x --num-machines).")  # fmt: skip
        return "\n".join(lines)
    num_train = sum(not s.eval_only for s in grid.runs)
    num_sweep = len(_sweep_runs(grid))
    lines.append(
        f"\n{len(grid.runs)} runs ({num_train} training, of which {num_sweep} in the imbalance "
        f"sweep; {len(grid.runs) - num_train} evaluation-only). Estimate on 2 idle CPU cores: "
        f"{math.ceil(estimate_seconds(grid) / 60)} min ({PLAN_S_PER_ITER} s/iter at "
        f"{PLAN_BASE_CLASSES} classes + {PLAN_S_PER_ITER_PER_CLASS} s/iter per further class, "
        f"{PLAN_START_S:.0f} s start-up per run, {PLAN_S_PER_EVAL_IMAGE} s per evaluated image, "
        f"{PLAN_FIXED_S / 60:.0f} min for the datasets, the imbalance and Figure 4; "
        "paper/plan.py says where each figure comes from)."
    )
    return "\n".join(lines)
