"""Figure 4 of the paper: cumulative distribution of the normalised loss of positive and negative
samples of a trained detector, scored with the focal loss at several gamma.

For each image (with its ground truth) the model runs in eval mode; the model's own
``label_anchors`` labels every anchor (class in [0, K) = foreground, K = background, -1 =
ignored). Each binary (anchor, class) example of the sigmoid classifier is a sample:

* a *positive* is the target-class element of a foreground anchor;
* a *negative* is any of the K elements of a background anchor (the other elements of a
  foreground anchor, and ignored anchors, are left out).

With ``x_t`` the logit signed so that ``p_t = sigmoid(x_t)``, a sample's loss at gamma is
``-(1 - p_t)^gamma log(p_t)`` (:func:`retinafocal.losses.sigmoid_focal_loss` with alpha off:
Figure 4 studies gamma alone). Positives and negatives are normalised separately to sum to one,
sorted by loss, and accumulated: the curve at x is the share of the total loss carried by the
fraction x of lowest-loss samples. The summary number is the fraction of samples, taken from the
highest loss down, that carries half of the loss.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from retinafocal.losses import sigmoid_focal_loss

__all__ = [
    "LossSamples",
    "signed_logits",
    "dense_logits_and_labels",
    "collect_loss_samples",
    "focal_losses",
    "normalized_loss_cdf",
    "fraction_carrying",
    "analyze_loss_samples",
    "plot_loss_cdf",
    "write_analysis",
    "DEFAULT_GAMMAS",
]

logger = logging.getLogger(__name__)

DEFAULT_GAMMAS: Tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)

#: Points per stored CDF curve (the json and the plot; the summary numbers use every sample).
CURVE_POINTS = 201


@dataclass
class LossSamples:
    """Signed logits ``x_t`` (``p_t = sigmoid(x_t)``) of the samples of some images.

    Attributes:
        positives: (P,) float64, one per foreground anchor (its target class).
        negatives: (M,) float64, K per background anchor (possibly a random subset, see
            ``negatives_sampled``).
        num_images: images the samples come from.
        num_negatives_total: negatives before any subsampling.
        negatives_sampled: True when ``negatives`` is a uniform random subset.
    """

    positives: Tensor
    negatives: Tensor
    num_images: int
    num_negatives_total: int
    negatives_sampled: bool = False


def signed_logits(logits: Tensor, labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """Split dense logits into positive and negative samples, signed so ``p_t = sigmoid(x_t)``.

    Args:
        logits: (N, R, K) class logits of N images and R anchors.
        labels: (N, R) int64 anchor labels: [0, K) = class, K = background, -1 = ignored.
        num_classes: K.

    Returns:
        positives: (P,) the target-class logit of each foreground anchor.
        negatives: (B * K,) minus every logit of each of the B background anchors.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape or logits.shape[2] != num_classes:
        raise ValueError(
            f"signed_logits: logits must be (N, R, K={num_classes}) and labels (N, R); got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < -1 or labels.max() > num_classes):
        raise ValueError(
            f"signed_logits: labels must be in [-1, {num_classes}], got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    foreground = (labels >= 0) & (labels < num_classes)
    positives = logits[foreground].gather(1, labels[foreground].unsqueeze(1)).squeeze(1)
    negatives = -logits[labels == num_classes].reshape(-1)
    return positives, negatives


@torch.no_grad()
def dense_logits_and_labels(
    model: torch.nn.Module, batched_inputs: List[Dict[str, Any]]
) -> Tuple[Tensor, Tensor]:
    """Run a detectron2 dense detector (``FocalRetinaNet`` or detectron2's ``RetinaNet``) on
    inputs with ground truth and label its anchors with its own ``label_anchors``.

    Args:
        model: a ``DenseDetector`` with ``label_anchors(anchors, gt_instances)``.
        batched_inputs: detectron2 inputs with ``image`` and ``instances`` (the ground truth,
            in the resized image's coordinates).

    Returns:
        logits: (N, R, K) float; labels: (N, R) int64 (K = background, -1 = ignored).
    """
    for name in ("preprocess_image", "backbone", "head", "head_in_features", "anchor_generator",
                 "label_anchors", "num_classes"):  # fmt: skip
        if not hasattr(model, name):
            raise TypeError(
                f"analyze_loss needs a detectron2 dense detector (FocalRetinaNet, RetinaNet); "
                f"{type(model).__name__} has no {name!r}"
            )
    missing = [i for i, x in enumerate(batched_inputs) if "instances" not in x]
    if missing:
        raise ValueError(
            f"inputs {missing} have no 'instances' (ground truth); map the dataset with "
            "is_train=True so the annotations are kept"
        )
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    predictions = model.head(features)
    logits, _ = model._transpose_dense_predictions(predictions, [model.num_classes, 4])
    anchors = model.anchor_generator(features)
    gt_instances = [x["instances"].to(images.tensor.device) for x in batched_inputs]
    labels, _ = model.label_anchors(anchors, gt_instances)
    return torch.cat(logits, dim=1).float(), torch.stack(labels)


@torch.no_grad()
def collect_loss_samples(model: torch.nn.Module, inputs: Iterable[Dict[str, Any]], *,
                         num_images: int, max_negatives: int = 10_000_000, seed: int = 0,
                         batch_size: int = 8) -> LossSamples:  # fmt: skip
    """Signed logits of every positive and negative over ``inputs``.

    Args:
        model: see :func:`dense_logits_and_labels`; put in eval mode here.
        inputs: mapped dataset dicts with ground truth (``image``, ``instances``).
        num_images: how many of ``inputs`` to use (also sizes the negative budget per image).
        max_negatives: keep at most about this many negatives: when an image has more than
            ``max_negatives / num_images``, a uniform random subset of that size is kept (the
            paper's Figure 4 used about 10^7 negatives).
        seed: seed of that subsampling.
        batch_size: images per forward pass. Only images of the same size share a batch, so
            no image gets padding (and padding anchors) that it would not have alone.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    per_image = max(1, math.ceil(max_negatives / max(num_images, 1)))
    generator = torch.Generator().manual_seed(seed)
    positives: List[Tensor] = []
    negatives: List[Tensor] = []
    state = {"total_neg": 0, "count": 0, "sampled": False}

    def flush(batch: List[Dict[str, Any]]) -> None:
        logits, labels = dense_logits_and_labels(model, batch)
        for i in range(len(batch)):
            pos, neg = signed_logits(logits[i : i + 1], labels[i : i + 1], model.num_classes)
            state["total_neg"] += neg.numel()
            if neg.numel() > per_image:
                keep = torch.randperm(neg.numel(), generator=generator)[:per_image]
                neg, state["sampled"] = neg.cpu()[keep], True
            positives.append(pos.double().cpu())
            negatives.append(neg.double().cpu())
        state["count"] += len(batch)

    batch: List[Dict[str, Any]] = []
    taken = 0
    for x in inputs:
        if taken >= num_images:
            break
        taken += 1
        if batch and (len(batch) == batch_size or x["image"].shape != batch[0]["image"].shape):
            flush(batch)
            batch = []
        batch.append(x)
    if batch:
        flush(batch)
    if state["count"] == 0:
        raise ValueError("collect_loss_samples: no images to analyse")
    return LossSamples(
        positives=torch.cat(positives),
        negatives=torch.cat(negatives),
        num_images=state["count"],
        num_negatives_total=state["total_neg"],
        negatives_sampled=state["sampled"],
    )


def focal_losses(signed: Tensor, gamma: float) -> Tensor:
    """Per-sample focal loss ``-(1 - p_t)^gamma log(p_t)`` of signed logits (alpha off), in
    float64, through :func:`retinafocal.losses.sigmoid_focal_loss`."""
    x = signed.double()
    return sigmoid_focal_loss(x, torch.ones_like(x), alpha=-1.0, gamma=float(gamma),
                              reduction="none")  # fmt: skip


def normalized_loss_cdf(
    losses: Tensor, points: int = CURVE_POINTS
) -> Tuple[np.ndarray, np.ndarray]:
    """The curve of Figure 4 for one set of samples.

    Args:
        losses: (S,) non-negative per-sample losses.
        points: number of curve points, at evenly spaced fractions 0 .. 1.

    Returns:
        fractions (points,): fraction of samples, lowest loss first;
        cumulative (points,): share of the total loss carried by that fraction (0 .. 1;
        linearly interpolated between samples). All zeros when the total loss is 0.
    """
    fractions = np.linspace(0.0, 1.0, points)
    values = np.sort(losses.detach().double().cpu().numpy())
    total = values.sum()
    if values.size == 0 or total <= 0:
        return fractions, np.zeros_like(fractions)
    cumulative = np.concatenate([[0.0], np.cumsum(values) / total])
    sample_fraction = np.arange(values.size + 1) / values.size
    return fractions, np.interp(fractions, sample_fraction, cumulative)


def fraction_carrying(losses: Tensor, share: float = 0.5) -> float:
    """The smallest fraction of samples, taken from the highest loss down, whose losses sum to at
    least ``share`` of the total. NaN for no samples or a zero total.

    Example: losses [4, 1, 1, 1, 1] and share 0.5: the top sample carries 4/8 = 0.5 -> 1/5 = 0.2.
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    values = np.sort(losses.detach().double().cpu().numpy())[::-1]
    total = values.sum()
    if values.size == 0 or total <= 0:
        return math.nan
    cumulative = np.cumsum(values) / total
    # A relative tolerance, so that a share reached exactly is not missed by rounding.
    k = int(np.searchsorted(cumulative, share * (1 - 1e-12), side="left")) + 1
    return min(k, values.size) / values.size


def analyze_loss_samples(samples: LossSamples,
                         gammas: Sequence[float] = DEFAULT_GAMMAS) -> Dict[str, Any]:  # fmt: skip
    """Curves and half-loss fractions of positives and negatives at each gamma.

    Returns a json-ready dict: ``gammas``, ``num_images``, ``num_positives``, ``num_negatives``
    (analysed), ``num_negatives_total``, ``negatives_sampled``, ``half_loss_fraction``
    (``{"positives": {gamma: f}, "negatives": {gamma: f}}``) and ``curves``
    (``{"fraction": [...], "positives": {gamma: [...]}, "negatives": {gamma: [...]}}``);
    gamma keys are strings ("2" for 2.0).
    """
    out: Dict[str, Any] = {
        "gammas": [float(g) for g in gammas],
        "num_images": samples.num_images,
        "num_positives": int(samples.positives.numel()),
        "num_negatives": int(samples.negatives.numel()),
        "num_negatives_total": int(samples.num_negatives_total),
        "negatives_sampled": bool(samples.negatives_sampled),
        "half_loss_fraction": {"positives": {}, "negatives": {}},
        "curves": {"positives": {}, "negatives": {}},
    }
    for kind, signed in (("positives", samples.positives), ("negatives", samples.negatives)):
        for g in gammas:
            losses = focal_losses(signed, g)
            fractions, cdf = normalized_loss_cdf(losses)
            key = f"{float(g):g}"
            out["half_loss_fraction"][kind][key] = fraction_carrying(losses, 0.5)
            out["curves"][kind][key] = [round(float(v), 6) for v in cdf]
            out["curves"]["fraction"] = [round(float(v), 6) for v in fractions]
    return out


def plot_loss_cdf(analysis: Dict[str, Any], path: str, title: str = "") -> str:
    """Write Figure 4 as a PNG: two panels (positives, negatives), one curve per gamma."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    fractions = analysis["curves"]["fraction"]
    kinds = (("positives", "foreground (positive) samples"),
             ("negatives", "background (negative) samples"))  # fmt: skip
    for i, (kind, name) in enumerate(kinds):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, curve in analysis["curves"][kind].items():
            half = analysis["half_loss_fraction"][kind][key]
            ax.plot(fractions, curve, label=f"gamma = {key}  (half the loss: {100 * half:.2g}%)")
        ax.set_xlabel(f"fraction of {kind}")
        ax.set_ylabel("cumulative normalized loss")
        count = analysis[f"num_{kind}"]
        ax.set_title(f"{name}, n = {count:,}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def write_analysis(analysis: Dict[str, Any], output_dir: str, title: str = "") -> Dict[str, str]:
    """Write ``loss_cdf.json`` and ``loss_cdf.png`` under ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, "loss_cdf.json")
    with open(json_path, "w") as f:
        json.dump(analysis, f, indent=1)
    png_path = plot_loss_cdf(analysis, os.path.join(output_dir, "loss_cdf.png"), title)
    return {"json": json_path, "png": png_path}
