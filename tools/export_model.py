#!/usr/bin/env python
"""Export a config's model to TorchScript and ONNX, then check each export against the eager
model on the sample image.

    python tools/export_model.py --config-file configs/COCO/retinanet_R50_FPN_1x.yaml \
        --output exported/ --sample-image photo.jpg --opts MODEL.WEIGHTS model_final.pth
    python tools/export_model.py --export-method scripting --config-file ... --output ...

Writes ``model.ts``, ``model.onnx`` and ``export_info.json`` (input layout, the resize to apply
before the model, output names) into ``--output``. The export runs on the CPU. The weights must
fit the config's model; a config without weights is refused unless ``--random-weights``. Each
export must give the eager model's detections on the sample image, and at least one: exit
status 1 otherwise.

Both formats come from one trace through detectron2's ``TracingAdapter``, which flattens the
model's rich inputs and outputs (a list of dicts with ``Instances``) into tuples of tensors:

* input ``image``: (3, H, W) float32, the channel order of the config's ``input_format`` (BGR
  for the paper's configs), 0-255, already resized by the caller (the config's test-time resize
  is written into ``export_info.json``). H and W are free: every shape computation is traced.
* outputs, in this order: ``pred_boxes`` (D, 4) XYXY in pixels of the input, ``pred_classes``
  (D,) int64 contiguous class indices, ``scores`` (D,), ``image_size`` (2,) = (H, W).

TorchScript (``model.ts``), by ``--export-method``, as detectron2's exporter offers:

* ``tracing`` (default): ``torch.jit.trace`` of the adapter;
* ``scripting``: ``torch.jit.script`` of the model through detectron2's
  ``scripting_with_instances``, wrapped in :class:`ScriptableDetector`, which takes and returns
  the same tensors as the traced module. Control flow stays in the program instead of being
  frozen by one trace. TorchScript only.

ONNX (tracing only): the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at
opset :data:`ONNX_OPSET`, with dynamic H, W and D (``model.onnx``); torchvision registers the
ONNX form of its ``nms``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (first: compat for old detectron2)
import config_loading as loading
from config_loading import ToolError
from detections import Detections, compare_detections
from detectron2.utils.logger import setup_logger
from retinafocal.weights_file import WeightsFileError

#: ONNX opset of the export: 17 is supported by the TorchScript-based exporter of every torch
#: this project runs on, by onnxruntime >= 1.13, and by torchvision's nms symbolic (>= 11).
ONNX_OPSET = 17
#: Names of the exported outputs, in the order of the flattened ``Instances`` (its fields
#: sorted by name, then its image size).
OUTPUT_NAMES = ("pred_boxes", "pred_classes", "scores", "image_size")
INPUT_NAME = "image"
#: How the TorchScript module is made (detectron2's exporter's names; no caffe2).
EXPORT_METHODS = ("tracing", "scripting")


def _tracing_adapter(model: nn.Module, image: Tensor):
    try:
        from detectron2.export import TracingAdapter
    except ImportError as e:
        raise ToolError(
            "detectron2.export cannot be imported here "
            f"({type(e).__name__}: {e}); with detectron2 v0.6 it needs retinafocal.compat's "
            "caffe2-free import of detectron2.export (import retinafocal first)"
        ) from e
    return TracingAdapter(model, [{INPUT_NAME: image}])


def _check_image(image: Tensor) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ToolError(f"the export takes one (3, H, W) image, got shape {tuple(image.shape)}")


@torch.no_grad()
def eager_detections(model: nn.Module, image: Tensor) -> Detections:
    """The eager model's detections for one (3, H, W) image (no resize, no rescale)."""
    _check_image(image)
    model.eval()
    inst = model([{INPUT_NAME: image}])[0]["instances"].to("cpu")
    return Detections(inst.pred_boxes.tensor, inst.scores, inst.pred_classes)


