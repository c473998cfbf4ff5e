"""Reproduce the focal-loss paper's ablations (Table 1a-1e), Figure 1 and Figure 4, and write
``reports/paper/REPORT.md``.

    python -m paper                        # the miniature on the embedded dataset (make paper)
    python -m paper --plan                 # list the runs and the time estimate; run nothing
    python -m paper --report-only          # rewrite the report from stored results
    python -m paper --grid shapes-full     # every row of Table 1, miniature schedule
    python -m paper --grid coco --num-gpus 8 --num-machines 2 --machine-rank 0 \\
        --dist-url tcp://host:port         # full size on COCO; run it on every machine

Runs are seeded and resumable: a run with a stored result for the same settings is not run
again, an interrupted one continues from its last checkpoint. With several machines, --output
must be on a filesystem they all share. Run from the repository root.
"""
import argparse
import logging
import os
import shlex
import sys

import retinafocal  # noqa: F401  (first: compat, registries)

from .plan import plan_text
from .reproduce import reproduce
from .runner import LaunchOptions
from .sweep import SWEEP_MAX_ITER
from .table1 import GRID_NAMES, SHAPES_MAX_ITER, build_grid

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])  # fmt: skip
    p.add_argument("--grid", default="shapes", choices=GRID_NAMES)
    p.add_argument("--output", default=os.path.join(REPO_ROOT, "reports", "paper"),
                   help="report directory; runs go to <output>/runs")  # fmt: skip
    p.add_argument("--max-iter", type=int, default=SHAPES_MAX_ITER,
                   help="iterations per Table 1 run of the shapes grids (coco: the configs')")
    p.add_argument("--sweep-max-iter", type=int, default=SWEEP_MAX_ITER,
                   help="iterations per run of the imbalance sweep (shapes grids; 0: no sweep)")
    p.add_argument("--seed", type=int, default=0, help="SEED of every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at the same time on this machine")
    p.add_argument("--threads", type=int, default=0,
                   help="threads per run (default: CPU cores / jobs)")  # fmt: skip
    p.add_argument("--only", nargs="+", metavar="RUN", help="run just these runs")
    p.add_argument("--report-only", action="store_true", help="run nothing; rewrite the report")
    p.add_argument("--plan", action="store_true", help="print the runs and a time estimate")
    p.add_argument("--loss-num-images", type=int, default=200, help="images for Figure 4")
    p.add_argument("--train-net", default=os.path.join(REPO_ROOT, "train_net.py"))
    # detectron2's launch, passed through to train_net.py.
    p.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[paper %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)  # fmt: skip
    if args.grid == "coco" and args.jobs != 1:
        raise SystemExit("--jobs must be 1 with --grid coco (each run uses every GPU)")
    kwargs = {"seed": args.seed}
    if args.grid != "coco":
        kwargs["max_iter"] = args.max_iter
        kwargs["sweep_max_iter"] = args.sweep_max_iter
    grid = build_grid(args.grid, **kwargs)
    threads = args.threads
    if not threads and args.grid != "coco":  # GPU runs: leave the environment's threads alone
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
    launch = LaunchOptions(
        train_net=os.path.abspath(args.train_net),
        num_gpus=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        threads=threads,
        cwd=REPO_ROOT,
    )
    if args.plan:
        print(plan_text(grid, launch))
        return 0
    command = "python -m paper " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = reproduce(
        grid,
        os.path.abspath(args.output),
        launch,
        jobs=args.jobs,
        report_only=args.report_only,
        only=args.only,
        loss_num_images=args.loss_num_images,
        command="make paper" if not (argv or sys.argv[1:]) else command.strip(),
        headline_dir=REPO_ROOT,  # HEADLINE.md is for the README
    )
    failed = {k: v for k, v in out["failures"].items() if not v.startswith("not run")}
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(sorted(failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
