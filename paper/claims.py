"""The claims the reproduction checks, and the rules that decide them.

The verdicts follow rules fixed here, before any result is seen (no rule exists to make a row
agree):

* a run *trains* when its losses stayed finite, did not explode, and it reached
  :data:`TRAINS_MIN_AP` AP; it *fails* otherwise;
* "by a clear margin" means at least :data:`CLEAR_MARGIN_AP` AP points;
* Figure 4's loss is "concentrated in a small fraction of negatives" at gamma = 2 when at most
  :data:`SMALL_FRACTION` of the negatives carry half of it and that fraction is below gamma = 0's;
* a run has *converged* when its AP at the end of training is within :data:`CONVERGED_AP_CHANGE`
  points of its AP after :data:`CONVERGENCE_POINT` of its iterations (no detection counts as AP
  0). A verdict that rests on a run that has not converged, or was not evaluated there, says so.

The two central claims (Sec. 5.1, Table 1b) are decided on every :class:`~paper.grid.Level` of
the grid with the same rules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .grid import Grid, Level, Row
from .imbalance import ImbalanceStats
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
    "CONVERGENCE_POINT",
    "CONVERGED_AP_CHANGE",
    "convergence",
    "levels_of",
]

#: A run that reaches less AP than this (with finite losses) is counted as failing to train.
TRAINS_MIN_AP = 1.0
#: "A clear margin" in AP points.
CLEAR_MARGIN_AP = 1.0
#: Largest fraction of negatives carrying half the loss that counts as "a small fraction".
SMALL_FRACTION = 0.10
#: The convergence rule: the share of the schedule after which a run is evaluated besides the
#: end, and the largest AP change (points) between the two for a converged run.
CONVERGENCE_POINT = 0.75
CONVERGED_AP_CHANGE = 1.0


@dataclass
class Claim:
    """One checked claim: ``holds`` is True/False, or None when a run it needs is missing."""

    key: str
    statement: str
    holds: Optional[bool]
    ours: str
    paper: str
    level: str = ""
    flags: List[str] = field(default_factory=list)


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
        imbalance: level key -> its measured imbalance (:mod:`paper.imbalance`); levels
            without a measurement are missing.
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
    imbalance: Dict[str, ImbalanceStats] = field(default_factory=dict)


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


def convergence(result: Optional[RunResult]) -> Tuple[Optional[bool], float, float]:
    """The convergence rule applied to a run: ``(converged, AP at CONVERGENCE_POINT, AP at the
    end)``; ``converged`` is None when the run has no evaluation at that point (or no result),
    False for a run that diverged."""
    if result is None or not result.max_iter:
        return None, math.nan, math.nan
    if result.diverged:
        return False, math.nan, math.nan
    mid = result.ap_at(round(CONVERGENCE_POINT * result.max_iter))
    end = result.ap_at(result.max_iter) if result.evaluations else math.nan
    if not math.isfinite(end):
        end = result.ap if math.isfinite(result.ap) else 0.0
    if not result.evaluations or not any(
        int(it) == round(CONVERGENCE_POINT * result.max_iter) for it, _ in result.evaluations
    ):
        return None, math.nan, end
    # COCO evaluation gives NaN when nothing is detected: AP 0 there.
    mid = mid if math.isfinite(mid) else 0.0
    return abs(end - mid) <= CONVERGED_AP_CHANGE, mid, end


def convergence_text(result: Optional[RunResult]) -> str:
    """The rule's outcome in words: "yes (14.2 -> 14.9)", "no (...)", "not checked"."""
    converged, mid, end = convergence(result)
    if converged is None:
        if result is None:
            return "–"
        return f"not checked (no evaluation at {100 * CONVERGENCE_POINT:g}%)"
    if result is not None and result.diverged:
        return "no (diverged)"
    return f"{'yes' if converged else '**no**'} ({mid:.1f} -> {end:.1f})"


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
def levels_of(grid: Grid) -> List[Level]:
    """The grid's levels; a grid that names none has one, its Table 1 rows."""
    if grid.levels:
        return list(grid.levels)
    first = grid.runs[0].name if grid.runs else ""
    return [Level(grid.name, grid.name, measure_run=first, sections=("init", "1a", "1b"))]


@dataclass
class LevelRows:
    """The rows of one level that the central claims compare (None: no such row)."""

    no_prior: Optional[Row]
    ce_prior: Optional[Row]
    fl: Optional[Row]
    ce: List[Row]  # alpha-balanced CE with the prior, one per alpha
    fl_gamma2: List[Row]  # FL at gamma 2, one per alpha