def trace_detector(model: nn.Module, image: Tensor) -> Tuple[torch.jit.ScriptModule, Any]:
    """Trace ``model`` (eval mode) on one (3, H, W) float image.

    Returns:
        (the traced module, taking the image and returning the tensors of
        :data:`OUTPUT_NAMES`; the ``TracingAdapter``, whose ``outputs_schema`` rebuilds the
        model's own output format from them).
    """
    _check_image(image)
    model.eval()
    adapter = _tracing_adapter(model, image.float())
    # check_trace would re-run the model and compare; the export tests compare on new images.
    # The tracer warns about every Python value it freezes (image sizes in detectron2's box
    # clipping, ...); whether the trace generalises is what compare_detections checks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    return traced, adapter


class ScriptableDetector(nn.Module):
    """A detector behind the export's interface, for scripting: one (3, H, W) float image in,
    the tensors of :data:`OUTPUT_NAMES` out, as the traced module takes and returns them.

    Scripted, a detectron2 meta-architecture returns its raw per-image ``Instances`` (the eager
    one returns them post-processed); this clips the boxes to the image and drops empty ones as
    that post-processing does at the input's own size. Returning tensors, not the scripted
    ``Instances`` class, keeps the saved module loadable in another process.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        # "image" is INPUT_NAME, written out: TorchScript does not read module globals.
        instances = self.model([{"image": image}])[0]
        height, width = instances.image_size
        boxes = instances.pred_boxes
        boxes.clip((height, width))
        keep = boxes.nonempty()
        size = torch.tensor([height, width], dtype=torch.int64)
        return boxes.tensor[keep], instances.pred_classes[keep], instances.scores[keep], size


def script_detector(model: nn.Module) -> torch.jit.ScriptModule:
    """Script ``model`` (eval mode) behind :class:`ScriptableDetector`'s interface, with
    detectron2's ``scripting_with_instances``."""
    from detectron2.export import scripting_with_instances
    from detectron2.structures import Boxes

    model.eval()
    fields = {"pred_boxes": Boxes, "scores": Tensor, "pred_classes": Tensor}
    try:
        return scripting_with_instances(ScriptableDetector(model).eval(), fields)
    except Exception as e:  # TorchScript raises RuntimeError / NotSupportedError / ...
        raise ToolError(
            f"TorchScript cannot script this model ({type(e).__name__}: {str(e)[:2000]}); "
            "--export-method tracing does not need it"
        ) from e


def _check_outputs(outputs: Sequence[Tensor]) -> None:
    if len(outputs) != len(OUTPUT_NAMES):
        raise ToolError(
            f"the traced model returns {len(outputs)} tensors, expected {len(OUTPUT_NAMES)} "
            f"({', '.join(OUTPUT_NAMES)}): is it a single-image detector returning Instances "
            "with pred_boxes, pred_classes and scores?"
        )


def export_torchscript(
    model: nn.Module, image: Tensor, path: str, method: str = "tracing"
) -> str:
    """Trace ``model`` on ``image``, or script it (``method="scripting"``; ``image`` then only
    checks the outputs), and save the TorchScript module to ``path``."""
    if method not in EXPORT_METHODS:
        raise ToolError(f"unknown export method {method!r}; choose one of {EXPORT_METHODS}")
    module = trace_detector(model, image)[0] if method == "tracing" else script_detector(model)
    with torch.no_grad():
        _check_outputs(module(image.float()))
    module.save(path)
    return path


def export_onnx(model: nn.Module, image: Tensor, path: str, opset: int = ONNX_OPSET) -> str:
    """Export ``model`` traced on ``image`` to ONNX at ``path`` (dynamic image size and number
    of detections)."""
    import torchvision  # noqa: F401  (registers the ONNX symbolic of torchvision::nms)

    _check_image(image)
    model.eval()
    adapter = _tracing_adapter(model, image.float())
    with torch.no_grad():
        _check_outputs(adapter(image.float()))
    dynamic_axes = {INPUT_NAME: {1: "height", 2: "width"}}
    dynamic_axes.update({name: {0: "detections"} for name in OUTPUT_NAMES[:3]})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            adapter,
            (image.float(),),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dynamic_axes,
        )
    return path


