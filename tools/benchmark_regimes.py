"""The regimes the detector benchmark runs its random-weight detectors in: what their head
outputs look like, set identically for every detector. Used by ``benchmark_detectors.py``.

A randomly initialised RetinaNet head gives almost constant class logits (weights N(0, 0.01)):
at the paper's prior bias no score passes the test threshold and the post-processing has nothing
to do; with the bias at logit(threshold) about half of all (anchor, class) pairs pass and it
works at full load. Neither is what a trained detector does. The regimes:

* ``realistic`` (the headline): the last class conv is scaled so the logits spread as a trained
  model's do, and its bias set so that :data:`REALISTIC_CANDIDATES_PER_IMAGE` (anchor, class)
  pairs per image pass the score threshold, the number a trained model gives at COCO scale; the
  last box conv is scaled so the deltas spread as a trained model's. Training and inference both
  run with these weights.
* ``all-candidates``: the class bias at logit(threshold), unscaled weights: about half of all
  pairs pass, every level fills its top-1000 and NMS gets 5000 candidates per image (the earlier
  benchmark's inference).
* ``prior``: the paper's prior bias, unscaled weights: almost no candidate (the earlier
  benchmark's training).

The realistic figures come from the embedded recipe's trained model (``make train``, bbox AP
72.66, on the main branch of 2026-11-30) on shapes_val, measured with
``tools/trained_model_outputs.py``: see :data:`TRAINED_EMBEDDED`. The COCO-scale assumption:
candidates per object carry over to COCO (anchors are scaled with the objects: 3 scales x 3
ratios per level, an octave apart, so an object meets about as many anchors at any size), and
COCO has :data:`COCO_OBJECTS_PER_IMAGE` objects per image.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor, nn

from benchmark_setup import REGIMES

__all__ = [
    "REGIMES",
    "SCORE_THRESH",
    "TRAINED_EMBEDDED",
    "COCO_OBJECTS_PER_IMAGE",
    "REALISTIC_CANDIDATES_PER_IMAGE",
    "apply_head",
    "head_outputs",
    "output_statistics",
    "regime_heads",
]

SCORE_THRESH = 0.05
_PRIOR_PROB = 0.01

#: Head outputs of the ``make train`` model on the 200 images of shapes_val (median over the
#: images; ranges are 10th-90th percentiles), from
#: ``python tools/trained_model_outputs.py --config-file
#: configs/Embedded/retinanet_R18_FPN_shapes.yaml --weights output/shapes_R18_FPN/model_final.pth``.
TRAINED_EMBEDDED = {
    "candidates_per_image": 515.0,
    "candidates_per_image_range": (268.0, 831.0),
    "candidates_per_object": 82.0,
    "candidates_per_object_range": (68.5, 99.75),
    "logit_std": 0.638,
    "logit_range": (-8.68, 4.46),
    "delta_std": 0.298,
}

#: Ground-truth objects per image in COCO train2017 (860,001 non-crowd boxes / 117,266 images).
COCO_OBJECTS_PER_IMAGE = 7.3

#: Candidates (pairs above the score threshold) per image of the realistic regime: the trained
#: model's per object (median) times COCO's objects per image, 82 x 7.3 = 599. (Its 10th-90th
#: percentile per object, 68.5-99.75, gives 500-728 at COCO scale.)
REALISTIC_CANDIDATES_PER_IMAGE = 600


def head_outputs(
    convs: Sequence[nn.Module], run: Callable[[], Any]
) -> List[List[Tensor]]:
    """The outputs of each of ``convs`` (one tensor per call: per pyramid level) during
    ``run()``, as float32 copies (N, C, Hi, Wi)."""
    captured: List[List[Tensor]] = [[] for _ in convs]

    def keep(k: int, out: Tensor) -> None:
        # A copy: detectron2's post-processing turns the logits into scores in place.
        captured[k].append(out.detach().float().clone())

    hooks = [conv.register_forward_hook(lambda m, i, out, k=k: keep(k, out))
             for k, conv in enumerate(convs)]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return captured


def _flat_per_image(levels: List[Tensor]) -> Tensor:
    """(N, P): every output value of each image, over all levels."""
    return torch.cat([x.flatten(1) for x in levels], dim=1)


def output_statistics(class_levels: List[Tensor]) -> Dict[str, float]:
    """Candidates per image (pairs whose score passes :data:`SCORE_THRESH`; median and range
    over the images), and the logits' spread, of per-level class logits (N, A*K, Hi, Wi)."""
    logits = _flat_per_image(class_levels)
    candidates = (logits.sigmoid() > SCORE_THRESH).sum(dim=1).float()
    return {
        "candidates_per_image": float(candidates.median()),
        "candidates_min": float(candidates.min()),
        "candidates_max": float(candidates.max()),
        "logit_std": float(logits.std()),
        "logit_min": float(logits.min()),
        "logit_max": float(logits.max()),
    }


