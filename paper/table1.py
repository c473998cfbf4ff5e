"""The grids of the paper's Table 1 (and Sec. 5.1): which runs reproduce which rows.

* ``shapes`` (``make paper``): a miniature on the embedded shapes dataset, sized to finish within
  an hour on 2 CPU cores (see :data:`SHAPES_SCHEDULE` for the arithmetic), with a justified
  subset of each table's rows; ``shapes-full`` has every row of Table 1 at the same schedule.
* ``coco``: every row of Table 1 at full size, with the COCO configs of ``configs/COCO``, for a
  GPU cluster.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Tuple

from .claims import CONVERGENCE_POINT
from .grid import (
    NO_PRIOR_OPTS,
    Grid,
    GridBuilder,
    Level,
    anchor_opts,
    ce_opts,
    fl_opts,
    ohem_opts,
    run_name,
)
from .references import TABLE_1A, TABLE_1B, TABLE_1C, TABLE_1D, TABLE_1E
from .sweep import (
    BUDGET_SWEEP_CLASSES,
    EXTRA_GAMMAS,
    SWEEP_CLASSES,
    SWEEP_MAX_ITER,
    add_sweep,
    prepare_sweep_data,
    sweep_schedule,
)

__all__ = [
    "GRID_NAMES",
    "SHAPES_MAX_ITER",
    "SHAPES_SCHEDULE",
    "build_grid",
    "coco_grid",
    "shapes_grid",
]

GRID_NAMES: Tuple[str, ...] = ("shapes", "shapes-full", "coco")


# --------------------------------------------------------------------------- shapes (miniature)
EMBEDDED_CONFIG = os.path.join("configs", "Embedded", "retinanet_R18_FPN_shapes.yaml")

#: Iterations per run of the ``shapes`` grid. The arithmetic is in :data:`SHAPES_SCHEDULE`.
SHAPES_MAX_ITER = 250

#: How the miniature's length was chosen (figures measured on this project's 2-core machine).
SHAPES_SCHEDULE = (
    "Every training run uses the embedded recipe (`configs/Embedded/retinanet_R18_FPN_shapes.yaml`:"
    " ResNet-18-FPN from scratch, {size} px, batch 16, SGD lr 0.02 with warm-up and cosine decay) "
    "with `FocalRetinaNet` and a shorter schedule: {max_iter} iterations instead of the recipe's "
    "{recipe_iter}, warm-up {warmup} iterations (the recipe's share), seed {seed} for every run. "
    "A run takes about 0.34 s/iteration on idle cores (0.8 s/iteration was measured while other "
    "jobs shared them), plus about 20 s for start-up and two COCO evaluations of the 200 "
    "validation images. `make paper` has 75 minutes on 2 CPU cores for {num_train} training runs "
    "(the imbalance sweep's included), {num_eval} evaluation-only runs (Table 1e) and Figure 4, "
    "so the tables below keep the rows that their claims compare and say which were cut; "
    "`python -m paper --plan` lists the runs and estimates the time."
)


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class _Recipe:
    """What the grid needs to know of the config its runs override, read from that file so the
    grid cannot drift from it.

    Attributes:
        base_sizes: the smallest anchor size of each head level, e.g. (12, 24, 48).
        train_size: the (shortest-side) training size in pixels.
        max_iter, warmup_iters: the recipe's schedule.
        anchors_per_image: anchors summed over the head levels, at train_size.
        num_classes: K.
    """

    base_sizes: Tuple[float, ...]
    train_size: int
    max_iter: int
    warmup_iters: int
    anchors_per_image: int
    num_classes: int


def _read_recipe(config_file: str) -> _Recipe:
    from detectron2.config import get_cfg

    from retinafocal.config import add_retinafocal_config
    from retinafocal.config_overrides import merge_yacs_file

    path = config_file if os.path.isabs(config_file) else os.path.join(_REPO_ROOT, config_file)
    cfg = get_cfg()
    add_retinafocal_config(cfg)
    merge_yacs_file(cfg, path)
    levels = cfg.MODEL.RETINANET.IN_FEATURES
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    if len(sizes) != len(levels):
        raise ValueError(f"{path}: MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} levels but "
                         f"MODEL.RETINANET.IN_FEATURES has {len(levels)} ({levels})")
    size = int(cfg.INPUT.MIN_SIZE_TRAIN[0])
    # "p<k>" has stride 2^k; a size x size image gives ceil(size / stride)^2 positions there.
    strides = [2 ** int(name.lstrip("p")) for name in levels]
    per_location = len(sizes[0]) * len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])
    return _Recipe(
        base_sizes=tuple(float(level[0]) for level in sizes),
        train_size=size,
        max_iter=int(cfg.SOLVER.MAX_ITER),
        warmup_iters=int(cfg.SOLVER.WARMUP_ITERS),
        anchors_per_image=per_location * sum(math.ceil(size / s) ** 2 for s in strides),
        num_classes=int(cfg.MODEL.RETINANET.NUM_CLASSES),
    )


def _init_rows(b: GridBuilder, no_prior: str, ce_prior: str, fl: str) -> None:
    """The rows of Sec. 5.1: CE without and with the prior init (alpha .5), and FL."""
    b.row("init", no_prior, "CE, no prior init (bias 0: pi = 0.5)", {"prior": 0.5, "loss": "CE"},
          None, "diverges (Sec. 5.1)")  # fmt: skip
    b.row("init", ce_prior, "CE, prior init pi = 0.01", {"prior": 0.01, "loss": "CE"},
          TABLE_1A[0.5], "trains: 30.2 AP (1a, alpha .5)")  # fmt: skip
    b.row("init", fl, "FL (gamma 2, alpha .25), prior init pi = 0.01",
          {"prior": 0.01, "loss": "FL"}, TABLE_1B[2.0][1], "trains (1b, gamma 2)")  # fmt: skip


def shapes_grid(*, max_iter: int = SHAPES_MAX_ITER, full: bool = False, seed: int = 0,
                config_file: str = EMBEDDED_CONFIG,
                sweep_max_iter: int = SWEEP_MAX_ITER) -> Grid:  # fmt: skip
    """The miniature of Table 1 on the embedded shapes dataset, and the imbalance sweep
    (:mod:`paper.sweep`).

    Args:
        max_iter: training iterations of every Table 1 run.
        full: every row of Table 1 (``shapes-full``) instead of the justified subset.
        seed: ``SEED`` of every run.
        config_file: the embedded recipe the runs override.
        sweep_max_iter: training iterations of every sweep run; 0 leaves the sweep out.
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    recipe = _read_recipe(config_file)
    warmup = max(1, round(max_iter * recipe.warmup_iters / recipe.max_iter))
    base = (
        "MODEL.META_ARCHITECTURE", "FocalRetinaNet",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.WARMUP_ITERS", str(warmup),
        # Only the final checkpoint: a run is short, and a period of max_iter would write
        # model_<max_iter - 1>.pth next to model_final.pth, the same weights twice.
        "SOLVER.CHECKPOINT_PERIOD", str(max_iter + 1),
        # Also evaluated at 75% of the schedule, for the convergence rule (paper/claims.py).
        "TEST.EVAL_PERIOD", str(max(1, round(CONVERGENCE_POINT * max_iter))),
    )  # fmt: skip
    b = GridBuilder(base, seed, max_iter)
    # The sweep's runs first: they decide the central claims in the paper's regime.
    extra_gammas = EXTRA_GAMMAS if full else {}
    sweep_classes = SWEEP_CLASSES if full else BUDGET_SWEEP_CLASSES
    sweep_levels = (add_sweep(b, config_file, max_iter=sweep_max_iter, extra_gammas=extra_gammas,
                              alpha_grids_everywhere=full, classes=sweep_classes)
                    if sweep_max_iter > 0 else [])  # fmt: skip
    cfg = config_file
    anchors = recipe.base_sizes
    train_size = recipe.train_size
    anchors_per_image = recipe.anchors_per_image

    def fl(alpha: float, gamma: float) -> str:
        return b.train(run_name("fl", g=gamma, a=alpha), cfg, fl_opts(alpha, gamma),
                       f"focal loss, gamma {gamma:g}, alpha {alpha:g}")  # fmt: skip

    def ce(alpha: float) -> str:
        return b.train(run_name("ce", a=alpha), cfg, ce_opts(alpha),
                       f"alpha-balanced CE, alpha {alpha:g}")  # fmt: skip

    default_fl = fl(0.25, 2.0)

    # Sec. 5.1: CE with and without the prior, and FL. alpha = .5 weighs both classes equally:
    # standard CE scaled by 1/2, which is also the paper's CE-with-prior number (1a, alpha .5).
    no_prior = b.train("ce_a0p5_noprior", cfg, ce_opts(0.5) + NO_PRIOR_OPTS,
                       "alpha-balanced CE, alpha 0.5, no prior (last class bias 0, pi = 0.5)")
    _init_rows(b, no_prior, ce(0.5), default_fl)

    # make paper keeps the unweighted point (.5, also Sec. 5.1's CE with the prior) and the
    # paper's best (.75, the best CE in the last 250-iteration run too); .25 and .99 (2.3 and
    # 12.5 AP there, the paper's drop at both ends) were cut for the sweep's time.
    alphas_1a = sorted(TABLE_1A) if full else [0.5, 0.75]
    for a in alphas_1a:
        b.row("1a", ce(a), f"alpha = {a:g}", {"alpha": a, "gamma": 0.0}, TABLE_1A[a])

    # 1b: gamma = 0 is Table 1a (its best alpha is picked from the 1a runs).
    for a in alphas_1a:
        paper_alpha, paper = TABLE_1B[0.0]
        b.row("1b", ce(a), f"gamma = 0, alpha = {a:g}", {"gamma": 0.0, "alpha": a}, paper,
              f"alpha = {paper_alpha:g}")  # fmt: skip
    if full:
        gamma_alphas = {g: [0.25, 0.5, 0.75] for g in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)}
    else:
        # Only the FL run the other tables share: the gamma sweep (.5, 1, 5) and alpha .5 at
        # gamma 2 were cut for the imbalance sweep, which decides the gamma-2 claim.
        gamma_alphas = {2.0: [0.25]}
    for g, alphas in gamma_alphas.items():
        paper_alpha, paper = TABLE_1B[g]
        for a in alphas:
            b.row("1b", fl(a, g), f"gamma = {g:g}, alpha = {a:g}", {"gamma": g, "alpha": a},
                  paper, f"alpha = {paper_alpha:g}")  # fmt: skip

    # make paper: only the recipe's 9 anchors (the FL run the other tables share); the 1-anchor
    # run of the claim was cut for the 75-minute budget (see the 1c note).
    anchor_settings = sorted(TABLE_1C) if full else [(3, 3)]
    for scales, ratios in anchor_settings:
        if (scales, ratios) == (3, 3):
            name = default_fl  # the recipe's own anchors
        else:
            name = b.train(run_name("fl_anchors", s=scales, r=ratios), cfg,
                           fl_opts(0.25, 2.0) + anchor_opts(anchors, scales, ratios),
                           f"focal loss, {scales} scale(s) x {ratios} aspect ratio(s)")  # fmt: skip
        b.row("1c", name, f"{scales} scale(s) x {ratios} ratio(s) = {scales * ratios} anchors",
              {"scales": scales, "ratios": ratios}, TABLE_1C[(scales, ratios)])  # fmt: skip

    # make paper: no OHEM run (cut for the 75-minute budget, see the 1d note); FL's row stays.
    ohem_settings = [k for k in TABLE_1D if k[0] != "FL"] if full else []
    for method, batch, nms in ohem_settings:
        ratio = 3.0 if method == "OHEM 1:3" else 0.0
        name = b.train(run_name("ohem", b=batch, r=ratio, n=nms), cfg, ohem_opts(batch, ratio, nms),
                       f"{method}, batch {batch} per image, NMS {nms:g}")  # fmt: skip
        b.row("1d", name, f"{method}, batch {batch}, NMS {nms:g}",
              {"method": method, "batch": batch, "nms": nms}, TABLE_1D[(method, batch, nms)])
    b.row("1d", default_fl, "FL (gamma 2, alpha .25)", {"method": "FL"},
          TABLE_1D[("FL", None, None)])

    # 1e: the paper trains and tests at 400..800 px; we test the 128 px model at the same
    # fractions of its training size (0.5 .. 1.0).
    # The training size is the FL run's own final evaluation.
    for paper_size in sorted(TABLE_1E):
        size = int(round(train_size * paper_size / 800))
        name = default_fl if size == train_size else b.evaluate(
            f"{default_fl}_test{size}", default_fl,
            ("INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", str(size)),
            f"the FL model evaluated at {size} px")  # fmt: skip
        b.row("1e", name, f"test {size} px (x{size / train_size:.3g} of training)",
              {"size": size}, TABLE_1E[paper_size], f"{paper_size} px")  # fmt: skip

    runs = b.ordered_runs()
    num_train = sum(not r.eval_only for r in runs)
    schedule = SHAPES_SCHEDULE.format(
        max_iter=max_iter, warmup=warmup, seed=seed, num_train=num_train,
        num_eval=len(runs) - num_train, size=train_size, recipe_iter=recipe.max_iter,
    )  # fmt: skip
    levels = ", ".join(f"{a:g}" for a in anchors)
    notes = {
        "init": (
            "Three runs with the same recipe: alpha-balanced CE at alpha = .5 (standard CE up to "
            "a factor 1/2) with the last classification bias at 0 (pi = 0.5, no prior) and with "
            "the prior pi = 0.01, and the focal loss. A run *diverges* when a loss becomes NaN or "
            "infinite (training stops there) or a logged loss exceeds 10x the first logged one. "
            f"Imbalance is milder here than on COCO: {anchors_per_image} anchors x "
            f"{recipe.num_classes} classes per image versus about 100k x 80 (paper, Sec. 1), about "
            f"{round(100_000 * 80 / (anchors_per_image * recipe.num_classes), -1):.0f}x fewer "
            "binary terms, so "
            "at pi = 0.5 the summed initial loss per positive anchor is that much smaller here."
        ),
        "1a": (
            "alpha in {" + ", ".join(f"{a:g}" for a in alphas_1a) + "}"
            + ("" if full else ": the paper's best (.75) and the unweighted point (.5), which is "
               "also Sec. 5.1's CE with the prior. The ends where the paper's AP drops (.25 and "
               ".99: 2.3 and 12.5 AP in the last 250-iteration run, below .5 and .75 as in the "
               "paper) were cut to make room for the imbalance sweep; they, .1, .9 and .999 are "
               "in `shapes-full`.")
        ),  # fmt: skip
        "1b": (
            "For each gamma the best alpha among those tried (bold); gamma = 0 takes the best "
            "alpha of Table 1a. "
            + ("" if full else "Here gamma = 2 at the paper's alpha .25 only, the run that Table "
               "1c-1e and Figure 4 share: the claim at gamma 2 is decided, with an alpha grid, "
               "by the imbalance sweep below. Cut to make room for it (the last 250-iteration "
               "run's AP in brackets): alpha .5 at gamma 2 (14.4, vs 16.7 for .25), gamma .5 "
               "(30.7), 1 (23.5 at alpha .5, 22.8 at .25) and 5 (9.8). They, gamma .1 and .2, and "
               "alpha .75 are in `shapes-full`.")
        ),  # fmt: skip
        "1c": (
            "Scales per octave 2^(k/S), k < S, from the recipe's smallest anchor of each level "
            f"({levels} px); ratios {{1:1}} or {{1:2, 1:1, 2:1}}."
            + ("" if full else " Here only the recipe's 9 anchors, the FL run that the other "
               "tables share. The other settings were cut to make room for the imbalance sweep in "
               "`make paper`'s 75 minutes; they are in `shapes-full`. In the 2026-11-29 "
               "250-iteration run, 1 anchor reached 12.8 AP and 2 x 3 anchors 16.9, against "
               "16.7 for 9 (paper: 30.3, 34.2 and 34.0).")
        ),  # fmt: skip
        "1d": (
            "OHEM scores anchors by plain CE, runs NMS over the anchor boxes, and trains on the "
            "hardest `batch` anchors per image (with a 1:3 positive:negative ratio or none); "
            f"batch 128 and 512 keep {100 * 128 / anchors_per_image:.1f}% and "
            f"{100 * 512 / anchors_per_image:.0f}% of an image's {anchors_per_image} anchors here, "
            "against about 0.1-0.5% of COCO's 100k. With the 1:3 ratio the batch caps the "
            "positives at B/4 after their NMS (and the negatives at 3x the positives kept), so "
            "B = 128 only matters for an image that keeps more than 32 positives after NMS. The "
            "paper's Table 1d uses ResNet-101-FPN; ours the R18 recipe."
            + ("" if full else " Here FL's row only: every OHEM run was cut to make room for the "
               "imbalance sweep in `make paper`'s 75 minutes; they are in `shapes-full`. In the "
               "2026-11-29 250-iteration run the best OHEM, 1:3 at batch 128, reached 15.1 AP "
               "against FL's 16.7; batch 128 without the ratio 11.7; batch 512 without it found "
               "no detection above the score threshold; 1:3 at batch 512 trained exactly as at "
               "batch 128, since B = 128 never binds here.")
        ),  # fmt: skip
        "1e": (
            f"Only the test size varies: the {train_size} px focal-loss model is evaluated at "
            "0.5x .. 1x of its training size, the fractions that 400 .. 800 px are of the "
            "paper's 800 px. "
            "The paper trains a model at each scale (and times it on a GPU); our times are CPU "
            "ms per image at batch 1, measured by detectron2's evaluator (its 'pure compute "
            "time': model forward and post-processing, after 5 warm-up images)."
        ),
    }
    miniature = Level("shapes", f"{recipe.num_classes} classes, 3-10 objects (Table 1 "
                      f"miniature, {max_iter} iterations)", measure_run=default_fl,
                      sections=("init", "1a", "1b"))  # fmt: skip
    return Grid(
        name="shapes-full" if full else "shapes",
        runs=runs,
        rows=b.rows,
        loss_analysis_run=default_fl,
        notes=notes,
        schedule=schedule,
        datasets=("shapes_train", "shapes_val"),
        levels=[miniature] + sweep_levels,
        prepare_data=prepare_sweep_data if sweep_levels else None,
        sweep_schedule=(sweep_schedule(sweep_max_iter, seed, extra_gammas, full, sweep_classes)
                        if sweep_levels else ""),  # fmt: skip
    )


