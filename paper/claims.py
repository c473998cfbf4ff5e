"""The claims the reproduction checks, and the rules that decide them.

The verdicts follow rules fixed here, before any result is seen (no rule exists to make a row
agree):

* a run *trains* when its losses stayed finite, did not explode, and it reached
  :data:`TRAINS_MIN_AP` AP; it *fails* otherwise;
* "by a clear margin" means at least :data:`CLEAR_MARGIN_AP` AP points;
* Figure 4's loss is "concentrated in a small fraction of negatives" at gamma = 2 when at most
  :data:`SMALL_FRACTION` of the negatives carry half of it and that fraction is below gamma = 0's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .grid import Grid, Row
from .references import TABLE_1A, TABLE_1B, TABLE_1C, TABLE_1D, cite
from .results import RunResult

__all__ = [
    "Claim",
    "ReportInputs",
    "RunView",
    "kendall_tau",
    "evaluate_claims",
    "verdict",
    "TRAINS_MIN_AP",
    "CLEAR_MARGIN_AP",
    "SMALL_FRACTION",
]

#: A run that reaches less AP than this (with finite losses) is counted as failing to train.
TRAINS_MIN_AP = 1.0
#: "A clear margin" in AP points.
CLEAR_MARGIN_AP = 1.0
#: Largest fraction of negatives carrying half the loss that counts as "a small fraction".
SMALL_FRACTION = 0.10


@dataclass
class Claim:
    """One checked claim: ``holds`` is True/False, or None when a run it needs is missing."""

    key: str
    statement: str
    holds: Optional[bool]
    ours: str
    paper: str


@dataclass
class ReportInputs:
    """Everything the report is written from.

    Attributes:
        grid: the grid that was run.
        results: run name -> result (finished or diverged runs).
        failures: run name -> why it has no result.
        loss_analysis: Figure 4's analysis (:func:`~paper.loss_analysis.
            analyze_loss_samples` output) or None.
        loss_analysis_png: its PNG (copied next to the report), or None.
        output_dir: where REPORT.md and its PNGs go.
        runs_dir: where the runs are (linked from the report).
        command: the command that regenerates the report.
        elapsed_seconds: wall time of the invocation that ran the grid, if known.
        headline_dir: the directory whose markdown ``HEADLINE.md`` is meant for (the
            repository root, for the README); its links are relative to it. Default: next to
            the report.
    """

    grid: Grid
    results: Dict[str, RunResult]
    output_dir: str
    runs_dir: str
    failures: Dict[str, str] = field(default_factory=dict)
    loss_analysis: Optional[Dict[str, Any]] = None
    loss_analysis_png: Optional[str] = None
    command: str = "make paper"
    elapsed_seconds: Optional[float] = None
    headline_dir: Optional[str] = None


# --------------------------------------------------------------------------- helpers
def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation of two equally long sequences (1: same order, -1:
    reversed); ties count as neither concordant nor discordant. NaN for fewer than 2 pairs or
    when one side is all ties."""
    if len(xs) != len(ys):
        raise ValueError(f"kendall_tau: lengths differ ({len(xs)} != {len(ys)})")
    concordant = discordant = ties_x = ties_y = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom > 0 else math.nan


def number_text(value: Optional[float], digits: int = 1) -> str:
    """A number for the report, "–" when it is missing or not finite."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def run_ap(result: Optional[RunResult]) -> float:
    """The run's AP; NaN without a result."""
    return result.ap if result is not None else math.nan


def _trains(result: Optional[RunResult]) -> bool:
    return result is not None and not result.diverged and run_ap(result) >= TRAINS_MIN_AP


def run_state(result: Optional[RunResult], failure: str) -> str:
    """How a run ended, in words: trains, fails (and why), diverged (and where), not run."""
    if result is None:
        return f"no result ({failure})" if failure else "not run"
    if result.diverged:
        where = ""
        if result.nan_iter is not None:
            where = f" (non-finite loss at iter {result.nan_iter})"
        elif result.exploded:
            where = f" (loss exploded to {result.max_loss:.3g})"
        return "**diverged**" + where
    if _trains(result):
        return "trains"
    if result.no_detections:
        return "fails (no detection above the score threshold)"
    return f"fails (AP < {TRAINS_MIN_AP:g})"


class RunView:
    """Rows joined with their results, for the claims and the report."""

    def __init__(self, inputs: ReportInputs):
        self.inputs = inputs
        self.grid = inputs.grid

    def result(self, row: Row) -> Optional[RunResult]:
        return self.inputs.results.get(row.run)

    def failure(self, row: Row) -> str:
        return self.inputs.failures.get(row.run, "")

    def rows(self, section: str) -> List[Row]:
        return self.grid.rows_of(section)

    def best(self, rows: Sequence[Row]) -> Optional[Row]:
        scored = [r for r in rows if math.isfinite(run_ap(self.result(r)))]
        return max(scored, key=lambda r: run_ap(self.result(r))) if scored else None

    def best_per_gamma(self) -> List[Tuple[float, Optional[Row], List[Row]]]:
        """Table 1b: (gamma, the row of its best alpha (None if no result), all its rows)."""
        by_gamma: Dict[float, List[Row]] = {}
        for row in self.rows("1b"):
            by_gamma.setdefault(float(row.params["gamma"]), []).append(row)
        return [(g, self.best(rows), rows) for g, rows in sorted(by_gamma.items())]

    def find(self, section: str, **params: Any) -> Optional[Row]:
        for row in self.rows(section):
            if all(row.params.get(k) == v for k, v in params.items()):
                return row
        return None


# --------------------------------------------------------------------------- claims
def evaluate_claims(inputs: ReportInputs) -> List[Claim]:
    """The acceptance claims, each checked against the rules of this module."""
    v = RunView(inputs)
    claims: List[Claim] = []

    # 1. CE without the prior fails; CE with it and FL train.
    no_prior, ce_prior = v.find("init", prior=0.5), v.find("init", prior=0.01, loss="CE")
    fl = v.find("init", loss="FL")
    if no_prior and ce_prior and fl:
        rs = [v.result(r) for r in (no_prior, ce_prior, fl)]
        holds = None if any(r is None for r in rs) else (
            not _trains(rs[0]) and _trains(rs[1]) and _trains(rs[2]))  # fmt: skip
        ours = "; ".join(
            f"{name}: {run_state(r, v.failure(row))}, AP {number_text(run_ap(r))}"
            for name, r, row in zip(("CE no prior", "CE prior", "FL"), rs,
                                    (no_prior, ce_prior, fl))  # fmt: skip
        )
        if rs[0] is not None and not rs[0].diverged:
            ours += (f" (no-prior run: first logged loss {number_text(rs[0].first_loss, 3)}, "
                     f"largest {number_text(rs[0].max_loss, 3)})")  # fmt: skip
        claims.append(Claim("init", "CE without the prior init fails; CE with it and FL train",
                            holds, ours, "CE without the prior diverges (Sec. 5.1)"))  # fmt: skip

    # 2. FL (gamma 2, best alpha) beats the best alpha-balanced CE by a clear margin.
    best_ce = v.best(v.rows("1a"))
    gamma2 = [best for g, best, _ in v.best_per_gamma() if g == 2.0]
    if best_ce is not None and gamma2 and gamma2[0] is not None:
        fl2 = gamma2[0]
        diff = run_ap(v.result(fl2)) - run_ap(v.result(best_ce))
        paper_diff = TABLE_1B[2.0][1].ap - max(p.ap for p in TABLE_1A.values())
        claims.append(Claim(
            "fl_vs_ce",
            f"FL (gamma 2, best alpha) beats the best alpha-balanced CE by >= "
            f"{CLEAR_MARGIN_AP:g} AP",
            diff >= CLEAR_MARGIN_AP,
            f"FL {fl2.label}: {number_text(run_ap(v.result(fl2)))} vs CE {best_ce.label}: "
            f"{number_text(run_ap(v.result(best_ce)))} ({diff:+.1f} AP)",
            f"34.0 (alpha .25) vs 31.1 (alpha .75): {paper_diff:+.1f} AP ({cite('1b')})",
        ))  # fmt: skip

    # 3. FL beats the best OHEM setting.
    ohem = [r for r in v.rows("1d") if r.params.get("method") != "FL"]
    fl_d = v.find("1d", method="FL")
    best_ohem = v.best(ohem)
    if best_ohem is not None and fl_d is not None and v.result(fl_d) is not None:
        diff = run_ap(v.result(fl_d)) - run_ap(v.result(best_ohem))
        paper_best = max((p for k, p in TABLE_1D.items() if k[0] != "FL"), key=lambda p: p.ap)
        claims.append(Claim(
            "fl_vs_ohem", "FL beats the best OHEM setting", diff > 0,
            f"FL {number_text(run_ap(v.result(fl_d)))} vs best OHEM ({best_ohem.label}) "
            f"{number_text(run_ap(v.result(best_ohem)))} ({diff:+.1f} AP"
            + (f"; less than the {CLEAR_MARGIN_AP:g} AP margin" if 0 < diff < CLEAR_MARGIN_AP
               else "") + ")",
            f"FL 36.0 vs best OHEM {paper_best.ap:.1f} "
            f"({36.0 - paper_best.ap:+.1f} AP, {cite('1d')})",
        ))  # fmt: skip

    # 4. 9 anchors beat 1.
    one, nine = v.find("1c", scales=1, ratios=1), v.find("1c", scales=3, ratios=3)
    if one and nine and v.result(one) is not None and v.result(nine) is not None:
        diff = run_ap(v.result(nine)) - run_ap(v.result(one))
        claims.append(Claim(
            "anchors", "9 anchors per location beat 1", diff > 0,
            f"9 anchors {number_text(run_ap(v.result(nine)))} vs 1 anchor "
            f"{number_text(run_ap(v.result(one)))} ({diff:+.1f} AP)",
            f"34.0 vs 30.3 ({TABLE_1C[(3, 3)].ap - TABLE_1C[(1, 1)].ap:+.1f} AP, {cite('1c')})",
        ))  # fmt: skip

    # 5. Figure 4: at gamma 2 half the negatives' loss sits in a small fraction of them.
    analysis = inputs.loss_analysis
    if analysis is not None:
        neg = analysis["half_loss_fraction"]["negatives"]
        f2, f0 = neg.get("2"), neg.get("0")
        holds = None
        if f2 is not None and f0 is not None and math.isfinite(f2) and math.isfinite(f0):
            holds = f2 <= SMALL_FRACTION and f2 < f0
        ours = ", ".join(f"gamma {g}: {100 * f:.2g}%" for g, f in neg.items())
        claims.append(Claim(
            "figure4",
            f"At gamma 2 at most {100 * SMALL_FRACTION:g}% of the negatives carry half of their "
            "loss, fewer than at gamma 0",
            holds, f"fraction of negatives carrying half the loss: {ours}",
            "a small fraction of negatives carries most of the loss at gamma 2 (Figure 4)",
        ))  # fmt: skip
    return claims


def verdict(holds: Optional[bool]) -> str:
    """A claim's verdict in markdown."""
    return {True: "**reproduced**", False: "**not reproduced**", None: "not checked"}[holds]
