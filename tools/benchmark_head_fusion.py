#!/usr/bin/env python
"""Does fusing the RetinaNet head's per-level work pay on this machine? retinafocal's head (one
conv stack per level and subnet) against two fused forms of the same weights:

* "one canvas": the five levels packed into one zero-separated canvas (P3 on the left, P4-P7
  stacked in a column beside it, one zero pixel between levels) and each subnet run once. A
  mask re-zeroes the gaps after every ReLU, so no level sees another's pixels: same outputs.
* "shared first conv": the class and box subnets' first convs (same input) as one conv of 2C
  outputs, split after the ReLU.

Times the head alone on FPN-shaped features (N x 256 x H/s x W/s, s = 8..128, channels-last as
the NHWC recipe), inference (no grad) and a training step's forward+backward, the variants
interleaved round by round; medians. Usage::

    python tools/benchmark_head_fusion.py --size 384 512 --batch 2 --rounds 7
"""
from __future__ import annotations

import argparse
import math
import statistics
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (compat first)
from detectron2.layers import ShapeSpec
from benchmark_measure import time_interleaved
from markdown_table import markdown_table
from retinafocal.modeling.head import RetinaFocalHead

STRIDES = (8, 16, 32, 64, 128)
VARIANTS = ("per level (retinafocal)", "one canvas", "shared first conv")


