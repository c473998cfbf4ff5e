"""Write ``REPORT.md``: per section of the paper's Table 1, our AP next to the paper's, whether
our ordering matches the paper's, and a verdict on each claim the reproduction checks.

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
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .figures import plot_figure1, plot_loss_histories, plot_speed_accuracy
from .grid import Grid, Row
from .references import (
    CITATION,
    FIGURE4_STATEMENT,
    INIT_STATEMENT,
    SECTION_SETTINGS,
    TABLE_1A,
    TABLE_1B,
    TABLE_1C,
    TABLE_1D,
    cite,
)
from .results import RunResult

__all__ = [
    "Claim",
    "ReportInputs",
    "kendall_tau",
    "evaluate_claims",
    "write_report",
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

_SECTION_TITLES = {
    "init": "Section 5.1: initialisation (CE with and without the prior pi = 0.01)",
    "1a": "Table 1a: alpha-balanced cross-entropy",
    "1b": "Table 1b: focal loss over gamma (best alpha each)",
    "1c": "Table 1c: anchor density",
    "1d": "Table 1d: focal loss versus OHEM",
    "1e": "Table 1e: speed versus accuracy over input scales",
}


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


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"  # fmt: skip


def _ap(result: Optional[RunResult]) -> float:
    return result.ap if result is not None else math.nan


def _trains(result: Optional[RunResult]) -> bool:
    return result is not None and not result.diverged and _ap(result) >= TRAINS_MIN_AP


def _state(result: Optional[RunResult], failure: str) -> str:
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


class _View:
    """Rows joined with their results, for one report."""

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
        scored = [r for r in rows if math.isfinite(_ap(self.result(r)))]
        return max(scored, key=lambda r: _ap(self.result(r))) if scored else None

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
    v = _View(inputs)
    claims: List[Claim] = []

    # 1. CE without the prior fails; CE with it and FL train.
    no_prior, ce_prior = v.find("init", prior=0.5), v.find("init", prior=0.01, loss="CE")
    fl = v.find("init", loss="FL")
    if no_prior and ce_prior and fl:
        rs = [v.result(r) for r in (no_prior, ce_prior, fl)]
        holds = None if any(r is None for r in rs) else (
            not _trains(rs[0]) and _trains(rs[1]) and _trains(rs[2]))  # fmt: skip
        ours = "; ".join(
            f"{name}: {_state(r, v.failure(row))}, AP {_num(_ap(r))}"
            for name, r, row in zip(("CE no prior", "CE prior", "FL"), rs,
                                    (no_prior, ce_prior, fl))  # fmt: skip
        )
        if rs[0] is not None and not rs[0].diverged:
            ours += (f" (no-prior run: first logged loss {_num(rs[0].first_loss, 3)}, "
                     f"largest {_num(rs[0].max_loss, 3)})")  # fmt: skip
        claims.append(Claim("init", "CE without the prior init fails; CE with it and FL train",
                            holds, ours, "CE without the prior diverges (Sec. 5.1)"))  # fmt: skip

    # 2. FL (gamma 2, best alpha) beats the best alpha-balanced CE by a clear margin.
    best_ce = v.best(v.rows("1a"))
    gamma2 = [best for g, best, _ in v.best_per_gamma() if g == 2.0]
    if best_ce is not None and gamma2 and gamma2[0] is not None:
        fl2 = gamma2[0]
        diff = _ap(v.result(fl2)) - _ap(v.result(best_ce))
        paper_diff = TABLE_1B[2.0][1].ap - max(p.ap for p in TABLE_1A.values())
        claims.append(Claim(
            "fl_vs_ce",
            f"FL (gamma 2, best alpha) beats the best alpha-balanced CE by >= "
            f"{CLEAR_MARGIN_AP:g} AP",
            diff >= CLEAR_MARGIN_AP,
            f"FL {fl2.label}: {_num(_ap(v.result(fl2)))} vs CE {best_ce.label}: "
            f"{_num(_ap(v.result(best_ce)))} ({diff:+.1f} AP)",
            f"34.0 (alpha .25) vs 31.1 (alpha .75): {paper_diff:+.1f} AP ({cite('1b')})",
        ))  # fmt: skip

    # 3. FL beats the best OHEM setting.
    ohem = [r for r in v.rows("1d") if r.params.get("method") != "FL"]
    fl_d = v.find("1d", method="FL")
    best_ohem = v.best(ohem)
    if best_ohem is not None and fl_d is not None and v.result(fl_d) is not None:
        diff = _ap(v.result(fl_d)) - _ap(v.result(best_ohem))
        paper_best = max((p for k, p in TABLE_1D.items() if k[0] != "FL"), key=lambda p: p.ap)
        claims.append(Claim(
            "fl_vs_ohem", "FL beats the best OHEM setting", diff > 0,
            f"FL {_num(_ap(v.result(fl_d)))} vs best OHEM ({best_ohem.label}) "
            f"{_num(_ap(v.result(best_ohem)))} ({diff:+.1f} AP"
            + (f"; less than the {CLEAR_MARGIN_AP:g} AP margin" if 0 < diff < CLEAR_MARGIN_AP
               else "") + ")",
            f"FL 36.0 vs best OHEM {paper_best.ap:.1f} "
            f"({36.0 - paper_best.ap:+.1f} AP, {cite('1d')})",
        ))  # fmt: skip

    # 4. 9 anchors beat 1.
    one, nine = v.find("1c", scales=1, ratios=1), v.find("1c", scales=3, ratios=3)
    if one and nine and v.result(one) is not None and v.result(nine) is not None:
        diff = _ap(v.result(nine)) - _ap(v.result(one))
        claims.append(Claim(
            "anchors", "9 anchors per location beat 1", diff > 0,
            f"9 anchors {_num(_ap(v.result(nine)))} vs 1 anchor {_num(_ap(v.result(one)))} "
            f"({diff:+.1f} AP)",
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


def _verdict(holds: Optional[bool]) -> str:
    return {True: "**reproduced**", False: "**not reproduced**", None: "not checked"}[holds]


# --------------------------------------------------------------------------- tables
def _ordering_line(pairs: List[Tuple[str, float, float]], what: str = "AP") -> str:
    """One line comparing our ordering of rows with the paper's; pairs = (label, ours, paper)."""
    pairs = [p for p in pairs if math.isfinite(p[1]) and math.isfinite(p[2])]
    if len(pairs) < 2:
        return "Ordering: too few rows with both numbers to compare."
    tau = kendall_tau([p[1] for p in pairs], [p[2] for p in pairs])
    ours_best = max(pairs, key=lambda p: p[1])[0]
    paper_best = max(pairs, key=lambda p: p[2])[0]
    same = [p[0] for p in sorted(pairs, key=lambda p: -p[1])] == \
        [p[0] for p in sorted(pairs, key=lambda p: -p[2])]  # fmt: skip
    verdict = "matches the paper's" if same else "differs from the paper's"
    best = (f"both put *{ours_best}* first" if ours_best == paper_best
            else f"our best is *{ours_best}*, the paper's *{paper_best}*")  # fmt: skip
    return (f"Ordering by {what}: ours {verdict} over {len(pairs)} rows (Kendall tau = "
            f"{tau:+.2f}; 1 = same order); {best}.")  # fmt: skip


