"""The three detectors of the benchmark behind one interface (:class:`Detector`), built from
random weights that behave like trained ones (see ``benchmark_detectors.py``)."""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
from benchmark_setup import DETECTORS, BenchmarkSettings, Sample

__all__ = [
    "Detector",
    "build_detector",
    "calibrate_frozen_batchnorm",
    "fold_frozen_batchnorm",
    "prepare",
    "set_inference_bias",
    "restore_prior_bias",
    "fold_for_inference",
    "detectron2_cfg",
]

_PAPER_LR = 0.01
_WARMUP_FACTOR = 0.001
_SCORE_THRESH = 0.05


def _frozen_bn_types() -> Tuple[type, ...]:
    from detectron2.layers import FrozenBatchNorm2d as D2FrozenBN
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBN

    return (D2FrozenBN, TVFrozenBN)


@torch.no_grad()
def calibrate_frozen_batchnorm(model: nn.Module, forward: Callable[[], Any]) -> int:
    """Set every frozen BN's statistics to the per-channel mean and variance of its input
    during one call of ``forward`` (layers are visited in network order, so each sees inputs
    already normalised upstream). Returns how many layers were calibrated."""
    hooks = []

    def set_statistics(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    for module in model.modules():
        if isinstance(module, _frozen_bn_types()):
            hooks.append(module.register_forward_pre_hook(set_statistics))
    try:
        forward()
    finally:
        for hook in hooks:
            hook.remove()
    return len(hooks)


class Detector:
    """A model under test with its inputs in its own format and its optimiser.

    Subclasses convert :class:`Sample` lists once (outside the timed region) and implement a
    training step and an inference call.
    """

    name: str
    model: nn.Module

    def __init__(self, name: str, model: nn.Module, device: str):
        self.name = name
        self.model = model.to(device)
        self.device = device
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=_PAPER_LR * _WARMUP_FACTOR, momentum=0.9, weight_decay=1e-4
        )

    # converting inputs -------------------------------------------------------------
    def training_inputs(self, samples: Sequence[Sample]) -> Any:
        raise NotImplementedError

    def inference_inputs(self, samples: Sequence[Sample]) -> Any:
        raise NotImplementedError

    # running ----------------------------------------------------------------------
    def losses(self, inputs: Any) -> Dict[str, Tensor]:
        raise NotImplementedError

    def detect(self, inputs: Any) -> List[Dict[str, Tensor]]:
        """Per image: {"boxes": (D, 4), "scores": (D,), "classes": (D,)}."""
        raise NotImplementedError

    def backbone_forward(self, inputs: Any) -> None:
        raise NotImplementedError

    def class_bias(self) -> Tensor:
        raise NotImplementedError

    def train_step(self, inputs: Any) -> float:
        """Forward, backward and optimiser step; returns the total loss."""
        self.model.train()
        losses = self.losses(inputs)
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return float(total.detach())

    @torch.no_grad()
    def infer(self, inputs: Any) -> List[Dict[str, Tensor]]:
        self.model.eval()
        return self.detect(inputs)

    def calibrate(self, samples: Sequence[Sample]) -> int:
        inputs = self.training_inputs(samples)
        self.model.eval()
        return calibrate_frozen_batchnorm(self.model, lambda: self.backbone_forward(inputs))


class Detectron2StyleDetector(Detector):
    """retinafocal's FocalRetinaNet or detectron2's RetinaNet: same inputs and outputs."""

    def training_inputs(self, samples):
        from detectron2.structures import Boxes, Instances

        inputs = []
        for s in samples:
            h, w = s.image.shape[1:]
            inst = Instances((h, w))
            inst.gt_boxes = Boxes(s.boxes.to(self.device))
            inst.gt_classes = s.classes.to(self.device)
            inputs.append({"image": s.image.to(self.device), "instances": inst,
                           "height": h, "width": w})
        return inputs

    def inference_inputs(self, samples):
        return [{"image": s.image.to(self.device), "height": s.image.shape[1],
                 "width": s.image.shape[2]} for s in samples]

    def losses(self, inputs):
        from detectron2.utils.events import EventStorage

        with EventStorage(0):
            return self.model(inputs)

    def detect(self, inputs):
        outputs = self.model(inputs)
        return [
            {"boxes": o["instances"].pred_boxes.tensor, "scores": o["instances"].scores,
             "classes": o["instances"].pred_classes}
            for o in outputs
        ]

    def backbone_forward(self, inputs):
        images = self.model.preprocess_image(inputs)
        self.model.backbone(images.tensor)

    def class_bias(self):
        return self.model.head.cls_score.bias


class TorchvisionDetector(Detector):
    """torchvision's RetinaNet: RGB images in [0, 1], targets as dicts."""

    def training_inputs(self, samples):
        images = [s.image.flip(0).float().div(255).to(self.device) for s in samples]
        targets = [{"boxes": s.boxes.to(self.device), "labels": s.classes.to(self.device)}
                   for s in samples]
        return images, targets

    def inference_inputs(self, samples):
        return [s.image.flip(0).float().div(255).to(self.device) for s in samples]

    def losses(self, inputs):
        images, targets = inputs
        return self.model(images, targets)

    def detect(self, inputs):
        return [{"boxes": o["boxes"], "scores": o["scores"], "classes": o["labels"]}
                for o in self.model(inputs)]

    def backbone_forward(self, inputs):
        images, _ = self.model.transform(inputs[0])
        self.model.backbone(images.tensors)

    def class_bias(self):
        return self.model.head.classification_head.cls_logits.bias


