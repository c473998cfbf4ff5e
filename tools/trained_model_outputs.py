#!/usr/bin/env python
"""What a trained RetinaNet's head outputs look like on its test set: the figures that the
detector benchmark's "realistic" regime (``tools/benchmark_regimes.py``) imitates with random
weights.

    python tools/trained_model_outputs.py \\
        --config-file configs/Embedded/retinanet_R18_FPN_shapes.yaml \\
        --weights output/shapes_R18_FPN/model_final.pth --output trained_outputs.json

For every test image: the number of (anchor, class) pairs whose score passes the test-time
threshold (the candidates that post-processing sorts, decodes and puts through NMS, counted
before the per-level top-k cap), the number of ground-truth objects, and the class logits' and
box deltas' spread. Prints a summary and writes the per-image figures to ``--output``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
from config_loading import (
    ToolError,
    add_overrides_argument,
    build_model,
    is_lazy,
    load_config,
    test_dataset_name,
)
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, build_detection_test_loader
from retinafocal.data import RobustDatasetMapper
from retinafocal.data.datasets import ensure_dataset_files

__all__ = ["image_outputs", "summarize_outputs", "main"]


@torch.no_grad()
def image_outputs(model: torch.nn.Module, batched_input: Dict[str, Any]) -> Dict[str, Any]:
    """Head outputs of one image (a dataset-mapper dict) through a FocalRetinaNet in eval mode:
    candidates above the model's score threshold, object count, logit and delta statistics."""
    images = model.preprocess_image([batched_input])
    _, (logits, deltas) = model.dense_predictions(images.tensor)
    # (A*K, H, W) per level -> all logits of the image, and (A*4, H, W) -> all deltas.
    flat_logits = torch.cat([x[0].flatten() for x in logits]).float()
    flat_deltas = torch.cat([d[0].reshape(-1, 4, *d.shape[2:]).transpose(0, 1).reshape(4, -1)
                             for d in deltas], dim=1).float()
    thresh = model.test_score_thresh
    return {
        "candidates": int((flat_logits.sigmoid() > thresh).sum()),
        "pairs": flat_logits.numel(),
        "logit_mean": float(flat_logits.mean()),
        "logit_std": float(flat_logits.std()),
        "logit_min": float(flat_logits.min()),
        "logit_max": float(flat_logits.max()),
        "delta_std": float(flat_deltas.std()),
        "delta_abs_max": float(flat_deltas.abs().max()),
    }


def _quantiles(values: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {"min": float(ordered[0]), "p10": at(0.1), "median": float(statistics.median(ordered)),
            "p90": at(0.9), "max": float(ordered[-1])}


def summarize_outputs(per_image: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Ranges over the images: candidates per image and per object, logits, deltas."""
    with_objects = [r for r in per_image if r["objects"]]
    return {
        "images": len(per_image),
        "candidates_per_image": _quantiles([r["candidates"] for r in per_image]),
        "objects_per_image": _quantiles([r["objects"] or 0 for r in per_image]),
        "candidates_per_object": _quantiles([r["candidates"] / r["objects"]
                                             for r in with_objects]) if with_objects else None,
        "candidate_fraction": statistics.mean(r["candidates"] / r["pairs"] for r in per_image),
        "logit_std": statistics.mean(r["logit_std"] for r in per_image),
        "logit_mean": statistics.mean(r["logit_mean"] for r in per_image),
        "logit_range": [min(r["logit_min"] for r in per_image),
                        max(r["logit_max"] for r in per_image)],
        "delta_std": statistics.mean(r["delta_std"] for r in per_image),
        "delta_abs_max": max(r["delta_abs_max"] for r in per_image),
    }


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="yacs .yaml or LazyConfig .py")
    parser.add_argument("--weights", required=True, help="the trained model's checkpoint")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole test set")
    parser.add_argument("--output", default="", help="json file for per-image figures")
    add_overrides_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        if args.config_file.endswith(".py"):  # the weights go where each form keeps them
            cfg = load_config(args.config_file,
                              [f"train.init_checkpoint={args.weights}"] + args.opts)
        else:
            cfg = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights] + args.opts)
        name = test_dataset_name(cfg)
        if name is None:
            raise ToolError(f"{args.config_file} names no test dataset")
        model = build_model(cfg)
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ensure_dataset_files(name)
    mapper = (instantiate(cfg.dataloader.test.mapper) if is_lazy(cfg)
              else RobustDatasetMapper(cfg, is_train=False))
    dicts = DatasetCatalog.get(name)
    if args.max_images:
        dicts = dicts[: args.max_images]
    # The test mapper drops the annotations: count each image's objects from its dataset dict.
    objects = {d["image_id"]: sum(not a.get("iscrowd", 0) for a in d.get("annotations", []))
               for d in dicts}
    per_image = []
    for batch in build_detection_test_loader(dicts, mapper=mapper, num_workers=0):
        record = image_outputs(model, batch[0])
        record["objects"] = objects[batch[0]["image_id"]]
        per_image.append(record)
    summary = summarize_outputs(per_image)
    print(json.dumps(summary, indent=1))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "per_image": per_image}, f, indent=1)
    return 0 if all(math.isfinite(r["logit_std"]) for r in per_image) else 1


if __name__ == "__main__":
    sys.exit(main())
