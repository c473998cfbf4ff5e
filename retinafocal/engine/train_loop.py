"""detectron2's training loops with one loss check that says what went wrong and where to restart.

detectron2's ``SimpleTrainer`` stops with a bare ``FloatingPointError`` when the summed loss is
not finite. The checked trainers test every loss term of each worker first, before
``optimizer.step()`` could write NaN into the weights, and every worker raises
:class:`NonFiniteLossError` when one finds a NaN. The model itself checks no loss.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

from ..modeling.precision import check_precision_and_amp

__all__ = ["NonFiniteLossError", "CheckedSimpleTrainer", "CheckedAMPTrainer", "checked_trainer"]


class NonFiniteLossError(FloatingPointError):
    """Loss terms ``terms`` (e.g. ``["loss_cls"]``) became NaN or infinite at training
    ``iteration`` (0-based); ``checkpoint`` is the last checkpoint written ("" when none), whose
    tensors are finite: :class:`~retinafocal.checkpoint.AtomicDetectionCheckpointer` saves no
    others."""

    def __init__(self, iteration: int, terms: List[str], checkpoint: str, detail: str) -> None:
        self.iteration = iteration
        self.terms = terms
        self.checkpoint = checkpoint
        self.detail = detail
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

    def __reduce__(self) -> Any:  # pickle (process pools): rebuild from the arguments
        return type(self), (self.iteration, self.terms, self.checkpoint, self.detail)


class FiniteLossCheckMixin:
    """Mixed into a ``SimpleTrainer`` subclass: the check, in ``_write_metrics``, which both
    detectron2 versions call between backward and the step, before their own check of the sum
    (current detectron2's ``async_write_metrics=True`` would run it in a thread, where an error
    cannot stop training: left off). ``checkpointer`` names the last good checkpoint."""

    checkpointer: Optional[Checkpointer] = None
    iter: int

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any):
        # Each worker checks its own losses, so the one that produced the NaN names it; one
        # stacked copy to the host is a single sync however many terms there are.
        values = torch.stack([v.detach().float().sum() for v in loss_dict.values()]).cpu()
        host: Dict[str, float] = dict(zip(loss_dict, values.tolist()))
        bad = [k for k, v in host.items() if not math.isfinite(v)]
        # All workers stop together, the main one (which writes results.json) included: one
        # that went on would wait for the stopped one in detectron2's gather of the metrics.
        failed = [r for r in comm.all_gather((comm.get_rank(), bad, host)) if r[1]]
        if failed:
            rank, bad, host = failed[0]
            ckpt = self.checkpointer
            last = ckpt.get_checkpoint_file() if ckpt is not None and ckpt.has_checkpoint() else ""
            hint = "Check the inputs for NaN/Inf (images, boxes) and the learning rate"
            where = f"process {rank}'s " if comm.get_world_size() > 1 else ""
            raise NonFiniteLossError(self.iter, bad, last, f"{where}losses {host}. {hint}")
        return super()._write_metrics(loss_dict, *args, **kwargs)  # type: ignore[misc]


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
    """The checked ``SimpleTrainer`` (``amp=False``) or ``AMPTrainer`` (``amp=True``); a model
    with a ``precision`` (FocalRetinaNet) must agree with ``amp``
    (:func:`~retinafocal.modeling.precision.check_precision_and_amp` raises otherwise)."""
    # DDP wraps the model; the precision is an attribute of the model inside.
    precision = getattr(getattr(model, "module", model), "precision", None)
    if precision is not None:
        check_precision_and_amp(precision, amp)
    trainer = (CheckedAMPTrainer if amp else CheckedSimpleTrainer)(model, data_loader, optimizer)
    trainer.checkpointer = checkpointer
    return trainer
