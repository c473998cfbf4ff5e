"""Write ``REPORT.md``: per section of the paper's Table 1, our AP next to the paper's, whether
our ordering matches the paper's, and the verdict on each claim (:mod:`paper.claims`); and
``HEADLINE.md``, the claims and figures for the README.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import time
from typing import List, Optional, Tuple

from .claims import (
    CLEAR_MARGIN_AP,
    CONVERGED_AP_CHANGE,
    CONVERGENCE_POINT,
    SMALL_FRACTION,
    TRAINS_MIN_AP,
    Claim,
    ReportInputs,
    RunView,
    evaluate_claims,
    kendall_tau,
    number_text,
    run_ap,
    run_state,
    verdict,
)
from .figures import plot_figure1, plot_loss_histories, plot_speed_accuracy
from .grid import Row
from .references import CITATION, FIGURE4_STATEMENT, INIT_STATEMENT, SECTION_SETTINGS, cite
from .report_sweep import imbalance_table, sweep_section, terms_text
from .results import RunResult

__all__ = ["ReportInputs", "write_report"]

_SECTION_TITLES = {
    "init": "Section 5.1: initialisation (CE with and without the prior pi = 0.01)",
    "1a": "Table 1a: alpha-balanced cross-entropy",
    "1b": "Table 1b: focal loss over gamma (best alpha each)",
    "1c": "Table 1c: anchor density",
    "1d": "Table 1d: focal loss versus OHEM",
    "1e": "Table 1e: speed versus accuracy over input scales",
}


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else \
        f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"  # fmt: skip


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
    note = run_state(result, "") if result.diverged or result.no_detections else ""
    train = "eval only" if result.max_iter == 0 else \
        f"{_duration(result.wall_seconds)} ({number_text(result.s_per_iter, 2)} s/it)"  # fmt: skip
    return [number_text(result.ap), number_text(result.ap50), number_text(result.ap75), train, note]


def _paper_cells(row: Row) -> List[str]:
    p = row.paper
    if p is None:
        return ["–", "–", "–", row.paper_label or "–"]
    return [number_text(p.ap), number_text(p.ap50), number_text(p.ap75), row.paper_label]


def _table(header: List[str], lines: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in lines]
    return "\n".join(out)


_OURS = ["AP", "AP50", "AP75", "run time (s/iter)", "note"]
_PAPER = ["paper AP", "AP50", "AP75", "paper setting"]


def _section_generic(v: RunView, section: str) -> Tuple[str, List[Tuple[str, float, float]]]:
    lines, pairs = [], []
    for row in v.rows(section):
        r = v.result(row)
        lines.append([row.label] + _result_cells(r, v.failure(row)) + _paper_cells(row))
        pairs.append((row.label, run_ap(r), row.paper.ap if row.paper else math.nan))
    return _table(["setting"] + _OURS + _PAPER, lines), pairs


def _section_init(v: RunView) -> str:
    lines = []
    for row in v.rows("init"):
        r = v.result(row)
        cells = _result_cells(r, v.failure(row))
        state = run_state(r, v.failure(row))
        losses = "–"
        if r is not None:
            losses = f"{number_text(r.first_loss, 3)} / {number_text(r.max_loss, 3)}"
        lines.append([row.label, state, losses] + cells[:4] + _paper_cells(row))
    table = _table(["run", "outcome", "first / largest logged loss"] + _OURS[:4] + _PAPER, lines)
    return table


def _section_1b(v: RunView) -> Tuple[str, List[Tuple[str, float, float]]]:
    lines, pairs = [], []
    for gamma, best, rows in v.best_per_gamma():
        tried = ", ".join(
            (f"**{r.params['alpha']:g}: {number_text(run_ap(v.result(r)))}**" if r is best
             else f"{r.params['alpha']:g}: {number_text(run_ap(v.result(r)))}")
            for r in rows
        )  # fmt: skip
        shown = best if best is not None else rows[0]
        r = v.result(shown)
        cells = _result_cells(r, v.failure(shown))
        alpha = f"{shown.params['alpha']:g}" if best is not None else "–"
        lines.append([f"{gamma:g}", alpha, tried] + cells[:4] + _paper_cells(shown))
        pairs.append((f"gamma {gamma:g}", run_ap(r), shown.paper.ap if shown.paper else math.nan))
    header = ["gamma", "best alpha", "AP per alpha tried"] + _OURS[:4] + _PAPER
    return _table(header, lines), pairs


def _section_1e(v: RunView, output_dir: str) -> Tuple[str, List[str]]:
    lines, ours, paper, notes = [], [], [], []
    for row in v.rows("1e"):
        r = v.result(row)
        cells = _result_cells(r, v.failure(row))
        ms = r.inference_ms if r is not None else math.nan
        p = row.paper
        lines.append([row.label] + cells[:3] + [number_text(ms, 1)] + _paper_cells(row)[:3]
                     + [number_text(p.time_ms, 0) if p else "–", row.paper_label])  # fmt: skip
        size = row.params.get("size")
        ours.append((ms, run_ap(r), f"{size} px" if size is not None else row.label))
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
    v = RunView(inputs)
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
    md.append(_claims_table(inputs, claims))
    md.append(
        f"\nRules, fixed before the runs: a run *trains* when its losses stay finite and below "
        f"10x the first logged loss (medians of 20 iterations) and it reaches "
        f"{TRAINS_MIN_AP:g} AP; a *clear margin* is >= {CLEAR_MARGIN_AP:g} AP; a *small "
        f"fraction* is <= {100 * SMALL_FRACTION:g}%. A run has *converged* when its AP at the "
        f"end is within {CONVERGED_AP_CHANGE:g} AP of its AP after "
        f"{100 * CONVERGENCE_POINT:g}% of its iterations; a verdict that rests on a run that "
        "has not is flagged in the last column. Each setting is one seeded run, so differences "
        "of about 1 AP are within run-to-run noise.\n"
    )  # fmt: skip
    md.append("## Imbalance of each grid (measured)\n")
    md.append(
        "Binary classification terms per positive anchor: (anchors - ignored anchors) x "
        "classes, summed over the training set, divided by the positive anchors, with the "
        "config's own anchor generator and matcher (`paper/imbalance.py`). COCO, for "
        "comparison: about 100k anchors x 80 classes per image, about 1e5 terms per positive "
        "(paper, Sec. 1 and 4).\n"
    )
    md.append(imbalance_table(inputs) + "\n")

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
                md.append(f"\nClaim: {claim.statement}: {verdict(claim.holds)}. {claim.ours}.")
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
            md.append(f"\nClaim: {claim.statement}: {verdict(claim.holds)}. {claim.ours}. "
                      f"Paper: {claim.paper}.")  # fmt: skip
        md.append("")

    md.extend(sweep_section(inputs, claims, out))

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
            md.append(f"\nClaim: {claim.statement}: {verdict(claim.holds)}.")
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


def _claims_table(inputs: ReportInputs, claims: List[Claim]) -> str:
    """The claims, one row per claim and grid, with the grid's imbalance and any flag."""
    return _table(
        ["claim", "grid", "binary terms per positive", "verdict", "ours", "paper", "flags"],
        [[c.statement, c.level, terms_text(inputs, c.level), verdict(c.holds), c.ours, c.paper,
          "; ".join(c.flags) or "–"] for c in claims],
    )  # fmt: skip


