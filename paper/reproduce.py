"""The whole reproduction as one call: run the grid, analyse the loss of the focal-loss model
(Figure 4), write the report. ``python -m paper`` (``paper/__main__.py``) is its command
line."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Optional, Sequence

from .analyze_loss import analyze_model
from .grid import Grid
from .imbalance import ImbalanceStats, imbalance_of_config
from .loss_analysis import DEFAULT_GAMMAS, write_analysis
from .report import ReportInputs, write_report
from .results import RunResult, load_results
from .runner import GridRunner, LaunchOptions

__all__ = ["figure4_step", "imbalance_step", "reproduce"]

logger = logging.getLogger(__name__)


def figure4_step(grid: Grid, results: Dict[str, RunResult], runs_dir: str, output_dir: str, *,
                 num_images: int = 200, gammas: Sequence[float] = DEFAULT_GAMMAS,
                 cwd: Optional[str] = None) -> Optional[Dict[str, Any]]:  # fmt: skip
    """Analyse the final model of ``grid.loss_analysis_run`` into ``<output_dir>/figure4/``,
    unless an analysis of that same run (fingerprint), image count and gammas is stored there.

    Returns the analysis, or None when the run has no usable model (missing or diverged).
    """
    name = grid.loss_analysis_run
    result = results.get(name) if name else None
    weights = os.path.join(runs_dir, name, "model_final.pth") if name else ""
    if result is None or result.diverged or not os.path.isfile(weights):
        logger.info(f"Figure 4: skipped, run {name!r} has no final model")
        return None
    spec = grid.run(name)
    key = {"run": name, "fingerprint": spec.fingerprint(), "num_images": num_images,
           "gammas": [float(g) for g in gammas]}  # fmt: skip
    fig_dir = os.path.join(output_dir, "figure4")
    json_path = os.path.join(fig_dir, "loss_cdf.json")
    if os.path.isfile(json_path):
        with open(json_path) as f:
            stored = json.load(f)
        if stored.get("source") == key:
            logger.info(f"Figure 4: reusing {json_path}")
            return stored
    logger.info(f"Figure 4: analysing {weights} on {num_images} images")
    start = time.time()
    config_file = spec.config_file
    if cwd and not os.path.isabs(config_file):
        config_file = os.path.join(cwd, config_file)
    analysis = analyze_model(
        config_file,
        list(spec.opts) + ["MODEL.WEIGHTS", weights],
        dataset=grid.loss_analysis_dataset,
        num_images=num_images,
        gammas=gammas,
    )
    analysis["source"] = key
    analysis["seconds"] = round(time.time() - start, 1)
    write_analysis(analysis, fig_dir, title=f"Figure 4 from run {name}")
    return analysis


def imbalance_step(grid: Grid, output_dir: str, *,
                   cwd: Optional[str] = None) -> Dict[str, ImbalanceStats]:  # fmt: skip
    """Measure the imbalance of every level of ``grid`` (:mod:`paper.imbalance`), reusing
    ``<output_dir>/imbalance.json`` for levels whose measured run has the same fingerprint.
    A level whose dataset cannot be loaded is left out (logged)."""
    path = os.path.join(output_dir, "imbalance.json")
    stored: Dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
    out: Dict[str, ImbalanceStats] = {}
    for level in grid.levels:
        spec = grid.run(level.measure_run)
        entry = stored.get(level.key)
        if entry and entry.get("fingerprint") == spec.fingerprint():
            out[level.key] = ImbalanceStats.from_json(entry["stats"])
            continue
        config_file = spec.config_file
        if cwd and not os.path.isabs(config_file):
            config_file = os.path.join(cwd, config_file)
        start = time.time()
        try:
            stats = imbalance_of_config(config_file, spec.opts)
        except Exception as e:  # noqa: BLE001  (the report says "not measured")
            logger.warning(f"imbalance of {level.key!r} not measured: {type(e).__name__}: {e}")
            continue
        logger.info(f"imbalance of {level.key}: {stats.terms_per_positive:,.0f} binary terms "
                    f"per positive ({time.time() - start:.0f} s)")  # fmt: skip
        out[level.key] = stats
        stored[level.key] = {"fingerprint": spec.fingerprint(), "stats": stats.to_json()}
    os.makedirs(output_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(stored, f, indent=1)
    os.replace(path + ".tmp", path)
    return out


def reproduce(grid: Grid, output_dir: str, launch: LaunchOptions, *, jobs: int = 1,
              report_only: bool = False, only: Optional[Sequence[str]] = None,
              loss_num_images: int = 200, command: str = "make paper",
              headline_dir: Optional[str] = None) -> Dict[str, Any]:  # fmt: skip
    """Run ``grid`` (runs under ``<output_dir>/runs``), Figure 4 and the report.

    Args:
        report_only: do not run anything; report what is stored.
        only: run just these runs of the grid.
        loss_num_images: images for Figure 4.
        command: how the report says it was made.
        headline_dir: where ``HEADLINE.md`` will be pasted (the repository root, for the
            README); its links are made relative to it.

    Returns:
        ``{"report": path or None, "results": {...}, "failures": {...}}``; on machines other than
        the first (``launch.machine_rank > 0``) only the runs are done.
    """
    start = time.time()
    runs_dir = os.path.join(output_dir, "runs")
    failures: Dict[str, str] = {}
    if report_only:
        results = load_results(grid, runs_dir)
        failures = {s.name: "not run yet" for s in grid.runs if s.name not in results}
    else:
        if launch.machine_rank == 0:
            from retinafocal.data.datasets import ensure_dataset_files

            for name in grid.datasets:
                ensure_dataset_files(name)
            if grid.prepare_data is not None:
                grid.prepare_data()
        runner = GridRunner(grid, runs_dir, launch, jobs=jobs, only=only)
        results = runner.run()
        failures = dict(runner.failures)
        for spec in grid.runs:
            if spec.name not in results and spec.name not in failures:
                failures[spec.name] = "not run (excluded by --only)"
    if launch.machine_rank != 0:
        return {"report": None, "results": results, "failures": failures}
    analysis = None
    try:
        analysis = figure4_step(grid, results, runs_dir, output_dir,
                                num_images=loss_num_images, cwd=launch.cwd)  # fmt: skip
    except Exception as e:  # noqa: BLE001  (the report is still written, saying why)
        logger.exception("Figure 4 failed")
        failures["figure4"] = f"loss analysis failed: {type(e).__name__}: {e}"
    imbalance: Dict[str, ImbalanceStats] = {}
    try:
        imbalance = imbalance_step(grid, output_dir, cwd=launch.cwd)
    except Exception as e:  # noqa: BLE001  (the report is still written, saying why)
        logger.exception("imbalance measurement failed")
        failures["imbalance"] = f"imbalance measurement failed: {type(e).__name__}: {e}"
    png = os.path.join(output_dir, "figure4", "loss_cdf.png")
    report = write_report(
        ReportInputs(
            grid=grid,
            results=results,
            failures=failures,
            output_dir=output_dir,
            runs_dir=runs_dir,
            loss_analysis=analysis,
            loss_analysis_png=png if analysis is not None else None,
            command=command,
            elapsed_seconds=None if report_only else time.time() - start,
            headline_dir=headline_dir,
            imbalance=imbalance,
        )
    )
    logger.info(f"Report written to {report}")
    return {"report": report, "results": results, "failures": failures}