def _as_detections(outputs: Sequence[Any]) -> Detections:
    boxes, classes, scores = (torch.as_tensor(np.asarray(o)) if not isinstance(o, Tensor) else o
                              for o in outputs[:3])
    return Detections(boxes.cpu(), scores.cpu(), classes.cpu().long())


def check_export(reference: Detections, exported: Detections) -> Optional[str]:
    """None when an export gives the eager model's detections on the sample image, else what is
    wrong. A sample on which the eager model detects nothing proves nothing (an export that
    returns nothing would match it), so it fails the check."""
    if len(reference) == 0:
        return (
            "the eager model detects nothing on the sample image, so the export cannot be "
            "checked: give a --sample-image with objects the model finds, or lower the score "
            "threshold (MODEL.RETINANET.SCORE_THRESH_TEST / model.test_score_thresh)"
        )
    return compare_detections(reference, exported)


def run_torchscript(module_or_path: Any, image: Tensor) -> Detections:
    """Detections of a TorchScript export (a loaded module or a file) on one (3, H, W) image."""
    _check_image(image)
    module = (torch.jit.load(module_or_path, map_location="cpu")
              if isinstance(module_or_path, str) else module_or_path)
    with torch.no_grad():
        return _as_detections(module(image.float()))


def run_onnx(path_or_session: Any, image: Tensor) -> Detections:
    """Detections of an ONNX export (a file or an onnxruntime session) on one image, run by
    onnxruntime on the CPU."""
    _check_image(image)
    if isinstance(path_or_session, str):
        import onnxruntime

        session = onnxruntime.InferenceSession(path_or_session,
                                               providers=["CPUExecutionProvider"])
    else:
        session = path_or_session
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.float().numpy()})
    return _as_detections(outputs)


