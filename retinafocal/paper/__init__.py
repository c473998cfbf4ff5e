"""Reproduce the paper's evidence: the ablation grid of Table 1, Figure 1 and Figure 4.

* :mod:`.grid`: the runs and report rows (``shapes`` miniature, ``shapes-full``, ``coco``);
* :mod:`.runner`: runs a grid through ``train_net.py``, seeded and resumable;
* :mod:`.loss_analysis`: Figure 4, the loss CDFs of any checkpoint on any dataset;
* :mod:`.figures`: Figure 1 and the report's other plots;
* :mod:`.report`: ``REPORT.md`` with our numbers next to the paper's;
* :mod:`.references`: the paper's numbers.

Entry points: ``tools/paper.py`` (``make paper``) and ``tools/analyze_loss.py``.
"""
from .grid import GRID_NAMES, Grid, Row, RunSpec, build_grid
from .loss_analysis import analyze_loss_samples, analyze_model, collect_loss_samples
from .report import ReportInputs, evaluate_claims, write_report
from .runner import GridRunner, LaunchOptions, RunResult, load_results

__all__ = [
    "GRID_NAMES",
    "Grid",
    "GridRunner",
    "LaunchOptions",
    "ReportInputs",
    "Row",
    "RunResult",
    "RunSpec",
    "analyze_loss_samples",
    "analyze_model",
    "build_grid",
    "collect_loss_samples",
    "evaluate_claims",
    "load_results",
    "write_report",
]
