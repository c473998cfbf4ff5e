"""Figure 4 of the focal-loss paper for any checkpoint and dataset: the cumulative distribution of
the normalised loss of positive and negative samples, scored with the focal loss at each gamma.

    python -m paper.analyze_loss --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml \\
        MODEL.WEIGHTS output/shapes_R18_FPN/model_final.pth --output output/loss_cdf
    python -m paper.analyze_loss --config-file configs/COCO/retinanet_R50_FPN_1x.py \\
        train.init_checkpoint=model.pth --dataset coco_2017_val --num-images 500 --output out

Writes ``loss_cdf.png`` (two panels: positives, negatives) and ``loss_cdf.json`` (the curves and,
per gamma, the fraction of samples that carries half of the loss) under ``--output``.
Config overrides (``KEY VALUE`` for .yaml, ``key=value`` for .py) may come anywhere.
"""
import argparse
import json
import logging
import sys

import retinafocal  # noqa: F401  (first: compat, registries)

from .loss_analysis import DEFAULT_GAMMAS, analyze_model, write_analysis


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])  # fmt: skip
    p.add_argument("--config-file", required=True, help="yacs .yaml or LazyConfig .py")
    p.add_argument("--dataset", help="registered dataset (default: the config's first test set)")
    p.add_argument("--num-images", type=int, default=200, help="first N images of the dataset")
    # Strings here: nargs="+" also swallows config overrides given after the gammas, which
    # are split off below.
    p.add_argument("--gammas", nargs="+", default=[str(g) for g in DEFAULT_GAMMAS])
    p.add_argument("--max-negatives", type=int, default=10_000_000,
                   help="subsample negatives uniformly beyond this many (paper: ~1e7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the negative subsampling")
    p.add_argument("--output", required=True, help="directory for loss_cdf.png/json")
    args, opts = p.parse_known_args(argv)
    gammas = []
    for i, token in enumerate(args.gammas):
        try:
            gammas.append(float(token))
        except ValueError:
            opts = args.gammas[i:] + opts
            break
    if not gammas:
        p.error(f"--gammas needs at least one number, got {args.gammas}")
    args.gammas = gammas
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        p.error(f"unknown option(s) {unknown}; config overrides are KEY VALUE or key=value")
    if args.num_images < 1:
        p.error(f"--num-images must be >= 1, got {args.num_images}")
    if any(g < 0 for g in args.gammas):
        p.error(f"--gammas must be >= 0, got {args.gammas}")
    args.opts = opts
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[analyze_loss] %(message)s")
    analysis = analyze_model(
        args.config_file,
        args.opts,
        dataset=args.dataset,
        num_images=args.num_images,
        gammas=args.gammas,
        max_negatives=args.max_negatives,
        seed=args.seed,
    )
    paths = write_analysis(analysis, args.output, title=f"{analysis['weights']}")
    summary = {
        kind: {g: f"{100 * f:.3g}%" for g, f in analysis["half_loss_fraction"][kind].items()}
        for kind in ("positives", "negatives")
    }
    print(json.dumps({"half_loss_fraction": summary, **paths}, indent=1))
    return analysis


if __name__ == "__main__":
    main(sys.argv[1:])