def _write_headline(inputs: ReportInputs, claims: List[Claim]) -> str:
    """``HEADLINE.md``: the claims table and the two figures, for the README (links relative
    to ``inputs.headline_dir``)."""
    base = os.path.relpath(inputs.output_dir, inputs.headline_dir or inputs.output_dir)

    def link(name: str) -> str:
        return name if base == "." else f"{base}/{name}".replace(os.sep, "/")

    lines = [
        f"Measured by `{inputs.command}` (grid `{inputs.grid.name}`); details in "
        f"[REPORT.md]({link('REPORT.md')}).\n",
        _table(["claim (paper)", "grid (binary terms per positive)", "ours", "verdict"],
               [[f"{c.statement} ({c.paper})", f"{c.level} ({terms_text(inputs, c.level)})",
                 c.ours + (f" Flagged: {'; '.join(c.flags)}" if c.flags else ""),
                 verdict(c.holds)] for c in claims]),
        "",
        f"![Figure 1: focal loss against p_t]({link('figure1.png')})",
    ]  # fmt: skip
    for png, alt in (("sweep_fl_margin.png", "FL minus the best alpha-CE against imbalance"),
                     ("sweep_noprior_loss.png", "loss of CE without the prior against "
                      "imbalance")):  # fmt: skip
        if os.path.isfile(os.path.join(inputs.output_dir, png)):
            lines.append(f"![{alt}]({link(png)})")
    if os.path.isfile(os.path.join(inputs.output_dir, "figure4_loss_cdf.png")):
        lines.append(f"![Figure 4: loss CDFs of positives and negatives]"
                     f"({link('figure4_loss_cdf.png')})")  # fmt: skip
    path = os.path.join(inputs.output_dir, "HEADLINE.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
