#!/usr/bin/env python
"""A stand-in for train_net.py in the runner tests: writes the ``results.json`` that
train_net.py writes (schema in retinafocal.engine.results) and a model_final.pth, in a few
milliseconds.

It takes train_net.py's arguments; the behaviour comes from fake keys among the overrides:
``FAKE.MODE`` ok | diverge (non-finite loss) | crash | explode (a logged loss 15x the first) |
nodet (no detection to evaluate) | silent (exits 0 without a results file), ``FAKE.AP`` the AP
to report. Every call is appended to ``<OUTPUT_DIR>/../calls.txt`` as
``name mode eval_only weights threads``.
"""
import json
import os
import sys


def parse(argv):
    """(``KEY VALUE`` overrides as a dict, whether --eval-only was given)."""
    takes_value = {"--config-file", "--num-gpus", "--num-machines", "--machine-rank", "--dist-url"}
    opts, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value:
            i += 2
            continue
        if not argv[i].startswith("--"):
            opts.append(argv[i])
        i += 1
    return dict(zip(opts[0::2], opts[1::2])), "--eval-only" in argv


def results(*, status="completed", eval_only=False, bbox=None, no_detections=False,
            losses=(), non_finite=None):  # fmt: skip
    return {
        "schema": 2,
        "status": status,
        "eval_only": eval_only,
        "iterations": 0 if eval_only else 60,
        "max_iter": 0 if eval_only else 60,
        "train_seconds": None if eval_only else 6.2,
        "s_per_iter": None if eval_only else 0.1034,
        "bbox": bbox,
        "inference_s_per_image": 0.0125,
        "no_detections": no_detections,
        "loss_history": {
            "iteration": [19, 39, 59][: len(losses)],
            "total_loss": list(losses),
            "loss_cls": [None if v is None else v / 2 for v in losses],
        },
        "loss_extremes": {} if eval_only else {
            "first": {"iteration": 0, "total_loss": 2.5, "loss_cls": 2.0},
            "largest": {"iteration": 0, "total_loss": 2.5, "loss_cls": 2.0},
        },
        # A training run's evaluations: after 45 of its 60 iterations (2 AP less), and the end.
        "evaluations": {} if eval_only or bbox is None else {
            "iteration": [45, 60],
            "AP": [None if bbox.get("AP") is None else bbox["AP"] - 2, bbox.get("AP")],
            "AP50": [None, None], "AP75": [None, None],
        },
        "non_finite": non_finite,
    }  # fmt: skip


def main(argv):
    kv, eval_only = parse(argv)
    out = kv["OUTPUT_DIR"]
    mode = kv.get("FAKE.MODE", "ok")
    ap = float(kv.get("FAKE.AP", "10"))
    weights = kv.get("MODEL.WEIGHTS", "")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(os.path.dirname(out), "calls.txt"), "a") as f:
        f.write(f"{os.path.basename(out)} {mode} {int(eval_only)} {weights or '-'} "
                f"{os.environ.get('OMP_NUM_THREADS', '')}\n")

    def write(data):
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(data, f)

    if eval_only and not os.path.isfile(weights):
        print(f"FileNotFoundError: {weights}", file=sys.stderr)
        return 1
    if mode == "crash":
        print("RuntimeError: boom", file=sys.stderr)
        return 1
    if mode == "silent":
        return 0
    losses = [] if eval_only else ([2.0, 30.0, 0.9] if mode == "explode" else [2.0, 1.0, 0.8])
    if mode == "diverge":
        stop = {"iteration": 63, "terms": ["loss_cls"], "checkpoint": f"{out}/model_0000059.pth"}
        write(results(status="non_finite_loss", losses=losses, non_finite=stop))
        print("NonFiniteLossError: Loss became NaN or infinite at iteration 63", file=sys.stderr)
        return 1
    if not eval_only:
        with open(os.path.join(out, "model_final.pth"), "w") as f:
            f.write("weights")
    if mode == "nodet":  # COCO metrics are NaN (null) when nothing passes the threshold
        bbox = {"AP": None, "AP50": None, "AP75": None}
    else:
        bbox = {"AP": ap, "AP50": ap + 20, "AP75": ap - 1, "APs": None}
    write(results(eval_only=eval_only, bbox=bbox, no_detections=mode == "nodet", losses=losses))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
