"""The three detectors of the benchmark behind one interface (:class:`Detector`), built from
random weights that behave like trained ones (see ``benchmark_detectors.py``), in a regime
(``benchmark_regimes.py``) and at a precision variant (``benchmark_setup.PRECISIONS``)."""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
from benchmark_regimes import apply_head, head_outputs, output_statistics, regime_heads
from benchmark_setup import DETECTORS, BenchmarkSettings, Sample

__all__ = [
    "Detector",
    "Prepared",
    "build_detector",
    "calibrate_frozen_batchnorm",
    "prepare",
    "prepare_alone",
    "set_regime",
    "detectron2_cfg",
]

_PAPER_LR = 0.01
_WARMUP_FACTOR = 0.001
_SCORE_THRESH = 0.05
#: What each precision variant runs the peers' steps under (None: float32), and whether their
#: training scales gradients (fp16 does, as detectron2's AMPTrainer).
_PEER_AUTOCAST = {"fp32": None, "amp": torch.float16, "bf16": torch.bfloat16,
                  "compiled-loss": None}  # fmt: skip
#: Ours: MODEL.RETINAFOCAL.PRECISION per variant. Under "amp" ours also runs inside the fp16
#: autocast and gradient scaler (SOLVER.AMP.ENABLED with PRECISION fp16); under "bf16" it has
#: only its own autocast (PRECISION bf16, AMP off), as each would be configured.
_OURS_PRECISION = {"fp32": "fp32", "amp": "fp16", "bf16": "bf16", "compiled-loss": "fp32"}


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
        self.autocast: Optional[torch.dtype] = None
        self.start_training(scale_gradients=False)

    def start_training(self, scale_gradients: bool) -> None:
        """A fresh optimiser (the paper's SGD) and iteration count, and a gradient scaler when
        ``scale_gradients`` (fp16)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params, lr=_PAPER_LR * _WARMUP_FACTOR, momentum=0.9, weight_decay=1e-4
        )
        self.scaler = torch.amp.GradScaler("cuda") if scale_gradients else None
        self.iteration = 0

    def set_precision(self, variant: str, settings: BenchmarkSettings) -> None:
        """Run the following steps at precision ``variant`` (see ``PRECISIONS``)."""
        self.autocast = _PEER_AUTOCAST[variant]
        self.start_training(scale_gradients=variant == "amp")

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.autocast)

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

    def class_conv(self) -> nn.Conv2d:
        """The head's last class conv, (A*K) outputs."""
        raise NotImplementedError

    def box_conv(self) -> nn.Conv2d:
        """The head's last box conv, (A*4) outputs."""
        raise NotImplementedError

    def train_step(self, inputs: Any) -> float:
        """Forward, backward and optimiser step (with gradient scaling under fp16), as the
        next ordinary iteration; returns the total loss."""
        self.model.train()
        with self._autocast():
            losses = self.losses(inputs)
            total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            total.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.iteration += 1
        return float(total.detach())

    @torch.no_grad()
    def infer(self, inputs: Any) -> List[Dict[str, Tensor]]:
        self.model.eval()
        with self._autocast():
            return self.detect(inputs)

    def calibrate(self, samples: Sequence[Sample]) -> int:
        inputs = self.training_inputs(samples)
        self.model.eval()
        return calibrate_frozen_batchnorm(self.model, lambda: self.backbone_forward(inputs))


