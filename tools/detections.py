"""Detections of one image, and whether two detectors (or a model and its export) agree."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

__all__ = ["Detections", "compare_detections"]


@dataclass
class Detections:
    """Detections of one image: ``boxes`` (D, 4) XYXY, ``scores`` (D,), ``classes`` (D,) int64,
    all on the CPU."""

    boxes: Tensor
    scores: Tensor
    classes: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])



def compare_detections(
    reference: Detections, other: Detections, *, box_atol: float = 1e-2, score_atol: float = 1e-4
) -> Optional[str]:
    """None when ``other`` has the same detections as ``reference`` within tolerance, else a
    sentence saying what differs.

    Detections are matched in score order. Candidates whose scores tie (within
    ``score_atol``) with a neighbour may come in either order, so within such a run they are
    compared as sets: each must have a partner of the same class and box in the other run.
    """
    if len(reference) != len(other):
        return f"{len(other)} detections instead of {len(reference)}"
    if len(reference) == 0:
        return None
    ref_scores, other_scores = reference.scores.double(), other.scores.double()
    score_err = float((ref_scores - other_scores).abs().max())
    if score_err > score_atol:
        return f"scores differ by up to {score_err:.3g} (tolerance {score_atol})"
    # Runs of near-equal scores: a new run starts where the score drops by more than atol.
    starts = [0] + [i for i in range(1, len(reference))
                    if ref_scores[i - 1] - ref_scores[i] > score_atol] + [len(reference)]
    for a, b in zip(starts[:-1], starts[1:]):
        unmatched = list(range(a, b))
        for i in range(a, b):
            partner = next(
                (j for j in unmatched
                 if int(other.classes[j]) == int(reference.classes[i])
                 and float((other.boxes[j] - reference.boxes[i]).abs().max()) <= box_atol),
                None,
            )
            if partner is None:
                return (
                    f"detection {i} (class {int(reference.classes[i])}, box "
                    f"{[round(v, 2) for v in reference.boxes[i].tolist()]}, score "
                    f"{float(reference.scores[i]):.4f}) has no match within {box_atol} px"
                )
            unmatched.remove(partner)
    return None
