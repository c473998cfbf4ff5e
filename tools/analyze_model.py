#!/usr/bin/env python
"""Parameters and FLOPs per component (backbone, FPN, class subnet, box subnet) of a config's
model at a given input size, counted by fvcore (one multiply-add = one flop).

    python tools/analyze_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --size 800 1333
    python tools/analyze_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --size 800 1333 --torchvision   # also count torchvision's retinanet_resnet50_fpn

The model is built with random weights (counts do not depend on them; nothing is downloaded).

FLOPs are counted by fvcore's ``FlopCountAnalysis`` over one inference pass on an image of a
given size, with fvcore's conventions: one multiply-add is one flop; convolutions and matrix
products count their multiply-adds (bias ignored); ``batch_norm`` in eval mode counts 2 per
element (1 without affine); nearest upsampling 1 per output element, bilinear 4; element-wise
ops (ReLU, additions, the frozen-BN ``x * scale + bias`` used when gradients are on),
post-processing and NMS are not counted. The counts include the image's padding to the
backbone's size divisibility (800 x 1333 runs as 800 x 1344).

Components, as module names:

* detectron2 layout (retinafocal's ``FocalRetinaNet``, detectron2's ``RetinaNet``):
  ``backbone.bottom_up`` | ``backbone`` minus ``bottom_up`` (lateral and output convs, P6/P7) |
  ``head.cls_subnet`` + ``head.cls_score`` | ``head.bbox_subnet`` + ``head.bbox_pred``;
* torchvision layout (``retinanet_resnet50_fpn``): ``backbone.body`` | ``backbone.fpn`` |
  ``head.classification_head`` | ``head.regression_head``.

What is in no component (input normalisation, torchvision's in-model resize) is reported as
"other", so the rows always add up to the total.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (first: compat for old detectron2)
import config_loading as loading
from config_loading import ToolError
from markdown_table import markdown_table
from torchvision_retinanet import torchvision_retinanet

#: Component names, in report order.
COMPONENTS = ("backbone (bottom-up)", "FPN", "class subnet", "box subnet")

# name -> (modules whose cost is added, modules whose cost is subtracted), per layout.
_DETECTRON2_LAYOUT = {
    "backbone (bottom-up)": (["backbone.bottom_up"], []),
    "FPN": (["backbone"], ["backbone.bottom_up"]),
    "class subnet": (["head.cls_subnet", "head.cls_score"], []),
    "box subnet": (["head.bbox_subnet", "head.bbox_pred"], []),
}
_TORCHVISION_LAYOUT = {
    "backbone (bottom-up)": (["backbone.body"], []),
    "FPN": (["backbone.fpn"], []),
    "class subnet": (["head.classification_head"], []),
    "box subnet": (["head.regression_head"], []),
}


@dataclass
class ComponentCost:
    """Cost of one component: ``params`` (trainable or frozen parameters, not buffers) and
    ``flops`` (fvcore flops, one multiply-add = 1) for the analysed input."""

    name: str
    params: int
    flops: int


def component_modules(model: nn.Module) -> Dict[str, Tuple[List[str], List[str]]]:
    """The module layout of ``model``: {component: (added module names, subtracted names)}.

    Raises:
        ToolError: ``model`` has neither detectron2's RetinaNet layout (``backbone.bottom_up``,
            ``head.cls_subnet`` ...) nor torchvision's (``backbone.body``, ``backbone.fpn``,
            ``head.classification_head`` ...).
    """
    names = {n for n, _ in model.named_modules()}
    for layout in (_DETECTRON2_LAYOUT, _TORCHVISION_LAYOUT):
        needed = {m for added, subtracted in layout.values() for m in added + subtracted}
        if needed <= names:
            return layout
    raise ToolError(
        f"{type(model).__name__} has neither a detectron2 RetinaNet layout (backbone.bottom_up, "
        "head.cls_subnet, head.cls_score, head.bbox_subnet, head.bbox_pred) nor torchvision's "
        "(backbone.body, backbone.fpn, head.classification_head, head.regression_head)"
    )


class _InferenceAsTensors(nn.Module):
    """One image tensor in, detection tensors out: what fvcore's tracer needs. Works for
    detectron2 meta-architectures (list of dicts in, Instances out) and torchvision detectors
    (list of images in, list of dicts out)."""

    def __init__(self, model: nn.Module, detectron2_style: bool):
        super().__init__()
        self.model = model
        self.detectron2_style = detectron2_style

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if self.detectron2_style:
            inst = self.model([{"image": image}])[0]["instances"]
            return inst.pred_boxes.tensor, inst.scores, inst.pred_classes
        out = self.model([image])[0]
        return out["boxes"], out["scores"], out["labels"]


def _params(model: nn.Module, module_name: str) -> int:
    return sum(p.numel() for p in model.get_submodule(module_name).parameters())


@torch.no_grad()
def analyze_model(model: nn.Module, image: Tensor) -> Tuple[List[ComponentCost], Dict[str, int]]:
    """Count parameters and flops of ``model`` per component for one image.

    Args:
        model: a detectron2-layout or torchvision-layout RetinaNet (see module docstring).
        image: (3, H, W) float image as the model takes it (0-255 BGR for detectron2 configs,
            0-1 RGB for torchvision).

    Returns:
        (the four components, then "other" and "total"; flops per operator type of the
        whole model, e.g. {"conv": ..., "batch_norm": ..., "upsample_nearest2d": ...}).
    """
    from fvcore.nn import FlopCountAnalysis

    layout = component_modules(model)
    detectron2_style = layout is _DETECTRON2_LAYOUT
    model.eval()
    wrapper = _InferenceAsTensors(model, detectron2_style)
    counter = FlopCountAnalysis(wrapper, (image,))
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    counter.tracer_warnings("none")
    by_module = counter.by_module()
    total_flops = int(counter.total())
    total_params = sum(p.numel() for p in model.parameters())

    costs = []
    for name in COMPONENTS:
        added, subtracted = layout[name]
        flops = sum(by_module[f"model.{m}"] for m in added) - sum(
            by_module[f"model.{m}"] for m in subtracted)
        params = sum(_params(model, m) for m in added) - sum(_params(model, m) for m in subtracted)
        costs.append(ComponentCost(name, int(params), int(flops)))
    other_params = total_params - sum(c.params for c in costs)
    other_flops = total_flops - sum(c.flops for c in costs)
    costs.append(ComponentCost("other", other_params, other_flops))
    costs.append(ComponentCost("total", total_params, total_flops))
    return costs, {k: int(v) for k, v in counter.by_operator().items()}


def format_analysis(costs: Sequence[ComponentCost], by_operator: Optional[Dict[str, int]] = None,
                    title: str = "") -> str:
    """A GitHub-markdown table: component, parameters (M), GFLOPs, share of the total flops."""
    total = next(c for c in costs if c.name == "total")
    header = ["component", "params (M)", "GFLOPs", "share of flops"]
    rows = [
        [c.name, f"{c.params / 1e6:.2f}", f"{c.flops / 1e9:.1f}",
         f"{100 * c.flops / total.flops:.1f}%" if total.flops else "-"]
        for c in costs if not (c.name == "other" and c.params == 0 and c.flops == 0)
    ]
    lines = ([title] if title else []) + [markdown_table(header, rows)]
    if by_operator:
        ops = ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(by_operator.items(),
                                                                   key=lambda kv: -kv[1]))
        lines.append(f"\nGFLOPs by operator: {ops}")
    return "\n".join(lines)


def analyze_config(config_file: str, opts: Sequence[str] = (), height: int = 800,
                   width: int = 1333) -> Tuple[List[ComponentCost], Dict[str, int]]:
    """Build the config's model on the CPU (random weights: counts do not depend on them, and
    nothing is downloaded) and analyse it on a ``height`` x ``width`` image."""
    if height < 32 or width < 32:
        raise ToolError(f"--size must be at least 32 32, got {height} {width}")
    cfg = loading.load_config(config_file, opts)
    loading.set_device(cfg, "cpu")
    model = loading.build_model(cfg, load_weights=False)
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    return analyze_model(model, image)


def analyze_torchvision(height: int = 800, width: int = 800, num_classes: int = 91
                        ) -> Tuple[List[ComponentCost], Dict[str, int]]:
    """Analyse torchvision's ``retinanet_resnet50_fpn`` as its model card counts it: COCO
    layout (91 classes), an image of ``height`` x ``width`` (the card uses 800 x 800) resized by
    the model's own transform (shorter side 800, longer at most 1333)."""
    model = torchvision_retinanet(num_classes=num_classes).eval()
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    return analyze_model(model, image)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
                        help="input image size (default 800 1333)")
    parser.add_argument("--torchvision", action="store_true",
                        help="also count torchvision's retinanet_resnet50_fpn as its model card "
                        "does (COCO layout, 91 classes, 800x800 input)")
    parser.add_argument("--json", default=None, help="also write the counts to this json file")
    loading.add_overrides_argument(parser)
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