class Detectron2StyleDetector(Detector):
    """retinafocal's FocalRetinaNet or detectron2's RetinaNet: same inputs and outputs.

    Training runs as a trainer's ordinary iterations: one event storage whose iteration
    advances, so that retinafocal's imbalance diagnostics run at their configured period
    (MODEL.RETINAFOCAL.DIAGNOSTICS_PERIOD: in iteration 0, a warm-up round, then every period).
    """

    def __init__(self, name: str, model: nn.Module, device: str, cfg=None):
        self.cfg = cfg  # ours: its config, for the compiled loss
        self._loss = getattr(model, "classification_loss", None)
        super().__init__(name, model, device)

    def start_training(self, scale_gradients: bool) -> None:
        from detectron2.utils.events import EventStorage

        super().start_training(scale_gradients)
        self.storage = EventStorage(0)

    def set_precision(self, variant: str, settings: BenchmarkSettings) -> None:
        super().set_precision(variant, settings)
        if self.name != "retinafocal":
            return
        # Ours computes at its own precision key; under "bf16" without an outer autocast.
        self.model.precision = _OURS_PRECISION[variant]
        if variant == "bf16":
            self.autocast = None
        self.model.classification_loss = self._loss
        if variant == "compiled-loss":
            from retinafocal.losses import build_classification_loss

            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.MODEL.RETINAFOCAL.LOSS.COMPILE = True
            self.model.classification_loss = build_classification_loss(cfg).to(self.device)

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
        self.storage.iter = self.iteration
        with self.storage:
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

    def class_conv(self):
        return self.model.head.cls_score

    def box_conv(self):
        return self.model.head.bbox_pred


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

    def class_conv(self):
        return self.model.head.classification_head.cls_logits

    def box_conv(self):
        return self.model.head.regression_head.bbox_reg


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


def build_detector(name: str, settings: BenchmarkSettings) -> Detector:
    """Build one of :data:`DETECTORS`, randomly initialised with ``settings.seed``."""
    from detectron2.modeling import build_model

    torch.manual_seed(settings.seed)
    if name == "retinafocal":
        cfg = detectron2_cfg(settings, "FocalRetinaNet")
        model = build_model(cfg)
        if "inplace_relu" in settings.ours_variants:
            for module in model.head.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = True
        return Detectron2StyleDetector(name, model, settings.device, cfg)
    if name == "detectron2":
        return Detectron2StyleDetector(
            name, build_model(detectron2_cfg(settings, "RetinaNet")), settings.device
        )
    if name == "torchvision":
        return TorchvisionDetector(name, _torchvision_model(settings), settings.device)
    raise ValueError(f"unknown detector {name!r}; choose among {DETECTORS}")


#: What :func:`prepare` keeps per detector: its calibrated weights ("state"), the last convs'
#: tensors of every regime ("heads") and the class outputs' statistics in each ("statistics").
Prepared = Dict[str, Dict[str, Any]]


def prepare(detectors: Dict[str, Detector], settings: BenchmarkSettings,
            samples: Sequence[Sample]) -> Prepared:
    """Calibrate the frozen BNs and compute the regimes' heads (both on the first training batch
    of ``samples``) of detectron2's and torchvision's models. retinafocal's model gets
    detectron2's weights (the parameter names are equal), so that the two must give the same
    detections in float32; without detectron2 it is prepared alone."""
    prepared: Prepared = {}
    for name, det in detectors.items():
        if name != "retinafocal" or "detectron2" not in detectors:
            prepared[name] = prepare_alone(det, settings, samples)
    if "retinafocal" not in prepared and "retinafocal" in detectors:
        prepared["retinafocal"] = prepared["detectron2"]
    return prepared


def prepare_alone(det: Detector, settings: BenchmarkSettings,
                  samples: Sequence[Sample]) -> Dict[str, Any]:
    """:func:`prepare` for one detector on its own; "statistics" holds, per regime of
    ``settings.regimes``, what its class outputs give on the same images."""
    batch = samples[: settings.train_batch]
    det.calibrate(batch)
    inputs = det.inference_inputs(batch)
    heads = regime_heads(det.class_conv(), det.box_conv(), lambda: det.infer(inputs))
    state = copy.deepcopy(det.model.state_dict())
    statistics = {}
    for regime in settings.regimes:
        apply_head(det.class_conv(), det.box_conv(), heads[regime])
        statistics[regime] = _class_output_statistics(det, inputs)
    det.model.load_state_dict(state)
    return {"state": state, "heads": heads, "statistics": statistics}


def _class_output_statistics(det: Detector, inputs: Any) -> Dict[str, float]:
    (class_levels,) = head_outputs([det.class_conv()], lambda: det.infer(inputs))
    return output_statistics(class_levels)


def set_regime(detectors: Dict[str, Detector], prepared: Prepared, regime: str) -> None:
    """Put every detector back to its prepared weights with ``regime``'s last convs."""
    for name, det in detectors.items():
        det.model.load_state_dict(prepared[name]["state"])
        apply_head(det.class_conv(), det.box_conv(), prepared[name]["heads"][regime])
