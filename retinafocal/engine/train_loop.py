"""detectron2's training loops with a loss check that says what went wrong and where to restart.

detectron2's ``SimpleTrainer`` already stops with a ``FloatingPointError`` when the summed loss
is not finite, before ``optimizer.step()`` can write NaN into the weights. Its message gives the
iteration and all loss values; the checked trainers here raise first, from the same place, with
the non-finite terms named and the last checkpoint that still holds finite weights.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from fvcore.common.checkpoint import Checkpointer

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
        terms: names of the non-finite loss terms, e.g. ``["loss_cls"]``; empty when the model
            raised the error itself without naming them in a ``terms`` attribute.
        checkpoint: path of the last checkpoint written, "" when there is none.
    """

    def __init__(self, iteration: int, terms: List[str], checkpoint: str, detail: str) -> None:
        self.iteration = iteration
        self.terms = terms
        self.checkpoint = checkpoint
        where = (
            f"The last checkpoint is {checkpoint} (resume from it with --resume, perhaps with a "
            "lower learning rate or a longer warm-up)."
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

    A ``FloatingPointError`` raised inside the step (by the model's own loss check, or by
    detectron2's check of the summed loss) is raised again as :class:`NonFiniteLossError`, with
    the original as its cause, so the message always has the iteration and the checkpoint.

    ``checkpointer`` (optional attribute, set by the owner of the trainer) names the last good
    checkpoint in the message.
    """

    checkpointer: Optional[Checkpointer] = None
    iter: int

    def run_step(self) -> None:
        try:
            super().run_step()  # type: ignore[misc]
        except NonFiniteLossError:
            raise
        except FloatingPointError as e:
            terms = list(getattr(e, "terms", None) or [])
            raise NonFiniteLossError(self.iter, terms, self._last_checkpoint(), str(e)) from e

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any):
        # Each worker checks its own losses, so the one that produced the NaN names it.
        bad = [k for k, v in loss_dict.items() if not torch.isfinite(v.detach()).all()]
        if bad:
            values = {k: float(v.detach().float().mean()) for k, v in loss_dict.items()}
            raise NonFiniteLossError(self.iter, bad, self._last_checkpoint(), f"losses {values}")
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
    """Build the checked ``SimpleTrainer`` (``amp=False``) or ``AMPTrainer`` (``amp=True``)."""
    trainer = (CheckedAMPTrainer if amp else CheckedSimpleTrainer)(model, data_loader, optimizer)
    trainer.checkpointer = checkpointer
    return trainer
