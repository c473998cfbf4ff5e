"""Two gloo processes train a one-weight model; process 1's loss becomes NaN at iteration 1
(for ``test_distributed``)::

    python tests/engine/nan_worker.py OUT_DIR

Each process trains through :func:`~retinafocal.engine.checked_trainer` inside
:func:`~retinafocal.engine.results.recording_results`, as ``train_net.py`` does, catches the
:class:`~retinafocal.engine.NonFiniteLossError` and writes ``OUT_DIR/rank<r>.json``: the error's
iteration, terms and message, and its weight after the stop.
"""
import json
import os
import sys
from datetime import timedelta

import retinafocal  # noqa: F401  (compat first: the gloo launch on detectron2 v0.6)
import torch
from detectron2.engine import create_ddp_model, launch
from detectron2.utils import comm

from retinafocal.engine import NonFiniteLossError, checked_trainer, leave_process_group
from retinafocal.engine.results import recording_results

NAN_ITER = 1


class Toy(torch.nn.Module):
    """One weight; ``loss_scaled`` takes the batch's value, so a NaN batch makes it NaN."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return {"loss_plain": (self.weight**2).sum(), "loss_scaled": (self.weight * batch).sum()}


def train(out_dir: str) -> None:
    rank = comm.get_rank()
    batches = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)]
    if rank == 1:
        batches[NAN_ITER] = torch.tensor(float("nan"))
    model = create_ddp_model(Toy())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = checked_trainer(model, batches, optimizer, amp=False)
    record = {}
    try:
        with recording_results(out_dir, trainer):
            trainer.train(0, len(batches))
    except NonFiniteLossError as e:
        record = {"iteration": e.iteration, "terms": e.terms, "message": str(e)}
    record["weight"] = model.module.weight.item()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    leave_process_group()


if __name__ == "__main__":
    # A short collective timeout: should a process wait for the other in vain, it fails (and
    # exits) instead of hanging the test.
    launch(train, 2, dist_url="auto", args=(sys.argv[1],), timeout=timedelta(seconds=60))
