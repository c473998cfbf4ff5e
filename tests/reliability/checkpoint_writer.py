"""Child process of the SIGKILL test: saves checkpoints, then stalls half-way through a save.

    python checkpoint_writer.py SAVE_DIR SIGNAL_FILE

Saves ``model_0000001`` (iteration 1) and ``model_final`` (iteration 2) normally, then saves
``model_final`` again (iteration 3) with ``torch.save`` replaced by a writer that writes half of
the bytes, creates SIGNAL_FILE and sleeps, so that the parent can SIGKILL it mid-write.
"""
import io
import sys
import time

import torch

import retinafocal  # noqa: F401
from retinafocal import checkpoint as rf_checkpoint


def build(save_dir):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    checkpointer = rf_checkpoint.AtomicDetectionCheckpointer(
        model, save_dir, optimizer=optimizer, scheduler=scheduler
    )
    return model, optimizer, scheduler, checkpointer


def main(save_dir, signal_file):
    model, optimizer, scheduler, checkpointer = build(save_dir)
    checkpointer.save("model_0000001", iteration=1)
    scheduler.step()
    checkpointer.save("model_final", iteration=2)
    scheduler.step()
    real_save = torch.save

    def stalling_save(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        open(signal_file, "w").close()
        time.sleep(120)  # the parent kills us here

    rf_checkpoint.torch.save = stalling_save
    checkpointer.save("model_final", iteration=3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
