#!/usr/bin/env python
"""A stand-in for train_net.py in the runner tests: writes what detectron2 would write
(metrics.json, log.txt lines the runner parses, model_final.pth) in a few milliseconds.

It takes train_net.py's arguments; the behaviour comes from fake keys among the overrides:
``FAKE.MODE`` ok | diverge | crash | explode | nodet (no detection to evaluate), ``FAKE.AP``
the AP to report. Every call is appended to ``<OUTPUT_DIR>/../calls.txt`` as
``name mode eval_only weights threads``.
"""
import json
import os
import sys


def main(argv):
    eval_only = "--eval-only" in argv
    pairs = [a for a in argv if not a.startswith("--")]
    # Drop the values of the --options that take one.
    skip = {"--config-file", "--num-gpus", "--num-machines", "--machine-rank", "--dist-url"}
    opts, i = [], 0
    while i < len(argv):
        if argv[i] in skip:
            i += 2
            continue
        if not argv[i].startswith("--"):
            opts.append(argv[i])
        i += 1
    kv = dict(zip(opts[0::2], opts[1::2]))
    del pairs
    out = kv["OUTPUT_DIR"]
    mode = kv.get("FAKE.MODE", "ok")
    ap = float(kv.get("FAKE.AP", "10"))
    weights = kv.get("MODEL.WEIGHTS", "")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(os.path.dirname(out), "calls.txt"), "a") as f:
        f.write(f"{os.path.basename(out)} {mode} {int(eval_only)} {weights or '-'} "
                f"{os.environ.get('OMP_NUM_THREADS', '')}\n")
    log = open(os.path.join(out, "log.txt"), "a")
    if eval_only:
        if not os.path.isfile(weights):
            print(f"FileNotFoundError: {weights}", file=sys.stderr)
            return 1
    else:
        losses = [2.0, 1.0, 0.8]
        if mode == "explode":
            losses = [2.0, 30.0, 0.9]
        with open(os.path.join(out, "metrics.json"), "a") as f:
            for it, loss in zip((19, 39, 59), losses):
                f.write(json.dumps({"iteration": it, "total_loss": loss, "loss_cls": loss / 2,
                                    "time": 0.1}) + "\n")
        if mode == "diverge":
            msg = ("FloatingPointError: Loss became NaN or infinite at iteration 63: "
                   "non-finite term(s) loss_cls")
            print("Traceback (most recent call last):\n" + msg, file=sys.stderr)
            return 1
        if mode == "crash":
            print("RuntimeError: boom", file=sys.stderr)
            return 1
        log.write("[x] d2.engine.hooks INFO: Overall training speed: 58 iterations in "
                  "0:00:06 (0.1034 s / it)\n[x] d2.engine.hooks INFO: Total training time: "
                  "0:00:07 (0:00:00 on hooks)\n")
        with open(os.path.join(out, "model_final.pth"), "w") as f:
            f.write("weights")
        if mode != "nodet":
            with open(os.path.join(out, "metrics.json"), "a") as f:
                f.write(json.dumps({"iteration": 60, "bbox/AP": ap, "bbox/AP50": ap + 20,
                                    "bbox/AP75": ap - 1}) + "\n")
    if mode == "nodet":  # what detectron2's COCOEvaluator writes when nothing passes the threshold
        log.write("[x] d2.evaluation.coco_evaluation WARNING: No predictions from the model!\n"
                  "[x] copypaste: Task: bbox\n[x] copypaste: AP,AP50,AP75\n"
                  "[x] copypaste: nan,nan,nan\n")
        log.close()
        return 0
    log.write("[x] d2.evaluation.evaluator INFO: Total inference pure compute time: 0:00:01 "
              "(0.012500 s / iter per device, on 1 devices)\n")
    log.write(f"[x] copypaste: Task: bbox\n[x] copypaste: AP,AP50,AP75\n"
              f"[x] copypaste: {ap:.4f},{ap + 20:.4f},{ap - 1:.4f}\n")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
