"""detectron2's training loops with the one loss check, which says what went wrong and where to
restart.

detectron2's ``SimpleTrainer`` stops with a bare ``FloatingPointError`` when the summed loss,
gathered over the workers, is not finite. The checked trainers here test every loss term of each
worker first, in the same place (after backward, before ``optimizer.step()`` can write NaN into
the weights), with one device-to-host copy, and raise :class:`NonFiniteLossError`, which names the
iteration, the non-finite terms and the last checkpoint that still holds finite weights. The
model does not check its losses itself: this is the only check of ours.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from fvcore.common.checkpoint import Checkpointer

from ..modeling.precision import check_precision_and_amp

__all__ = [
    "NonFiniteLossError",
    "FiniteLossCheckMixin",
    "CheckedSimpleTrainer",
    "CheckedAMPTrainer",
    "checked_trainer",
]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite.

    Attributes:
        iteration: the training iteration (0-based) whose losses were not finite.
        terms: names of the non-finite loss terms, e.g. ``["loss_cls"]``.
        checkpoint: path of the last checkpoint written, "" when there is none. Its tensors
            are finite: :class:`~retinafocal.checkpoint.AtomicDetectionCheckpointer` refuses to
            save others.
    """

    def __init__(self, iteration: int, terms: List[str], checkpoint: str, detail: str) -> None:
        self.iteration = iteration
        self.terms = terms
        self.checkpoint = checkpoint
        where = (
            f"The last checkpoint is {checkpoint}, whose tensors are all finite (resume from it "
            "with --resume, perhaps with a lower learning rate or a longer warm-up)."
            if checkpoint
            else "No checkpoint has been written yet."
        )
        named = f"non-finite term(s) {', '.join(terms)}; " if terms else ""
        super().__init__(
            f"Loss became NaN or infinite at iteration {iteration}: {named}{detail}. The "
            f"optimizer step of this iteration was not taken. {where}"
        )


class FiniteLossCheckMixin:
    """Mix into a detectron2 ``SimpleTrainer`` subclass to check every loss term before the
    optimizer step; raises :class:`NonFiniteLossError`.

    The check runs at the start of ``_write_metrics``, which both detectron2 versions call after
    backward and before the step, and before detectron2's own check of the summed loss there.
    (Current detectron2 can run ``_write_metrics`` in a thread, ``async_write_metrics=True``,
    where an error would not stop training; :func:`checked_trainer` leaves that off.)

    ``checkpointer`` (optional attribute, set by the owner of the trainer) names the last good
    checkpoint in the message.
    """

    checkpointer: Optional[Checkpointer] = None
    iter: int

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any):
        # Each worker checks its own losses, so the one that produced the NaN names it. One
        # stacked copy to the host: a single sync, however many terms there are.
        host: Dict[str, float] = {}
        if loss_dict:
            values = torch.stack([v.detach().float().sum() for v in loss_dict.values()]).cpu()
            host = dict(zip(loss_dict, values.tolist()))
        bad = [k for k, v in host.items() if not math.isfinite(v)]
        if bad:
            detail = (
                f"losses {host}. Check the inputs for NaN/Inf (images, boxes) and the learning "
                "rate"
            )
            raise NonFiniteLossError(self.iter, bad, self._last_checkpoint(), detail)
        return super()._write_metrics(loss_dict, *args, **kwargs)  # type: ignore[misc]

    def _last_checkpoint(self) -> str:
        ckpt = self.checkpointer
        if ckpt is None or not ckpt.has_checkpoint():
            return ""
        return ckpt.get_checkpoint_file()


class CheckedSimpleTrainer(FiniteLossCheckMixin, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with :class:`FiniteLossCheckMixin`."""


class CheckedAMPTrainer(FiniteLossCheckMixin, AMPTrainer):
    """detectron2's ``AMPTrainer`` with :class:`FiniteLossCheckMixin`."""


def checked_trainer(
    model: torch.nn.Module,
    data_loader: Any,
    optimizer: torch.optim.Optimizer,
    *,
    amp: bool,
    checkpointer: Optional[Checkpointer] = None,
) -> SimpleTrainer:
    """Build the checked ``SimpleTrainer`` (``amp=False``) or ``AMPTrainer`` (``amp=True``).

    A model with a ``precision`` (FocalRetinaNet) must agree with ``amp``: fp16 needs AMP's
    gradient scaler, and AMP's fp16 autocast contradicts bf16
    (:func:`~retinafocal.modeling.precision.check_precision_and_amp`, whose error names both
    keys).
    """
    # DDP wraps the model; the precision is an attribute of the model inside.
    precision = getattr(getattr(model, "module", model), "precision", None)
    if precision is not None:
        check_precision_and_amp(precision, amp)
    trainer = (CheckedAMPTrainer if amp else CheckedSimpleTrainer)(model, data_loader, optimizer)
    trainer.checkpointer = checkpointer
    return trainer