def detectron2_cfg(settings: BenchmarkSettings, meta_architecture: str):
    """The repository's paper config for ``FocalRetinaNet`` (with ``settings.ours_opts``) or
    detectron2's ``RetinaNet``, at the benchmark's device and class count."""
    from detectron2.config import get_cfg

    from retinafocal.config_overrides import merge_yacs_file, merge_yacs_overrides

    cfg = get_cfg()
    retinafocal.add_retinafocal_config(cfg)
    merge_yacs_file(cfg, _base_config_path())
    cfg.MODEL.META_ARCHITECTURE = meta_architecture
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = settings.device
    cfg.MODEL.RETINANET.NUM_CLASSES = settings.num_classes
    # Imbalance statistics are optional logging, not part of the paper's training step.
    cfg.MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD = 0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    if meta_architecture == "FocalRetinaNet":
        merge_yacs_overrides(cfg, list(settings.ours_opts))
    return cfg


def _base_config_path() -> str:
    """The repository's paper config (configs/Base-RetinaNet.yaml)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, os.pardir, "configs", "Base-RetinaNet.yaml")
    return os.path.normpath(path)


def _torchvision_model(settings: BenchmarkSettings) -> nn.Module:
    from torchvision_retinanet import torchvision_retinanet

    # min_size = H and max_size = max(H, W) give a resize factor of exactly 1.
    return torchvision_retinanet(
        num_classes=settings.num_classes,
        min_size=settings.height,
        max_size=max(settings.height, settings.width),
        score_thresh=_SCORE_THRESH,
        nms_thresh=0.5,
        detections_per_img=100,
        topk_candidates=1000,
    )


@torch.no_grad()
def fold_frozen_batchnorm(model: nn.Module) -> Callable[[], None]:
    """Fold every frozen BN that follows a detectron2 ``Conv2d`` into that conv's weight and
    bias (exact up to rounding: ``(W x) * s + b == (W * s) x + b``). Returns a function that
    undoes it."""
    from detectron2.layers import Conv2d, FrozenBatchNorm2d

    undo = []
    for conv in model.modules():
        if not (isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d)):
            continue
        norm = conv.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        undo.append((conv, conv.weight.detach().clone(), conv.bias, norm))
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias, requires_grad=False)
        conv.norm = None

    @torch.no_grad()
    def restore() -> None:
        for conv, weight, bias, norm in undo:
            conv.weight.copy_(weight)
            conv.bias = bias
            conv.norm = norm

    return restore


def build_detector(name: str, settings: BenchmarkSettings) -> Detector:
    """Build one of :data:`DETECTORS`, randomly initialised with ``settings.seed``."""
    from detectron2.modeling import build_model

    torch.manual_seed(settings.seed)
    if name == "retinafocal":
        model = build_model(detectron2_cfg(settings, "FocalRetinaNet"))
        if "inplace_relu" in settings.ours_variants:
            for module in model.head.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = True
        return Detectron2StyleDetector(name, model, settings.device)
    if name == "detectron2":
        return Detectron2StyleDetector(
            name, build_model(detectron2_cfg(settings, "RetinaNet")), settings.device
        )
    if name == "torchvision":
        return TorchvisionDetector(name, _torchvision_model(settings), settings.device)
    raise ValueError(f"unknown detector {name!r}; choose among {DETECTORS}")


def prepare(detectors: Dict[str, Detector], settings: BenchmarkSettings,
            calibration: Sequence[Sample]) -> None:
    """Calibrate frozen BNs; give retinafocal detectron2's weights when both are present."""
    for det in detectors.values():
        if det.name == "retinafocal" and "detectron2" in detectors:
            continue
        det.calibrate(calibration)
    if "retinafocal" in detectors and "detectron2" in detectors:
        detectors["retinafocal"].model.load_state_dict(detectors["detectron2"].model.state_dict())


def set_inference_bias(detectors: Dict[str, Detector], settings: BenchmarkSettings) -> None:
    """Set every detector's last class bias for inference: logit(score threshold) or the prior
    (``settings.inference_bias``)."""
    if settings.inference_bias == "threshold":
        value = math.log(_SCORE_THRESH / (1 - _SCORE_THRESH))
    else:
        value = -math.log((1 - 0.01) / 0.01)
    with torch.no_grad():
        for det in detectors.values():
            det.class_bias().fill_(value)


def fold_for_inference(detectors: Dict[str, Detector], settings: BenchmarkSettings
                        ) -> Callable[[], None]:
    """Apply the "fold_frozen_bn" variant to retinafocal's model; returns its undo."""
    if "fold_frozen_bn" in settings.ours_variants and "retinafocal" in detectors:
        return fold_frozen_batchnorm(detectors["retinafocal"].model)
    return lambda: None


def restore_prior_bias(detectors: Dict[str, Detector]) -> None:
    """Put the paper's prior (pi = 0.01) back into every detector's last class bias."""
    with torch.no_grad():
        for det in detectors.values():
            det.class_bias().fill_(-math.log((1 - 0.01) / 0.01))