def level_sizes(height: int, width: int) -> List[Tuple[int, int]]:
    """(Hi, Wi) of P3-P7 for an image of height x width."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


class Canvas:
    """Where each level sits on one canvas: the first level at (0, 0), the others stacked top to
    bottom in a column right of it, one zero row or column between any two."""

    def __init__(self, sizes: Sequence[Tuple[int, int]]):
        self.sizes = list(sizes)
        column_x = sizes[0][1] + 1
        self.places = [(0, 0)]
        y = 0
        for h, _ in sizes[1:]:
            self.places.append((y, column_x))
            y += h + 1
        self.height = max(sizes[0][0], y - 1)
        self.width = column_x + max(w for _, w in sizes[1:])
        mask = torch.zeros(1, 1, self.height, self.width)
        for (y0, x0), (h, w) in zip(self.places, self.sizes):
            mask[..., y0 : y0 + h, x0 : x0 + w] = 1.0
        self.mask = mask.contiguous(memory_format=torch.channels_last)

    def pack(self, features: Sequence[Tensor]) -> Tensor:
        """Levels (N, C, Hi, Wi) -> canvas (N, C, H, W), zero between levels."""
        n, c = features[0].shape[:2]
        canvas = features[0].new_zeros(n, c, self.height, self.width)
        canvas = canvas.contiguous(memory_format=torch.channels_last)
        for (y0, x0), (h, w), f in zip(self.places, self.sizes, features):
            canvas[..., y0 : y0 + h, x0 : x0 + w] = f
        return canvas

    def unpack(self, canvas: Tensor) -> List[Tensor]:
        return [canvas[..., y0 : y0 + h, x0 : x0 + w]
                for (y0, x0), (h, w) in zip(self.places, self.sizes)]  # fmt: skip

    def run(self, subnet: nn.Sequential, last: nn.Conv2d, canvas: Tensor) -> List[Tensor]:
        """``last(subnet(level))`` for every level at once."""
        x = canvas
        for layer in subnet:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = x * self.mask  # the gaps back to zero: the next 3x3 conv's padding
        return self.unpack(last(x))


def canvas_head(head: RetinaFocalHead, canvas: Canvas) -> Callable:
    def forward(features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        packed = canvas.pack(features)
        return (canvas.run(head.cls_subnet, head.cls_score, packed),
                canvas.run(head.bbox_subnet, head.bbox_pred, packed))  # fmt: skip
    return forward


def shared_first_conv_head(head: RetinaFocalHead) -> Callable:
    cls_first, box_first = head.cls_subnet[0], head.bbox_subnet[0]
    first = nn.Conv2d(cls_first.in_channels, 2 * cls_first.out_channels, 3, padding=1)
    with torch.no_grad():
        first.weight.copy_(torch.cat([cls_first.weight, box_first.weight]))
        first.bias.copy_(torch.cat([cls_first.bias, box_first.bias]))
    first = first.to(memory_format=torch.channels_last)
    c = cls_first.out_channels
    cls_rest, box_rest = head.cls_subnet[2:], head.bbox_subnet[2:]  # after conv 1 and its ReLU

    def forward(features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits, deltas = [], []
        for f in features:
            both = torch.relu(first(f))
            logits.append(head.cls_score(cls_rest(both[:, :c])))
            deltas.append(head.bbox_pred(box_rest(both[:, c:])))
        return logits, deltas
    return forward


def build(batch: int, height: int, width: int, channels: int = 256, num_classes: int = 80,
          num_anchors: int = 9, weight_std: Optional[float] = None,
          ) -> Tuple[Dict[str, Callable], List[Tensor]]:
    """The variants (name -> features -> (logits, deltas)) over one head, and the features.
    ``weight_std``: redraw every weight and bias from N(0, std) (the paper's init, N(0, 0.01)
    and the prior bias, leaves the outputs all but constant: a check of equal outputs needs
    weights that matter)."""
    torch.manual_seed(0)
    sizes = level_sizes(height, width)
    head = RetinaFocalHead(
        input_shape=[ShapeSpec(channels=channels, stride=s) for s in STRIDES],
        num_classes=num_classes, num_anchors=num_anchors, conv_dims=[channels] * 4,
    ).to(memory_format=torch.channels_last)  # fmt: skip
    if weight_std is not None:
        with torch.no_grad():
            for p in head.parameters():
                p.normal_(0.0, weight_std)
    features = [torch.randn(batch, channels, h, w).contiguous(memory_format=torch.channels_last)
                for h, w in sizes]  # fmt: skip
    variants = dict(zip(VARIANTS, (head, canvas_head(head, Canvas(sizes)),
                                   shared_first_conv_head(head))))  # fmt: skip
    return variants, features


def max_difference(variants: Dict[str, Callable], features: List[Tensor]) -> Dict[str, float]:
    """Per variant: the largest |output - per-level output| over all levels and both subnets."""
    with torch.no_grad():
        ref = variants[VARIANTS[0]](features)
        return {name: max((a - b).abs().max().item()
                          for got, want in zip(fn(features), ref) for a, b in zip(got, want))
                for name, fn in variants.items()}  # fmt: skip


def _step(fn: Callable, features: List[Tensor], train: bool) -> None:
    if not train:
        with torch.no_grad():
            fn(features)
        return
    inputs = [f.detach().requires_grad_() for f in features]
    logits, deltas = fn(inputs)
    sum(o.float().square().mean() for o in logits + deltas).backward()


def time_variants(variants: Dict[str, Callable], features: List[Tensor], train: bool,
                  rounds: int) -> Dict[str, float]:
    """Median wall seconds per call, the variants interleaved (one warm-up round)."""
    tasks = {name: (lambda _round, fn=fn: _step(fn, features, train))
             for name, fn in variants.items()}  # fmt: skip
    wall = time_interleaved(tasks, warmup=1, iters=rounds)["wall"]
    return {name: statistics.median(t) for name, t in wall.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", nargs=2, type=int, default=(384, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants, features = build(args.batch, *args.size)
    differences = max_difference(variants, features)
    timed = {}
    for phase, train in (("inference", False), ("training", True)):
        print(f"timing {phase} ({args.rounds} rounds) ...", flush=True)
        timed[phase] = time_variants(variants, features, train, args.rounds)
    base = {phase: t[VARIANTS[0]] for phase, t in timed.items()}
    rows = [[name,
             f"{timed['inference'][name] * 1e3:.0f}",
             f"{timed['inference'][name] / base['inference']:.2f}x",
             f"{timed['training'][name] * 1e3:.0f}",
             f"{timed['training'][name] / base['training']:.2f}x",
             f"{differences[name]:.1e}"] for name in variants]  # fmt: skip
    print(f"\nRetinaNet head alone, {args.batch} x {args.size[0]}x{args.size[1]} (P3-P7), "
          f"{args.threads} threads, median of {args.rounds} interleaved rounds:\n")
    print(markdown_table(["variant", "inference (ms)", "vs per level", "training fwd+bwd (ms)",
                          "vs per level", "max |output diff|"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
