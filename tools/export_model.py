#!/usr/bin/env python
"""Export a config's model to TorchScript (traced through detectron2's TracingAdapter) and
ONNX, then check each export against the eager model on the sample image.

    python tools/export_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --output exported/ --sample-image photo.jpg --opts MODEL.WEIGHTS model_final.pth

Writes ``model.ts``, ``model.onnx`` and ``export_info.json`` (input layout, the resize to apply
before the model, output names) into ``--output``. The export runs on the CPU; the exported
model takes one (3, H, W) float32 image of any size and returns pred_boxes, pred_classes,
scores and image_size.
"""
import argparse
import logging
import sys

import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from detectron2.utils.logger import setup_logger
from retinafocal.tools import ToolError
from retinafocal.tools.export import export_from_config


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--format", nargs="+", default=["torchscript", "onnx"],
                        choices=["torchscript", "onnx"], help="default: both")
    parser.add_argument("--sample-image", default=None,
                        help="image to trace and check on, resized like the test data "
                        "(default: a random image of --size)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1067], metavar=("H", "W"),
                        help="size of the random sample image (default 800 1067)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (yacs) or key=value (LazyConfig)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="retinafocal")
    try:
        result = export_from_config(
            config_file=args.config_file,
            opts=args.opts,
            output_dir=args.output,
            formats=args.format,
            sample_image=args.sample_image,
            height=args.size[0],
            width=args.size[1],
        )
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = False
    for fmt, path in result["files"].items():
        problem = result["checks"][fmt]
        if problem is None:
            logger.info(f"{fmt}: {path} (same {result['info']['sample_detections']} detections "
                        "as the eager model on the sample)")
        else:
            failed = True
            logger.error(f"{fmt}: {path} differs from the eager model: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
