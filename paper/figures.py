"""The report's plots: the paper's Figure 1 (loss against p_t), the training losses of the
initialisation runs, and the speed/accuracy trade-off of Table 1e. Figure 4 is drawn by
:mod:`paper.loss_analysis`.

Plots use matplotlib's object API with the Agg canvas, so no display or pyplot state is needed.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import torch

from retinafocal.losses import sigmoid_focal_loss

__all__ = [
    "FIGURE1_GAMMAS",
    "focal_loss_curve",
    "plot_figure1",
    "plot_loss_histories",
    "plot_speed_accuracy",
    "plot_fl_margin",
    "plot_noprior_loss",
]

#: The gammas of the paper's Figure 1.
FIGURE1_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 5.0)


def _new_figure(size: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def focal_loss_curve(p_t: np.ndarray, gamma: float) -> np.ndarray:
    """The focal loss ``FL(p_t) = -(1 - p_t)^gamma log(p_t)`` (alpha off) at the given
    probabilities of the ground-truth class, computed by :func:`sigmoid_focal_loss` on the logit
    ``log(p_t / (1 - p_t))`` with target 1, in float64.

    Args:
        p_t: probabilities in (0, 1]; any shape.
        gamma: focusing parameter >= 0 (0 is cross-entropy).

    Returns:
        The losses, same shape as ``p_t``.
    """
    p = torch.as_tensor(np.asarray(p_t, dtype=np.float64))
    if bool(((p <= 0) | (p > 1)).any()):
        raise ValueError("focal_loss_curve: p_t must be in (0, 1]")
    logits = torch.logit(p)  # +inf at p = 1, where the loss is 0
    logits = torch.where(torch.isinf(logits), torch.full_like(logits, 800.0), logits)
    loss = sigmoid_focal_loss(logits, torch.ones_like(logits), alpha=-1.0, gamma=float(gamma),
                              reduction="none")  # fmt: skip
    return loss.numpy()


def plot_figure1(path: str, gammas: Sequence[float] = FIGURE1_GAMMAS, points: int = 500) -> str:
    """Figure 1 of the paper: loss against the probability of the ground-truth class."""
    p = np.linspace(1e-3, 1.0, points)
    fig = _new_figure((6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for g in gammas:
        label = f"gamma = {g:g}" + (" (cross-entropy)" if g == 0 else "")
        ax.plot(p, focal_loss_curve(p, g), label=label)
    ax.axvspan(0.6, 1.0, color="tab:green", alpha=0.08)
    ax.text(0.8, 4.5, "well-classified\nexamples", ha="center", va="top", fontsize=8)
    ax.set_xlabel("probability of ground truth class (p_t)")
    ax.set_ylabel("loss")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 5)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Focal loss -(1 - p_t)^gamma log(p_t), by retinafocal.losses")
    return _save(fig, path)


def plot_loss_histories(histories: Dict[str, Sequence[Sequence[float]]], path: str,
                        title: str = "") -> str:  # fmt: skip
    """Training loss (log scale) against iteration, one curve per run.

    Args:
        histories: run label -> ``[[iteration, total_loss, loss_cls], ...]``.
    """
    fig = _new_figure((6.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for label, history in histories.items():
        if not history:
            continue
        h = np.asarray(history, dtype=np.float64)
        (line,) = ax.plot(h[:, 0], h[:, 1], marker="o", markersize=3, label=f"{label}: total")
        ax.plot(h[:, 0], h[:, 2], linestyle="--", alpha=0.7, color=line.get_color(),
                label=f"{label}: classification")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median of 20 iterations)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_speed_accuracy(ours: Sequence[Tuple[float, float, str]],
                        paper: Sequence[Tuple[float, float, str]], path: str) -> str:  # fmt: skip
    """Table 1e as a plot: AP against inference time, ours (CPU) and the paper's (GPU) side by
    side, since the two time axes are not comparable.

    Args:
        ours, paper: ``(ms per image, AP, label)`` per point.
    """
    fig = _new_figure((10, 4))
    for i, (points, title) in enumerate(((ours, "ours (CPU, batch 1)"),
                                         (paper, "paper, Table 1e (Nvidia M40)"))):  # fmt: skip
        ax = fig.add_subplot(1, 2, i + 1)
        pts = [p for p in points if np.isfinite(p[0]) and np.isfinite(p[1])]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
            for ms, ap, label in pts:
                ax.annotate(label, (ms, ap), textcoords="offset points", xytext=(4, -10),
                            fontsize=8)  # fmt: skip
        ax.set_xlabel("inference time (ms / image)")
        ax.set_ylabel("COCO AP")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_fl_margin(points: Sequence[Dict[str, Any]], path: str) -> str:
    """The sweep's first figure: FL's AP (gamma 2, best alpha) minus the best alpha-balanced
    CE's, against binary terms per positive (log scale), one point per grid; hollow where a
    compared run did not meet the convergence rule. The paper's +2.9 AP is drawn at COCO's
    estimated 1e5 terms per positive.

    Args:
        points: :func:`paper.report_sweep.level_points` output (``level``, ``terms``,
            ``margin``, ``converged``).
    """
    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    pts = [p for p in points if np.isfinite(p["margin"]) and np.isfinite(p["terms"])]
    ax.plot([p["terms"] for p in pts], [p["margin"] for p in pts], color="tab:blue", alpha=0.5)
    for p in pts:
        ax.plot(p["terms"], p["margin"], marker="o", markersize=8, color="tab:blue",
                markerfacecolor="tab:blue" if p["converged"] else "white")  # fmt: skip
        ax.annotate(p["level"] + ("" if p["converged"] else " (not converged)"),
                    (p["terms"], p["margin"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)  # fmt: skip
    ax.plot(1e5, 34.0 - 31.1, marker="*", markersize=12, color="tab:red", linestyle="none",
            label="paper, COCO (Table 1b; ~1e5 terms/positive, estimated)")  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--", label="clear margin (1 AP)")
    ax.set_xscale("log")
    ax.set_xlabel("binary classification terms per positive anchor (measured)")
    ax.set_ylabel("AP(FL, gamma 2) - AP(best alpha-CE)")
    ax.set_title("Does the focal loss pay off? FL minus the best alpha-balanced CE")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_noprior_loss(points: Sequence[Dict[str, Any]], path: str) -> str:
    """The sweep's second figure: the first and the largest single-iteration loss of CE without
    the prior init (bias 0), and the first loss of CE and FL with it, against binary terms per
    positive (log-log); the dashed line is 0.5 log 2 per term, the expected first loss at
    bias 0 with alpha .5.

    Args:
        points: :func:`paper.report_sweep.level_points` output (``terms``, and ``no_prior``,
            ``ce_prior``, ``fl`` with ``first`` and ``largest``).
    """
    fig = _new_figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    pts = sorted((p for p in points if np.isfinite(p["terms"])), key=lambda p: p["terms"])
    terms = np.array([p["terms"] for p in pts])
    series = (
        ("no_prior", "first", "CE, no prior: first loss", "o", "tab:red"),
        ("no_prior", "largest", "CE, no prior: largest loss", "^", "tab:orange"),
        ("ce_prior", "first", "CE, prior pi = .01: first loss", "s", "tab:blue"),
        ("fl", "first", "FL, prior pi = .01: first loss", "D", "tab:green"),
    )
    for run, which, label, marker, color in series:
        y = np.array([p[run][which] for p in pts], dtype=np.float64)
        ok = np.isfinite(y) & (y > 0)
        if ok.any():
            ax.plot(terms[ok], y[ok], marker=marker, color=color, label=label)
    if len(terms):
        line = np.geomspace(terms.min() / 1.5, terms.max() * 1.5, 50)
        ax.plot(line, 0.5 * np.log(2) * line, linestyle="--", color="grey",
                label="0.5 log 2 per term (bias 0, alpha .5)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("binary classification terms per positive anchor (measured)")
    ax.set_ylabel("total training loss (one iteration)")
    ax.set_title("Initial loss against imbalance: CE without the prior init")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)