def export_from_config(
    *,
    config_file: str,
    opts: Sequence[str],
    output_dir: str,
    formats: Sequence[str] = ("torchscript", "onnx"),
    export_method: str = "tracing",
    sample_image: Optional[str] = None,
    height: int = 800,
    width: int = 1067,
    random_weights: bool = False,
    trust_weights_file: bool = False,
) -> Dict[str, Any]:
    """Everything ``tools/export_model.py`` does: build the config's model on the CPU with its
    weights (a config without weights is an error unless ``random_weights``), trace it on a
    sample image (or script it: ``export_method``; a file resized like the config's test data,
    or a random image of ``height`` x ``width``), export, run each export on the sample and
    compare with the eager model (:func:`check_export`). Writes ``export_info.json`` describing
    the input and outputs.

    Returns:
        {"files": {format: path}, "checks": {format: None or what failed}, "info": {...}}.
    """
    unknown = [f for f in formats if f not in ("torchscript", "onnx")]
    if unknown:
        raise ToolError(f"unknown export format(s) {unknown}; choose torchscript and/or onnx")
    if export_method not in EXPORT_METHODS:
        raise ToolError(
            f"unknown export method {export_method!r}; choose one of {EXPORT_METHODS}"
        )
    if export_method == "scripting" and "onnx" in formats:
        raise ToolError("--export-method scripting exports TorchScript only; export ONNX with "
                        "--export-method tracing")
    cfg = loading.load_config(config_file, opts)
    loading.set_device(cfg, "cpu")
    model = loading.build_model(
        cfg, random_weights=random_weights, trust_weights_file=trust_weights_file
    )
    image = _sample_image(cfg, sample_image, height, width)
    os.makedirs(output_dir, exist_ok=True)
    reference = eager_detections(model, image)
    files, checks = {}, {}
    if "torchscript" in formats:
        files["torchscript"] = export_torchscript(
            model, image, os.path.join(output_dir, "model.ts"), method=export_method
        )
        checks["torchscript"] = check_export(reference,
                                             run_torchscript(files["torchscript"], image))
    if "onnx" in formats:
        files["onnx"] = export_onnx(model, image, os.path.join(output_dir, "model.onnx"))
        checks["onnx"] = check_export(reference, run_onnx(files["onnx"], image))
    aug = loading.test_augmentation(cfg)
    info = {
        "input": {
            "name": INPUT_NAME,
            "shape": ["3", "height", "width"],
            "dtype": "float32",
            "channel_order": loading.input_format(cfg),
            "value_range": "0-255",
            "resize_before": _describe_augmentation(aug),
        },
        "outputs": {
            "pred_boxes": "(D, 4) float32, x1 y1 x2 y2 in pixels of the input image",
            "pred_classes": "(D,) int64, contiguous class index",
            "scores": "(D,) float32, sorted in decreasing order",
            "image_size": "(2,) int64, height and width of the input",
        },
        "export_method": export_method,
        "onnx_opset": ONNX_OPSET if "onnx" in formats else None,
        "sample_detections": len(reference),
        "config_file": config_file,
        "weights": loading.weights_path(cfg),
    }
    with open(os.path.join(output_dir, "export_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return {"files": files, "checks": checks, "info": info}


def _describe_augmentation(aug) -> Optional[Dict[str, Any]]:
    if aug is None:
        return None
    fields = {k: v for k, v in vars(aug).items() if not k.startswith("_")}
    return {"type": type(aug).__name__, **{k: v if isinstance(v, (int, float, str)) else
                                           list(v) if isinstance(v, (list, tuple)) else repr(v)
                                           for k, v in fields.items()}}


def _sample_image(cfg: Any, path: Optional[str], height: int, width: int) -> Tensor:
    """(3, H, W) float32 image in the model's channel order: ``path`` read and resized like
    the test data, or random (seeded) when no path is given."""
    if path is None:
        g = torch.Generator().manual_seed(0)
        return torch.rand(3, height, width, generator=g) * 255
    from detectron2.data.detection_utils import read_image

    if not os.path.isfile(path):
        raise ToolError(f"sample image {path!r} does not exist")
    try:
        image = read_image(path, format=loading.input_format(cfg))
    except Exception as e:  # PIL raises several types for broken files
        raise ToolError(f"cannot read sample image {path!r} ({type(e).__name__}: {e})") from e
    aug = loading.test_augmentation(cfg)
    if aug is not None:
        image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help=".yaml (yacs) or .py (LazyConfig)")
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--format", nargs="+", default=None, choices=["torchscript", "onnx"],
                        help="default: both (torchscript only with --export-method scripting)")
    parser.add_argument("--export-method", default="tracing", choices=list(EXPORT_METHODS),
                        help="how the TorchScript module is made (default tracing; scripting "
                        "exports TorchScript only)")
    parser.add_argument("--sample-image", default=None,
                        help="image to trace and check on, resized like the test data "
                        "(default: a random image of --size)")
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1067], metavar=("H", "W"),
                        help="size of the random sample image (default 800 1067)")
    loading.add_weights_arguments(parser)
    loading.add_overrides_argument(parser)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="retinafocal")
    try:
        result = export_from_config(
            config_file=args.config_file,
            opts=args.opts,
            output_dir=args.output,
            formats=args.format or (["torchscript"] if args.export_method == "scripting"
                                    else ["torchscript", "onnx"]),
            export_method=args.export_method,
            sample_image=args.sample_image,
            height=args.size[0],
            width=args.size[1],
            random_weights=args.random_weights,
            trust_weights_file=args.trust_weights_file,
        )
    except (ToolError, WeightsFileError) as e:
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
            logger.error(f"{fmt}: {path} failed its check against the eager model: {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