def _result_cells(result: Optional[RunResult], failure: str) -> List[str]:
    if result is None:
        return ["–", "–", "–", "–", f"no result: {failure}" if failure else "not run"]
    note = _state(result, "") if result.diverged or result.no_detections else ""
    train = "eval only" if result.max_iter == 0 else \
        f"{_duration(result.wall_seconds)} ({_num(result.s_per_iter, 2)} s/it)"  # fmt: skip
    return [_num(result.ap), _num(result.ap50), _num(result.ap75), train, note]


def _paper_cells(row: Row) -> List[str]:
    p = row.paper
    if p is None:
        return ["–", "–", "–", row.paper_label or "–"]
    return [_num(p.ap), _num(p.ap50), _num(p.ap75), row.paper_label]


def _table(header: List[str], lines: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines]
    return "\n".join(out)


_OURS = ["AP", "AP50", "AP75", "run time (s/iter)", "note"]
_PAPER = ["paper AP", "AP50", "AP75", "paper setting"]


def _section_generic(v: _View, section: str) -> Tuple[str, List[Tuple[str, float, float]]]:
    lines, pairs = [], []
    for row in v.rows(section):
        r = v.result(row)
        lines.append([row.label] + _result_cells(r, v.failure(row)) + _paper_cells(row))
        pairs.append((row.label, _ap(r), row.paper.ap if row.paper else math.nan))
    return _table(["setting"] + _OURS + _PAPER, lines), pairs