def level_rows(v: "RunView", level: Level) -> LevelRows:
    """Find a level's rows: Sec. 5.1 and Tables 1a/1b for the Table 1 miniature, the level's
    rows of section "sweep" otherwise."""
    if "sweep" not in level.sections:
        return LevelRows(
            no_prior=v.find("init", prior=0.5),
            ce_prior=v.find("init", prior=0.01, loss="CE"),
            fl=v.find("init", loss="FL"),
            ce=v.rows("1a"),
            fl_gamma2=[r for r in v.rows("1b") if r.params.get("gamma") == 2.0],
        )
    rows = [r for r in v.rows("sweep") if r.params.get("level") == level.key]

    def pick(**params: Any) -> List[Row]:
        return [r for r in rows if all(r.params.get(k) == x for k, x in params.items())]

    return LevelRows(
        no_prior=next(iter(pick(prior=0.5)), None),
        ce_prior=next(iter(pick(loss="CE", prior=0.01, alpha=0.5)), None),
        fl=next(iter(pick(loss="FL", gamma=2.0, alpha=0.25)), None),
        ce=pick(loss="CE", prior=0.01),
        fl_gamma2=pick(loss="FL", gamma=2.0),
    )


def _convergence_flags(v: "RunView", rows: Sequence[Optional[Row]]) -> List[str]:
    """One line per compared run that does not meet the convergence rule."""
    flags = []
    for row in rows:
        if row is None:
            continue
        result = v.result(row)
        converged, _, _ = convergence(result)
        if result is not None and not converged and not result.diverged:
            flags.append(f"`{row.run}`: converged {convergence_text(result)}")
    return flags


def _init_claim(v: "RunView", level: Level, lr: LevelRows) -> Optional[Claim]:
    """CE without the prior fails; CE with it and FL train."""
    if not (lr.no_prior and lr.ce_prior and lr.fl):
        return None
    rows = (lr.no_prior, lr.ce_prior, lr.fl)
    rs = [v.result(r) for r in rows]
    holds = None if any(r is None for r in rs) else (
        not _trains(rs[0]) and _trains(rs[1]) and _trains(rs[2]))  # fmt: skip
    ours = "; ".join(
        f"{name}: {run_state(r, v.failure(row))}, AP {number_text(run_ap(r))}"
        for name, r, row in zip(("CE no prior", "CE prior", "FL"), rs, rows)
    )
    r = rs[0]
    if r is not None and math.isfinite(r.raw_first_loss):
        ours += (f" (no-prior run: first loss {r.raw_first_loss:.4g}, largest "
                 f"{r.raw_max_loss:.4g}, single iterations)")  # fmt: skip
    elif r is not None and not r.diverged:
        ours += (f" (no-prior run: first logged loss {number_text(r.first_loss, 3)}, "
                 f"largest {number_text(r.max_loss, 3)})")  # fmt: skip
    return Claim("init", "CE without the prior init fails; CE with it and FL train", holds, ours,
                 "CE without the prior diverges (Sec. 5.1)", level=level.key,
                 flags=_convergence_flags(v, rows))  # fmt: skip


def _named(loss: str, row: Row) -> str:
    """"FL gamma = 2, alpha = 0.25" from a Table 1b label, or a sweep label as it is."""
    return row.label if row.label.startswith(loss) else f"{loss} {row.label}"


def _fl_vs_ce_claim(v: "RunView", level: Level, lr: LevelRows) -> Optional[Claim]:
    """FL (gamma 2, best alpha) beats the best alpha-balanced CE by a clear margin."""
    best_ce, fl2 = v.best(lr.ce), v.best(lr.fl_gamma2)
    if best_ce is None or fl2 is None:
        return None
    diff = run_ap(v.result(fl2)) - run_ap(v.result(best_ce))
    paper_diff = TABLE_1B[2.0][1].ap - max(p.ap for p in TABLE_1A.values())
    return Claim(
        "fl_vs_ce",
        f"FL (gamma 2, best alpha) beats the best alpha-balanced CE by >= "
        f"{CLEAR_MARGIN_AP:g} AP",
        diff >= CLEAR_MARGIN_AP,
        f"{_named('FL', fl2)}: {number_text(run_ap(v.result(fl2)))} vs "
        f"{_named('CE', best_ce)}: {number_text(run_ap(v.result(best_ce)))} ({diff:+.1f} AP)",
        f"34.0 (alpha .25) vs 31.1 (alpha .75): {paper_diff:+.1f} AP ({cite('1b')})",
        level=level.key,
        flags=_convergence_flags(v, (fl2, best_ce)),
    )


def evaluate_claims(inputs: ReportInputs) -> List[Claim]:
    """The acceptance claims, each checked against the rules of this module: the two central
    ones on every level of the grid, then the others on the Table 1 miniature."""
    v = RunView(inputs)
    claims: List[Claim] = []
    for level in levels_of(inputs.grid):
        lr = level_rows(v, level)
        claims += [c for c in (_init_claim(v, level, lr), _fl_vs_ce_claim(v, level, lr)) if c]
    base = next((lvl.key for lvl in levels_of(inputs.grid) if "sweep" not in lvl.sections),
                inputs.grid.name)  # fmt: skip

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
            f"({36.0 - paper_best.ap:+.1f} AP, {cite('1d')})", level=base,
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
            level=base,
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
            level=base,
        ))  # fmt: skip
    return claims


def verdict(holds: Optional[bool]) -> str:
    """A claim's verdict in markdown."""
    return {True: "**reproduced**", False: "**not reproduced**", None: "not checked"}[holds]
