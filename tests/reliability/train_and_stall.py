"""Run train_net.py, but stall half-way through writing one checkpoint, for a SIGKILL test.

    python train_and_stall.py CHECKPOINT_BASENAME SIGNAL_FILE -- <train_net.py arguments>

When the checkpointer writes CHECKPOINT_BASENAME (e.g. ``model_0000003.pth``), half of its
bytes are written to the temporary file, SIGNAL_FILE is created and the process sleeps, so the
parent can SIGKILL it in the middle of the save. Everything else is train_net.py unchanged.
"""
import io
import os
import runpy
import sys
import time

import retinafocal  # noqa: F401
from retinafocal import checkpoint as rf_checkpoint

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    target, signal_file = sys.argv[1], sys.argv[2]
    train_args = sys.argv[sys.argv.index("--") + 1 :]
    real_atomic_write = rf_checkpoint.atomic_write

    def stalling_atomic_write(path, write, *args, **kwargs):
        if os.path.basename(path) != target:
            return real_atomic_write(path, write, *args, **kwargs)

        def write_half_then_stall(f):
            buffer = io.BytesIO()
            write(buffer)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            open(signal_file, "w").close()
            time.sleep(300)  # the parent kills us here

        return real_atomic_write(path, write_half_then_stall, *args, **kwargs)

    rf_checkpoint.atomic_write = stalling_atomic_write
    sys.argv = [os.path.join(REPO_ROOT, "train_net.py")] + train_args
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