def _section_init(v: _View) -> str:
    lines = []
    for row in v.rows("init"):
        r = v.result(row)
        cells = _result_cells(r, v.failure(row))
        state = _state(r, v.failure(row))
        losses = f"{_num(r.first_loss, 3)} / {_num(r.max_loss, 3)}" if r is not None else "–"
        lines.append([row.label, state, losses] + cells[:4] + _paper_cells(row))
    table = _table(["run", "outcome", "first / largest logged loss"] + _OURS[:4] + _PAPER, lines)
    return table


def _section_1b(v: _View) -> Tuple[str, List[Tuple[str, float, float]]]:
    lines, pairs = [], []
    for gamma, best, rows in v.best_per_gamma():
        tried = ", ".join(
            (f"**{r.params['alpha']:g}: {_num(_ap(v.result(r)))}**" if r is best
             else f"{r.params['alpha']:g}: {_num(_ap(v.result(r)))}")
            for r in rows
        )  # fmt: skip
        shown = best if best is not None else rows[0]
        r = v.result(shown)
        cells = _result_cells(r, v.failure(shown))
        alpha = f"{shown.params['alpha']:g}" if best is not None else "–"
        lines.append([f"{gamma:g}", alpha, tried] + cells[:4] + _paper_cells(shown))
        pairs.append((f"gamma {gamma:g}", _ap(r), shown.paper.ap if shown.paper else math.nan))
    header = ["gamma", "best alpha", "AP per alpha tried"] + _OURS[:4] + _PAPER
    return _table(header, lines), pairs


def _section_1e(v: _View, output_dir: str) -> Tuple[str, List[str]]:
    lines, ours, paper, notes = [], [], [], []
    for row in v.rows("1e"):
        r = v.result(row)
        cells = _result_cells(r, v.failure(row))
        ms = r.inference_ms if r is not None else math.nan
        p = row.paper
        lines.append([row.label] + cells[:3] + [_num(ms, 1)] + _paper_cells(row)[:3]
                     + [_num(p.time_ms, 0) if p else "–", row.paper_label])  # fmt: skip
        size = row.params.get("size")
        ours.append((ms, _ap(r), f"{size} px" if size is not None else row.label))
        if p is not None:
            paper.append((p.time_ms or math.nan, p.ap, row.paper_label or row.label))
    header = ["setting", "AP", "AP50", "AP75", "ms / image (CPU)", "paper AP", "AP50", "AP75",
              "paper ms (GPU)", "paper scale"]  # fmt: skip
    text = _table(header, lines)
    tau_ap = _ordering_line([(lbl, ap, i) for i, (_, ap, lbl) in enumerate(ours)],
                            "AP against input size")  # fmt: skip
    tau_ms = _ordering_line([(lbl, ms, i) for i, (ms, _, lbl) in enumerate(ours)],
                            "time against input size")  # fmt: skip
    # The paper's ordering here is by scale: larger inputs are more accurate and slower.
    notes.append(tau_ap.replace("the paper's", "the paper's (larger is better)"))
    if tau_ms != tau_ap:
        notes.append(tau_ms.replace("the paper's", "the paper's (larger is slower)"))
    if any(math.isfinite(o[0]) for o in ours):
        plot_speed_accuracy(ours, paper, os.path.join(output_dir, "table1e_speed_accuracy.png"))
        notes.append("![Table 1e](table1e_speed_accuracy.png)")
    return text, notes


# --------------------------------------------------------------------------- the report
def _environment() -> str:
    import torch

    try:
        import detectron2

        d2 = detectron2.__version__
    except Exception:  # noqa: BLE001  (the report must not fail on a version lookup)
        d2 = "?"
    return (f"Python {platform.python_version()}, torch {torch.__version__}, detectron2 {d2}, "
            f"{os.cpu_count()} CPU cores, {platform.machine()}")  # fmt: skip