# --------------------------------------------------------------------------- COCO (full size)
_COCO_BASE_ANCHORS = (32.0, 64.0, 128.0, 256.0, 512.0)


def _coco_config(depth: int, size: int) -> str:
    if size == 800:
        return os.path.join("configs", "COCO", f"retinanet_R{depth}_FPN_1x.yaml")
    return os.path.join("configs", "COCO", "scales", f"retinanet_R{depth}_FPN_1x_{size}.yaml")


def coco_grid(*, seed: int = 0) -> Grid:
    """Every row of Table 1 on COCO at the paper's settings: ResNet-50-FPN (ResNet-101-FPN for
    Table 1d) trained and tested at 600 px with the 1x schedule; Table 1e trains a model at each
    scale. Output directories come from the runner, not from the configs."""
    b = GridBuilder((), seed, 90000)
    r50, r101 = _coco_config(50, 600), _coco_config(101, 600)

    def fl(alpha: float, gamma: float, cfg: str = r50, tag: str = "") -> str:
        return b.train(run_name("fl" + tag, g=gamma, a=alpha), cfg, fl_opts(alpha, gamma),
                       f"focal loss, gamma {gamma:g}, alpha {alpha:g}")  # fmt: skip

    def ce(alpha: float) -> str:
        return b.train(run_name("ce", a=alpha), r50, ce_opts(alpha),
                       f"alpha-balanced CE, {alpha:g}")  # fmt: skip

    default_fl = fl(0.25, 2.0)
    no_prior = b.train("ce_a0p5_noprior", r50, ce_opts(0.5) + NO_PRIOR_OPTS, "CE, no prior init")
    _init_rows(b, no_prior, ce(0.5), default_fl)
    for a in sorted(TABLE_1A):
        b.row("1a", ce(a), f"alpha = {a:g}", {"alpha": a, "gamma": 0.0}, TABLE_1A[a])
        paper_alpha, paper = TABLE_1B[0.0]
        b.row("1b", ce(a), f"gamma = 0, alpha = {a:g}", {"gamma": 0.0, "alpha": a}, paper,
              f"alpha = {paper_alpha:g}")  # fmt: skip
    for g in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0):
        paper_alpha, paper = TABLE_1B[g]
        for a in (0.25, 0.5, 0.75):
            b.row("1b", fl(a, g), f"gamma = {g:g}, alpha = {a:g}", {"gamma": g, "alpha": a},
                  paper, f"alpha = {paper_alpha:g}")  # fmt: skip
    for scales, ratios in sorted(TABLE_1C):
        name = default_fl if (scales, ratios) == (3, 3) else b.train(
            run_name("fl_anchors", s=scales, r=ratios), r50,
            fl_opts(0.25, 2.0) + anchor_opts(_COCO_BASE_ANCHORS, scales, ratios),
            f"focal loss, {scales} scale(s) x {ratios} aspect ratio(s)")  # fmt: skip
        b.row("1c", name, f"{scales} scale(s) x {ratios} ratio(s) = {scales * ratios} anchors",
              {"scales": scales, "ratios": ratios}, TABLE_1C[(scales, ratios)])  # fmt: skip
    for method, batch, nms in TABLE_1D:
        if method == "FL":
            name = fl(0.25, 2.0, r101, "_R101")
            b.row("1d", name, "FL (gamma 2, alpha .25)", {"method": "FL"},
                  TABLE_1D[("FL", None, None)])  # fmt: skip
            continue
        ratio = 3.0 if method == "OHEM 1:3" else 0.0
        name = b.train(run_name("ohem_R101", b=batch, r=ratio, n=nms), r101,
                       ohem_opts(batch, ratio, nms), f"{method}, batch {batch}, NMS {nms:g}")
        b.row("1d", name, f"{method}, batch {batch}, NMS {nms:g}",
              {"method": method, "batch": batch, "nms": nms}, TABLE_1D[(method, batch, nms)])
    for size in sorted(TABLE_1E):
        name = default_fl if size == 600 else fl(0.25, 2.0, _coco_config(50, size), f"_{size}")
        b.row("1e", name, f"train and test {size} px", {"size": size}, TABLE_1E[size])
    notes = {
        "init": "ResNet-50-FPN, 600 px, 1x; CE at alpha = .5 with and without the prior init.",
        "1a": "Every alpha of the paper's Table 1a.",
        "1b": "gamma over the paper's values, alpha in {.25, .5, .75}; the best alpha is bold.",
        "1c": "Every anchor setting of the paper's Table 1c.",
        "1d": "ResNet-101-FPN, as in the paper; every OHEM setting of Table 1d.",
        "1e": "ResNet-50-FPN trained and tested at each scale; times on the cluster's GPUs.",
    }
    return Grid(
        name="coco",
        runs=b.ordered_runs(),
        rows=b.rows,
        loss_analysis_run=default_fl,
        notes=notes,
        schedule="The paper's 1x schedule of each COCO config (90k iterations at 16 images).",
    )


def build_grid(name: str, **kwargs: Any) -> Grid:
    """Build a grid by name: "shapes", "shapes-full" or "coco"; keyword arguments go to its
    builder (``max_iter``, ``sweep_max_iter`` and ``seed`` for the shapes grids, ``seed`` for
    coco)."""
    if name == "shapes":
        return shapes_grid(**kwargs)
    if name == "shapes-full":
        return shapes_grid(full=True, **kwargs)
    if name == "coco":
        kwargs.pop("max_iter", None)
        kwargs.pop("sweep_max_iter", None)
        return coco_grid(**kwargs)
    raise ValueError(f"unknown grid {name!r}; choose one of {GRID_NAMES}")