@torch.no_grad()
def regime_heads(
    class_conv: nn.Conv2d,
    box_conv: nn.Conv2d,
    run: Callable[[], Any],
) -> Dict[str, Dict[str, Tensor]]:
    """Weights and biases of the last class and box convs for each of :data:`REGIMES`, from
    their current weights and their outputs during ``run()`` (an inference on a few images).

    Returns:
        ``{regime: {"class_weight", "class_bias", "box_weight", "box_bias"}}``.
    """
    class_out, box_out = head_outputs([class_conv, box_conv], run)
    class_bias = class_conv.bias.detach().float().view(1, -1, 1, 1)
    box_bias = box_conv.bias.detach().float().view(1, -1, 1, 1)
    raw_logits = _flat_per_image([x - class_bias for x in class_out])  # (N, P)
    raw_deltas = _flat_per_image([x - box_bias for x in box_out])
    trained = TRAINED_EMBEDDED
    class_scale = trained["logit_std"] / float(raw_logits.std())
    box_scale = trained["delta_std"] / float(raw_deltas.std())
    scaled = raw_logits * class_scale
    # Per image, the bias that lifts exactly its `wanted` largest pairs above the threshold
    # (the midpoint to the next one); the median over the images, so that a typical image has
    # `wanted` candidates. (Images shift all their logits alike, so a bias chosen over the
    # pooled pairs would give a few images all the candidates.)
    wanted = max(1, round(REALISTIC_CANDIDATES_PER_IMAGE))
    top = scaled.topk(min(wanted + 1, scaled.shape[1]), dim=1).values
    threshold_logit = math.log(SCORE_THRESH / (1 - SCORE_THRESH))
    bias = threshold_logit - float(((top[:, -2] + top[:, -1]) / 2).median())

    def head(cw: Tensor, cb: float, bw: Tensor, bb: Tensor) -> Dict[str, Tensor]:
        return {"class_weight": cw.clone(), "class_bias": torch.full_like(class_conv.bias, cb),
                "box_weight": bw.clone(), "box_bias": bb.clone()}

    plain = (class_conv.weight, box_conv.weight, box_conv.bias)
    prior = -math.log((1 - _PRIOR_PROB) / _PRIOR_PROB)
    return {
        "realistic": head(class_conv.weight * class_scale, bias, box_conv.weight * box_scale,
                          torch.zeros_like(box_conv.bias)),
        "all-candidates": head(plain[0], threshold_logit, plain[1], plain[2]),
        "prior": head(plain[0], prior, plain[1], plain[2]),
    }


@torch.no_grad()
def apply_head(class_conv: nn.Conv2d, box_conv: nn.Conv2d, head: Dict[str, Tensor]) -> None:
    """Copy one regime's tensors (from :func:`regime_heads`) into the convs, keeping their
    memory layout."""
    class_conv.weight.copy_(head["class_weight"])
    class_conv.bias.copy_(head["class_bias"])
    box_conv.weight.copy_(head["box_weight"])
    box_conv.bias.copy_(head["box_bias"])
