#!/usr/bin/env python
"""Parameters and FLOPs per component (backbone, FPN, class subnet, box subnet) of a config's
model at a given input size, counted by fvcore (one multiply-add = one flop).

    python tools/analyze_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --size 800 1333
    python tools/analyze_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --size 800 1333 --torchvision   # also count torchvision's retinanet_resnet50_fpn

The model is built with random weights (counts do not depend on them; nothing is downloaded).
"""
import argparse
import json
import sys

import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from retinafocal.tools import ToolError
from retinafocal.tools.analysis import (
    analyze_config,
    analyze_torchvision,
    format_analysis,
)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
                        help="input image size (default 800 1333)")
    parser.add_argument("--torchvision", action="store_true",
                        help="also count torchvision's retinanet_resnet50_fpn as its model card "
                        "does (COCO layout, 91 classes, 800x800 input)")
    parser.add_argument("--json", default=None, help="also write the counts to this json file")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (yacs) or key=value (LazyConfig)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    try:
        h, w = args.size
        costs, ops = analyze_config(args.config_file, args.opts, h, w)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_analysis(costs, ops, title=f"{args.config_file} at {h}x{w}:"))
    report = {"config_file": args.config_file, "size": [h, w],
              "components": [vars(c) for c in costs], "flops_by_operator": ops}
    if args.torchvision:
        tv_costs, tv_ops = analyze_torchvision()
        print()
        print(format_analysis(tv_costs, tv_ops, title="torchvision retinanet_resnet50_fpn "
                              "(91 classes) at 800x800, counted the same way:"))
        report["torchvision_800x800"] = {"components": [vars(c) for c in tv_costs],
                                         "flops_by_operator": tv_ops}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