def write_report(inputs: ReportInputs) -> str:
    """Write ``REPORT.md`` (and its PNGs, and ``HEADLINE.md`` for the README) into
    ``inputs.output_dir``; returns the report's path."""
    out = inputs.output_dir
    os.makedirs(out, exist_ok=True)
    v = _View(inputs)
    grid = inputs.grid
    claims = evaluate_claims(inputs)
    runs_rel = os.path.relpath(inputs.runs_dir, out)
    md: List[str] = []
    total_run = sum(r.wall_seconds for r in inputs.results.values()
                    if math.isfinite(r.wall_seconds))  # fmt: skip

    md.append("# Reproducing the focal-loss paper's ablations (Table 1, Figures 1 and 4)\n")
    md.append(
        f"Grid `{grid.name}`: {len(grid.runs)} runs ({len(inputs.results)} with results, "
        f"{len(inputs.failures)} without). Generated {time.strftime('%Y-%m-%d %H:%M')} by "
        f"`{inputs.command}`; {_environment()}. Sum of run times {_duration(total_run)}"
        + (f"; this invocation took {_duration(inputs.elapsed_seconds)}"
           if inputs.elapsed_seconds is not None else "") + ". "
        f"Per-run outputs (logs, metrics, checkpoints) are in `{runs_rel}/`.\n"
    )  # fmt: skip
    md.append(
        f"Paper numbers are from {CITATION}: ResNet-FPN RetinaNet on COCO minival, cited per "
        "table. Every other number is measured by this run. Sentences marked *Paper:* restate "
        "the paper; everything else describes our runs.\n"
    )
    md.append("## Schedule\n\n" + grid.schedule + "\n")

    md.append("## Claims\n")
    md.append(_table(["claim", "verdict", "ours", "paper"],
                     [[c.statement, _verdict(c.holds), c.ours, c.paper] for c in claims]))
    md.append(
        f"\nRules, fixed before the runs: a run *trains* when its losses stay finite and below "
        f"10x the first logged loss and it reaches {TRAINS_MIN_AP:g} AP; a *clear margin* is "
        f">= {CLEAR_MARGIN_AP:g} AP; a *small fraction* is <= {100 * SMALL_FRACTION:g}%. Each "
        "setting is one seeded run, so differences of about 1 AP are within run-to-run noise.\n"
    )  # fmt: skip

    md.append("## Figure 1: focal loss against p_t\n")
    plot_figure1(os.path.join(out, "figure1.png"))
    md.append("![Figure 1](figure1.png)\n")
    md.append("Computed with `retinafocal.losses.sigmoid_focal_loss` (alpha off); the gamma = 0 "
              "curve is cross-entropy.\n")

    for section in ("init", "1a", "1b", "1c", "1d", "1e"):
        rows = v.rows(section)
        if not rows:
            continue
        md.append(f"## {_SECTION_TITLES[section]}\n")
        if section in SECTION_SETTINGS:
            md.append(f"*Paper ({cite(section)}):* {SECTION_SETTINGS[section]}.\n")
        if section == "init":
            md.append(f"*Paper:* {INIT_STATEMENT}\n")
        if grid.notes.get(section):
            md.append(f"*Ours:* {grid.notes[section]}\n")
        if section == "init":
            md.append(_section_init(v))
            histories = {
                f"{row.params.get('loss', row.label)}, pi = {row.params.get('prior', '?')}":
                    v.result(row).loss_history
                for row in rows if v.result(row) is not None
            }  # fmt: skip
            if any(histories.values()):
                plot_loss_histories(histories, os.path.join(out, "init_losses.png"),
                                    "Training loss with and without the prior init")
                md.append("\n![Training losses](init_losses.png)")
            claim = next((c for c in claims if c.key == "init"), None)
            if claim is not None:
                md.append(f"\nClaim: {claim.statement}: {_verdict(claim.holds)}. {claim.ours}.")
        elif section == "1b":
            table, pairs = _section_1b(v)
            md.append(table)
            md.append("\n" + _ordering_line(pairs))
        elif section == "1e":
            table, notes = _section_1e(v, out)
            md.append(table)
            md.append("\n" + "\n\n".join(notes))
        else:
            table, pairs = _section_generic(v, section)
            md.append(table)
            md.append("\n" + _ordering_line(pairs))
        key = {"1b": "fl_vs_ce", "1c": "anchors", "1d": "fl_vs_ohem"}.get(section)
        claim = next((c for c in claims if c.key == key), None)
        if claim is not None:
            md.append(f"\nClaim: {claim.statement}: {_verdict(claim.holds)}. {claim.ours}. "
                      f"Paper: {claim.paper}.")  # fmt: skip
        md.append("")

    md.append("## Figure 4: cumulative distribution of the normalised loss\n")
    md.append(f"*Paper:* {FIGURE4_STATEMENT}\n")
    analysis = inputs.loss_analysis
    if analysis is None:
        md.append("Not computed (the analysed run has no final model).\n")
    else:
        if inputs.loss_analysis_png and os.path.isfile(inputs.loss_analysis_png):
            target = os.path.join(out, "figure4_loss_cdf.png")
            if os.path.abspath(inputs.loss_analysis_png) != os.path.abspath(target):
                shutil.copyfile(inputs.loss_analysis_png, target)
            md.append("![Figure 4](figure4_loss_cdf.png)\n")
        md.append(
            f"*Ours:* the final model of `{grid.loss_analysis_run}` on "
            f"{analysis['num_images']} images of `{analysis.get('dataset', '?')}`: "
            f"{analysis['num_positives']:,} positives and {analysis['num_negatives']:,} negatives"
            + (f" (a uniform sample of {analysis['num_negatives_total']:,})"
               if analysis.get("negatives_sampled") else "")
            + ". A positive is the target-class element of a foreground anchor, a negative any "
            "element of a background anchor; the loss is -(1 - p_t)^gamma log(p_t) without "
            "alpha (Figure 4 studies gamma alone). Fraction of samples, from the highest loss "
            "down, that carries half of the loss:\n"
        )  # fmt: skip
        half = analysis["half_loss_fraction"]
        pos, neg = half["positives"], half["negatives"]
        md.append(_table(["gamma", "positives", "negatives"],
                         [[g, f"{100 * pos[g]:.3g}%", f"{100 * neg[g]:.3g}%"] for g in neg]))
        claim = next((c for c in claims if c.key == "figure4"), None)
        if claim is not None:
            md.append(f"\nClaim: {claim.statement}: {_verdict(claim.holds)}.")
        md.append(
            "\nRegenerate for any checkpoint and dataset with `python -m paper.analyze_loss "
            "--config-file <config> MODEL.WEIGHTS <checkpoint> --output <dir>`.\n"
        )

    if inputs.failures:
        md.append("## Runs without results\n")
        md.extend(f"- `{name}`: {why}" for name, why in sorted(inputs.failures.items()))
        md.append("")

    md.append("## Regenerate\n")
    md.append(
        "`make paper` (or `python -m paper`) runs what is missing and rewrites this "
        "report; finished runs are not run again. `python -m paper --report-only` "
        "rewrites the report from the stored results. Full size on COCO: `python "
        "-m paper --grid coco --num-gpus 8 [--num-machines M --machine-rank R "
        "--dist-url URL]`.\n"
    )
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    _write_headline(inputs, claims)
    return path


def _write_headline(inputs: ReportInputs, claims: List[Claim]) -> str:
    """``HEADLINE.md``: the claims table and the two figures, for the README (links relative
    to ``inputs.headline_dir``)."""
    base = os.path.relpath(inputs.output_dir, inputs.headline_dir or inputs.output_dir)

    def link(name: str) -> str:
        return name if base == "." else f"{base}/{name}".replace(os.sep, "/")

    lines = [
        f"Measured by `{inputs.command}` (grid `{inputs.grid.name}`); details in "
        f"[REPORT.md]({link('REPORT.md')}).\n",
        _table(["claim (paper)", "ours", "verdict"],
               [[f"{c.statement} ({c.paper})", c.ours, _verdict(c.holds)] for c in claims]),
        "",
        f"![Figure 1: focal loss against p_t]({link('figure1.png')})",
    ]  # fmt: skip
    if os.path.isfile(os.path.join(inputs.output_dir, "figure4_loss_cdf.png")):
        lines.append(f"![Figure 4: loss CDFs of positives and negatives]"
                     f"({link('figure4_loss_cdf.png')})")  # fmt: skip
    path = os.path.join(inputs.output_dir, "HEADLINE.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
