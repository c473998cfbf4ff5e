#!/usr/bin/env python
"""Detections on your own images, a folder of images or a video.

    python tools/demo.py --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml \
        --input photos/ --output demo_out/ --confidence-threshold 0.5 \
        --opts MODEL.WEIGHTS output/model_final.pth
    python tools/demo.py --config-file configs/COCO/retinanet_R50_FPN_1x.py \
        --input clip.mp4 --output demo_out/ --device cuda --opts train.init_checkpoint=model.pth

Writes one annotated PNG per image (or an annotated video) and ``results.json`` (COCO results:
image_id, file_name, category_id, bbox as XYWH, score) into ``--output``.
"""
import argparse
import logging
import sys

import retinafocal  # noqa: F401  (first: makes detectron2 importable and registers our parts)
from detectron2.utils.logger import setup_logger
from retinafocal.tools import ToolError
from retinafocal.tools.demo import run_demo


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--input", required=True, help="an image, a folder of images or a video")
    parser.add_argument("--output", required=True, help="folder for the drawings and results.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="keep detections scoring above this (default 0.5)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: the config's device)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs (yacs) or key=value (LazyConfig)")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="retinafocal")
    try:
        summary = run_demo(
            config_file=args.config_file,
            opts=args.opts,
            input_path=args.input,
            output_dir=args.output,
            confidence_threshold=args.confidence_threshold,
            device=args.device,
            progress=not args.no_progress,
        )
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logger = logging.getLogger("retinafocal")
    logger.info(
        f"{summary['num_detections']} detections on {summary['num_inputs']} input(s); "
        f"results in {summary['results_json']}"
    )
    for failure in summary["failures"]:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
