"""The report's imbalance chapter: the measured imbalance of every grid, the sweep's runs level
by level, and the two figures that show the mechanism (FL's margin over the best alpha-CE, and
the loss of CE without the prior, against binary terms per positive)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

from .claims import (
    Claim,
    ReportInputs,
    RunView,
    convergence,
    convergence_text,
    level_rows,
    levels_of,
    number_text,
    run_ap,
    run_state,
    verdict,
)
from .figures import plot_fl_margin, plot_noprior_loss
from .grid import Level
from .results import RunResult

__all__ = ["imbalance_table", "level_points", "sweep_section", "terms_text"]


def terms_text(inputs: ReportInputs, level_key: str) -> str:
    """A level's binary terms per positive, as measured, for tables."""
    stats = inputs.imbalance.get(level_key)
    return f"{stats.terms_per_positive:,.0f}" if stats is not None else "not measured"


def imbalance_table(inputs: ReportInputs) -> str:
    """Markdown: per level, the measured anchors, classes, positives and terms per positive."""
    lines = [
        "| grid | dataset measured | images | anchors per image | classes | objects per image "
        "| positives per image | ignored per image | binary terms per positive |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in levels_of(inputs.grid):
        s = inputs.imbalance.get(level.key)
        if s is None:
            lines.append(f"| {level.key} | not measured |" + " – |" * 7)
            continue
        lines.append(
            f"| {level.key} | `{s.dataset}` | {s.num_images:,} | {s.anchors_per_image:,.0f} | "
            f"{s.num_classes} | {s.objects_per_image:.2f} | {s.positives_per_image:.2f} | "
            f"{s.ignored / s.num_images:.1f} | **{s.terms_per_positive:,.0f}** |"
        )
    return "\n".join(lines)


def _first_largest(result: Optional[RunResult]) -> str:
    if result is None or not math.isfinite(result.raw_first_loss):
        return "–"
    where = f" (iter {result.raw_max_loss_iter})" if result.raw_max_loss_iter is not None else ""
    return f"{result.raw_first_loss:.4g} / {result.raw_max_loss:.4g}{where}"


def level_points(inputs: ReportInputs) -> List[Dict[str, Any]]:
    """Per measured level, what the sweep figures plot: terms per positive, FL's margin over the
    best alpha-CE, whether both runs converged, and the single-iteration losses of the
    initialisation runs."""
    v = RunView(inputs)
    points = []
    for level in levels_of(inputs.grid):
        stats = inputs.imbalance.get(level.key)
        if stats is None:
            continue
        lr = level_rows(v, level)
        best_ce, best_fl = v.best(lr.ce), v.best(lr.fl_gamma2)
        margin = math.nan
        converged = False
        if best_ce is not None and best_fl is not None:
            margin = run_ap(v.result(best_fl)) - run_ap(v.result(best_ce))
            converged = all(convergence(v.result(r))[0] for r in (best_ce, best_fl))

        def losses(row) -> Dict[str, float]:
            r = v.result(row) if row is not None else None
            return {"first": r.raw_first_loss if r else math.nan,
                    "largest": r.raw_max_loss if r else math.nan}  # fmt: skip

        points.append({
            "level": level.key, "terms": stats.terms_per_positive, "margin": margin,
            "converged": converged, "no_prior": losses(lr.no_prior),
            "ce_prior": losses(lr.ce_prior), "fl": losses(lr.fl),
        })  # fmt: skip
    return points


def _level_table(v: RunView, inputs: ReportInputs, level: Level) -> List[List[str]]:
    lines = []
    for row in [r for r in v.rows("sweep") if r.params.get("level") == level.key]:
        r, failure = v.result(row), v.failure(row)
        time = "–"
        if r is not None and math.isfinite(r.wall_seconds):
            time = f"{r.wall_seconds / 60:.1f} min ({number_text(r.s_per_iter, 2)} s/it)"
        _, mid, _ = convergence(r)
        lines.append([level.key, row.label, run_state(r, failure), _first_largest(r),
                      number_text(mid), number_text(run_ap(r)), convergence_text(r), time])
    return lines


def sweep_section(inputs: ReportInputs, claims: List[Claim], output_dir: str) -> List[str]:
    """The sweep chapter's markdown parts; writes its two PNGs into ``output_dir``."""
    v = RunView(inputs)
    sweep = [lvl for lvl in levels_of(inputs.grid) if "sweep" in lvl.sections]
    if not sweep:
        return []
    md = ["## The paper's regime: the two central claims against imbalance\n"]
    if inputs.grid.sweep_schedule:
        md.append(inputs.grid.sweep_schedule + "\n")
    header = ["grid", "run", "outcome", "first / largest loss (single iterations)",
              "AP at 75%", "AP", "converged (AP 75% -> end)", "run time"]  # fmt: skip
    lines = [line for level in sweep for line in _level_table(v, inputs, level)]
    md.append("| " + " | ".join(header) + " |\n|" + "|".join("---" for _ in header) + "|")
    md.append("\n".join("| " + " | ".join(c.replace("|", "/") for c in line) + " |"
                        for line in lines) + "\n")  # fmt: skip
    for level in sweep:
        for claim in claims:
            if claim.level == level.key:
                flags = f" Flagged: {'; '.join(claim.flags)}." if claim.flags else ""
                md.append(f"- {level.key} ({terms_text(inputs, level.key)} terms per positive): "
                          f"{claim.statement}: {verdict(claim.holds)}. {claim.ours}.{flags}")
    md.append("")
    points = level_points(inputs)
    if any(math.isfinite(p["margin"]) for p in points):
        plot_fl_margin(points, os.path.join(output_dir, "sweep_fl_margin.png"))
        md.append("![FL minus best alpha-CE against imbalance](sweep_fl_margin.png)\n")
    if any(math.isfinite(p["no_prior"]["first"]) for p in points):
        plot_noprior_loss(points, os.path.join(output_dir, "sweep_noprior_loss.png"))
        md.append("![Loss of CE without the prior against imbalance](sweep_noprior_loss.png)\n")
        md.append(
            "With the last bias at 0 every binary term starts at p = 0.5: alpha-balanced CE "
            "(alpha .5) gives 0.5 log 2 per term, so the first loss, divided by the number of "
            "positives, is about 0.35 x the terms per positive (the dashed line): the "
            "imbalance itself sets how large the first updates are.\n"
        )
    return md
