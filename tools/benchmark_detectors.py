#!/usr/bin/env python
"""Side-by-side benchmark: retinafocal's ``FocalRetinaNet`` against detectron2's built-in
``RetinaNet`` and torchvision's ``retinanet_resnet50_fpn``, in one run.

    # CPU, 2 threads, 512 x 683 images (finishes in minutes):
    python tools/benchmark_detectors.py --profile --output benchmark_cpu.json
    # GPU, the paper's 800 px and 600 px scales:
    python tools/benchmark_detectors.py --device cuda --output benchmark_gpu.json

Prints one table per image size (a ratio column against each peer), whether the issue's
targets are met, optionally torch.profiler's top operators, and writes everything to --output.

All three are ResNet-50-FPN RetinaNets with the paper's settings (P3-P7, 9 anchors, 4-conv
subnets of 256 channels, 80 classes, focal loss, IoU 0.4/0.5 matching, top-1000 candidates per
level above 0.05, NMS 0.5, 100 detections), randomly initialised (nothing is downloaded), fed the
same images at the same size and batch. Figures:

* training iteration: forward + backward + SGD step on a batch of ``train_batch`` images;
* inference latency: one image (batch 1), post-processing included;
* throughput: images per second at batch ``throughput_batch``;
* peak memory: the high-water mark of the resident set (CPU) or ``max_memory_allocated`` (CUDA)
  of a fresh subprocess that builds one model and runs one phase, so peaks never mix.

Timings run in this process with the three models interleaved round by round (the starting
model rotates), so that load from other processes hits all three alike; the median of the
measured rounds after warm-up is reported.

Making random weights behave like trained ones, identically for all three:

* The ResNets use frozen BatchNorm as when fine-tuning from ImageNet (torchvision's builder
  only does so when given weights: its BatchNorm layers are replaced by ``FrozenBatchNorm2d``
  and its stem and first stage frozen, which is what it does with pretrained weights). With
  identity statistics a random ResNet-50's activations grow block after block until the loss
  overflows; each frozen BN's statistics are therefore set to those of its input on the first
  training batch (one forward pass, in network order), as a pretrained network's would be.
* Training uses the paper's SGD (momentum 0.9, weight decay 1e-4) at the first learning rate of
  its warm-up, 0.01 x 0.001: a step costs the same at any rate, and random weights stay finite.
* Inference: at the prior initialisation (bias -log(99)) no score passes 0.05 and the
  post-processing would have nothing to do. The last class conv's bias is set to logit(0.05)
  in all three, so about half of the (anchor, class) pairs pass and every level fills its
  top-1000: the post-processing works at full load (5000 candidates into NMS per image).
* retinafocal's model gets detectron2's weights (the parameter names are equal), so the two
  must give the same detections; the benchmark checks it.
* torchvision resizes inside the model. Its size limits are set to the benchmark size, so
  that resize is by a factor of 1 and leaves the image as it is; torchvision's figures include
  the cost of that (an interpolation per image), as they would in use. detectron2's models
  leave resizing to the data loader.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import retinafocal  # noqa: F401  (first: compat for old detectron2, registers FocalRetinaNet)
from markdown_table import markdown_table

__all__ = [
    "DETECTORS",
    "OURS_VARIANTS",
    "fold_frozen_batchnorm",
    "BenchmarkSettings",
    "Sample",
    "make_samples",
    "build_detector",
    "calibrate_frozen_batchnorm",
    "time_interleaved",
    "measure_memory",
    "run_benchmark",
    "format_table",
    "check_targets",
    "main",
]

#: Detector names, ours first: the ratio columns divide ours by each of the others.
DETECTORS = ("retinafocal", "detectron2", "torchvision")

#: Candidate optimisations that ``--ours-variants`` applies to retinafocal's model alone, to
#: measure what they would gain before anything changes in retinafocal.modeling:
#: "fold_frozen_bn": each frozen BatchNorm folded into the convolution before it, for inference
#: only (training keeps the paper's parametrisation); "inplace_relu": the head's ReLUs overwrite
#: their input (same results; one activation fewer kept per conv for backward). The memory
#: layout is a config key, not a variant: ``--ours-opts MODEL.RETINAFOCAL.MEMORY_FORMAT NCHW``.
OURS_VARIANTS = ("fold_frozen_bn", "inplace_relu")

_PAPER_LR = 0.01
_WARMUP_FACTOR = 0.001
_SCORE_THRESH = 0.05


@dataclass
class BenchmarkSettings:
    """What a benchmark run measures. Every field is recorded in the output json."""

    device: str = "cpu"
    threads: int = 2  # intra-op CPU threads (torch.set_num_threads)
    height: int = 512
    width: int = 683
    train_batch: int = 2  # the paper's images per GPU
    throughput_batch: int = 8
    num_classes: int = 80
    objects_per_image: int = 8
    train_warmup: int = 1
    train_iters: int = 3
    latency_warmup: int = 1
    latency_iters: int = 5
    throughput_warmup: int = 1
    throughput_iters: int = 2
    # "threshold": class bias at logit(score threshold), post-processing at full load;
    # "prior": the paper's prior init (almost no candidate passes the threshold).
    inference_bias: str = "threshold"
    seed: int = 0
    detectors: Tuple[str, ...] = DETECTORS
    # Extra yacs overrides for retinafocal only, e.g. ("MODEL.RETINAFOCAL.LOSS.COMPILE", "True").
    ours_opts: Tuple[str, ...] = ()
    # Candidate optimisations applied to retinafocal's model only (see OURS_VARIANTS).
    ours_variants: Tuple[str, ...] = ()
    memory: bool = True  # also measure peak memory in subprocesses
    # Training iterations in a memory subprocess: the second one is the first to hold the
    # optimiser's momentum while gradients are computed. Inference peaks in its first pass.
    memory_iters: int = 2
    # Fresh processes per detector and phase; the median is reported. A CPU process's peak RSS
    # varies by up to ~7% between identical runs (the allocator), more than the targets' margins.
    memory_repeats: int = 3

    def __post_init__(self) -> None:
        unknown = [d for d in self.detectors if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; choose among {DETECTORS}")
        if self.inference_bias not in ("threshold", "prior"):
            raise ValueError(f"inference_bias must be 'threshold' or 'prior', got "
                             f"{self.inference_bias!r}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"image size must be at least 32 x 32, got {self.height} x "
                             f"{self.width}")
        for name in ("train_batch", "throughput_batch", "train_iters", "latency_iters",
                     "throughput_iters", "memory_iters", "memory_repeats", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [v for v in self.ours_variants if v not in OURS_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose among {OURS_VARIANTS}")
        self.detectors = tuple(self.detectors)
        self.ours_opts = tuple(self.ours_opts)
        self.ours_variants = tuple(self.ours_variants)


@dataclass
class Sample:
    """One synthetic training image.

    Attributes:
        image: (3, H, W) uint8, BGR.
        boxes: (M, 4) float32 XYXY in pixels, inside the image.
        classes: (M,) int64 in [0, num_classes).
    """

    image: Tensor
    boxes: Tensor
    classes: Tensor


def make_samples(settings: BenchmarkSettings, num: int, seed: int) -> List[Sample]:
    """``num`` images of the benchmark size: smooth random colour fields (so convolutions see
    structure, not pure noise) with ``objects_per_image`` random boxes of 16 px up to half the
    shorter side each."""
    g = torch.Generator().manual_seed(seed)
    h, w = settings.height, settings.width
    samples = []
    for _ in range(num):
        coarse = torch.rand(1, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
        image = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        image = image[0] * 200 + torch.rand(3, h, w, generator=g) * 55
        m = settings.objects_per_image
        side = 16 + torch.rand(m, 2, generator=g) * (min(h, w) / 2 - 16)
        xy = torch.rand(m, 2, generator=g) * (torch.tensor([w, h]) - side)
        boxes = torch.cat([xy, xy + side], dim=1)
        classes = torch.randint(0, settings.num_classes, (m,), generator=g)
        samples.append(Sample(image.clamp(0, 255).to(torch.uint8), boxes, classes))
    return samples


# ---------------------------------------------------------------------------- detectors
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


def _detectron2_cfg(settings: BenchmarkSettings, meta_architecture: str):
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
        model = build_model(_detectron2_cfg(settings, "FocalRetinaNet"))
        if "inplace_relu" in settings.ours_variants:
            for module in model.head.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = True
        return Detectron2StyleDetector(name, model, settings.device)
    if name == "detectron2":
        return Detectron2StyleDetector(
            name, build_model(_detectron2_cfg(settings, "RetinaNet")), settings.device
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


def _set_inference_bias(detectors: Dict[str, Detector], settings: BenchmarkSettings) -> None:
    if settings.inference_bias == "threshold":
        value = math.log(_SCORE_THRESH / (1 - _SCORE_THRESH))
    else:
        value = -math.log((1 - 0.01) / 0.01)
    with torch.no_grad():
        for det in detectors.values():
            det.class_bias().fill_(value)


def _fold_for_inference(detectors: Dict[str, Detector], settings: BenchmarkSettings
                        ) -> Callable[[], None]:
    """Apply the "fold_frozen_bn" variant to retinafocal's model; returns its undo."""
    if "fold_frozen_bn" in settings.ours_variants and "retinafocal" in detectors:
        return fold_frozen_batchnorm(detectors["retinafocal"].model)
    return lambda: None


def _restore_prior_bias(detectors: Dict[str, Detector]) -> None:
    with torch.no_grad():
        for det in detectors.values():
            det.class_bias().fill_(-math.log((1 - 0.01) / 0.01))


# ---------------------------------------------------------------------------- timing
def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    tasks: Dict[str, Callable[[int], Any]], warmup: int, iters: int, device: str = "cpu"
) -> Dict[str, Dict[str, List[float]]]:
    """Run ``tasks[name](round)`` for ``warmup + iters`` rounds, every task once per round, the
    first task of a round rotating.

    Returns:
        {"wall": {name: seconds per measured round}, "cpu": {name: CPU seconds of this
        process (all its threads) per measured round}}. On a shared machine the CPU time is
        the steadier figure: waiting for a core inflates wall time, not CPU time.
    """
    names = list(tasks)
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + iters):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            tasks[name](r)
            _synchronize(device)
            if r >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}


def _same_detections(a: Dict[str, Tensor], b: Dict[str, Tensor]) -> bool:
    """Equal detections within rounding (boxes 0.01 px, scores 1e-5), in any order among equal
    scores; detections tied with the last kept score are left out (which of several tied
    candidates makes the cut is arbitrary)."""
    from detections import Detections, compare_detections

    if len(a["scores"]) != len(b["scores"]):
        return False
    if len(a["scores"]) == 0:
        return True
    cut = float(torch.minimum(a["scores"].min(), b["scores"].min())) + 1e-5

    def above(d: Dict[str, Tensor]) -> Detections:
        keep = d["scores"].cpu() > cut
        return Detections(d["boxes"].cpu()[keep], d["scores"].cpu()[keep],
                          d["classes"].cpu()[keep])

    return compare_detections(above(a), above(b), box_atol=1e-2, score_atol=1e-5) is None


def measure_times(detectors: Dict[str, Detector], settings: BenchmarkSettings,
                  samples: Sequence[Sample]) -> Dict[str, Any]:
    """Inference latency, throughput and training iteration time of every detector."""
    n = len(samples)
    single = {name: [d.inference_inputs([s]) for s in samples] for name, d in detectors.items()}
    batch = {name: d.inference_inputs(samples[: settings.throughput_batch])
             for name, d in detectors.items()}
    train = {name: d.training_inputs(samples[: settings.train_batch])
             for name, d in detectors.items()}
    out: Dict[str, Any] = {"detections_per_image": {}}

    _set_inference_bias(detectors, settings)
    unfold = _fold_for_inference(detectors, settings)
    for name, det in detectors.items():
        dets = det.infer(single[name][0])
        out["detections_per_image"][name] = len(dets[0]["scores"])
    if "retinafocal" in detectors and "detectron2" in detectors:
        out["same_detections_as_detectron2"] = all(
            _same_detections(detectors["retinafocal"].infer(single["retinafocal"][i])[0],
                             detectors["detectron2"].infer(single["detectron2"][i])[0])
            for i in range(min(n, 2))
        )
    out["latency_s"] = time_interleaved(
        {name: (lambda r, d=det, x=single[name]: d.infer(x[r % n])) for name, det in
         detectors.items()},
        settings.latency_warmup, settings.latency_iters, settings.device,
    )
    out["throughput_batch_s"] = time_interleaved(
        {name: (lambda r, d=det, x=batch[name]: d.infer(x)) for name, det in detectors.items()},
        settings.throughput_warmup, settings.throughput_iters, settings.device,
    )
    _restore_prior_bias(detectors)
    unfold()
    out["train_losses"] = {}

    def train_task(name, det):
        def run(r):
            loss = det.train_step(train[name])
            out["train_losses"].setdefault(name, []).append(loss)
        return run

    out["train_iter_s"] = time_interleaved(
        {name: train_task(name, det) for name, det in detectors.items()},
        settings.train_warmup, settings.train_iters, settings.device,
    )
    return out


# ---------------------------------------------------------------------------- memory
def _rss_mib() -> Tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    current = peak = float("nan")
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    if math.isnan(peak):
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return current, peak


def memory_worker(name: str, phase: str, settings: BenchmarkSettings) -> Dict[str, float]:
    """Build one detector and run one phase ("train" or "inference" at the throughput batch)
    in this process; return its memory figures in MiB. Meant for a fresh subprocess."""
    torch.set_num_threads(settings.threads)
    start_rss, _ = _rss_mib()
    det = build_detector(name, settings)
    samples = make_samples(settings, max(settings.train_batch, settings.throughput_batch),
                           settings.seed)
    det.calibrate(samples[: settings.train_batch])
    if settings.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if phase == "train":
        inputs = det.training_inputs(samples[: settings.train_batch])
        for _ in range(settings.memory_iters):
            det.train_step(inputs)
    elif phase == "inference":
        _set_inference_bias({name: det}, settings)
        _fold_for_inference({name: det}, settings)
        det.infer(det.inference_inputs(samples[: settings.throughput_batch]))
    else:
        raise ValueError(f"unknown phase {phase!r}")
    _, peak = _rss_mib()
    result = {"start_rss_mib": start_rss, "peak_rss_mib": peak}
    if settings.device.startswith("cuda"):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_memory(name: str, phase: str, settings: BenchmarkSettings) -> Dict[str, float]:
    """Run :func:`memory_worker` in a fresh Python process and return its result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, phase,
           "--settings-json", json.dumps(asdict(settings))]
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory measurement of {name} ({phase}) failed with exit code {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report
def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(raw: Dict[str, Any], settings: BenchmarkSettings) -> Dict[str, Dict[str, float]]:
    """Figures per detector: {figure: {detector: value}}."""
    figures: Dict[str, Dict[str, float]] = {
        "train_iter_s": {}, "latency_ms": {}, "throughput_img_s": {},
        "train_iter_cpu_s": {}, "latency_cpu_ms": {},
        "train_peak_mib": {}, "train_peak_above_start_mib": {}, "inference_peak_mib": {},
        "detections_per_image": {},
    }
    times = raw["times"]
    cuda = settings.device.startswith("cuda")
    for name in settings.detectors:
        figures["train_iter_s"][name] = _median(times["train_iter_s"]["wall"][name])
        figures["latency_ms"][name] = 1000 * _median(times["latency_s"]["wall"][name])
        figures["throughput_img_s"][name] = settings.throughput_batch / _median(
            times["throughput_batch_s"]["wall"][name])
        if not cuda:  # CPU time says nothing about GPU work
            figures["train_iter_cpu_s"][name] = _median(times["train_iter_s"]["cpu"][name])
            figures["latency_cpu_ms"][name] = 1000 * _median(times["latency_s"]["cpu"][name])
        figures["detections_per_image"][name] = raw["times"]["detections_per_image"][name]
        mem = raw.get("memory", {}).get(name)
        if mem:  # one list of fresh-process measurements per phase: their medians
            key = "cuda_peak_mib" if cuda else "peak_rss_mib"
            figures["train_peak_mib"][name] = _median([m[key] for m in mem["train"]])
            figures["inference_peak_mib"][name] = _median([m[key] for m in mem["inference"]])
            if not cuda:
                figures["train_peak_above_start_mib"][name] = _median(
                    [m["peak_rss_mib"] - m["start_rss_mib"] for m in mem["train"]])
    return {k: v for k, v in figures.items() if v}


_FIGURE_LABELS = {
    "train_iter_s": "training iteration, batch {train_batch} (s, lower is better)",
    "latency_ms": "inference latency, batch 1 (ms, lower is better)",
    "throughput_img_s": "inference throughput, batch {throughput_batch} (img/s, higher is better)",
    "train_iter_cpu_s": "training iteration, CPU time of all threads (s)",
    "latency_cpu_ms": "inference latency, CPU time of all threads (ms)",
    "train_peak_mib": "peak memory, training ({mem}, MiB, median of {memory_repeats} processes)",
    "train_peak_above_start_mib": "  of which above the process's start (MiB)",
    "inference_peak_mib": "peak memory, inference batch {throughput_batch} ({mem}, MiB)",
    "detections_per_image": "detections per image (sanity: equal regime)",
}

#: (figure, peer, largest allowed ours/peer ratio) from the issue; throughput is implied by
#: latency and not a target. "Ahead of torchvision" means a ratio below 1.
TARGETS = (
    ("train_iter_s", "detectron2", 0.85),
    ("latency_ms", "detectron2", 0.85),
    ("train_peak_mib", "detectron2", 0.80),
    ("train_iter_s", "torchvision", 1.0),
    ("latency_ms", "torchvision", 1.0),
    ("train_peak_mib", "torchvision", 1.0),
)


def _ratio(figures, figure, peer) -> float:
    ours = figures.get(figure, {}).get("retinafocal")
    theirs = figures.get(figure, {}).get(peer)
    if ours is None or theirs is None or theirs == 0:
        return float("nan")
    return ours / theirs


def check_targets(figures: Dict[str, Dict[str, float]]) -> List[Dict[str, Any]]:
    """One entry per issue target: figure, peer, ratio (ours / peer), limit, met (None when
    the figure was not measured)."""
    checks = []
    for figure, peer, limit in TARGETS:
        ratio = _ratio(figures, figure, peer)
        met = None if math.isnan(ratio) else (ratio < limit if limit == 1.0 else ratio <= limit)
        checks.append({"figure": figure, "peer": peer, "ratio": ratio, "limit": limit,
                       "met": met})
    return checks


def _fmt(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def _display_name(detector: str, settings: BenchmarkSettings) -> str:
    """Ours is named with its memory layout and whatever the run changed."""
    if detector != "retinafocal":
        return detector
    layout = _detectron2_cfg(settings, "FocalRetinaNet").MODEL.RETINAFOCAL.MEMORY_FORMAT
    changes = list(settings.ours_variants) + list(settings.ours_opts[::2])
    return f"retinafocal ({layout})" + (f" + {', '.join(changes)}" if changes else "")


def format_table(figures: Dict[str, Dict[str, float]], settings: BenchmarkSettings) -> str:
    """A GitHub-markdown table: one row per figure, one column per detector, then ours / peer
    ratio columns."""
    peers = [d for d in settings.detectors if d != "retinafocal"]
    ours = "retinafocal" in settings.detectors
    names = [_display_name(d, settings) for d in settings.detectors]
    header = ["figure"] + names + ([f"ours/{p}" for p in peers] if ours else [])
    mem = "CUDA max allocated" if settings.device.startswith("cuda") else "RSS"
    rows = []
    for figure, values in figures.items():
        label = _FIGURE_LABELS[figure].format(mem=mem, **asdict(settings))
        row = [label] + [_fmt(values.get(d)) for d in settings.detectors]
        if ours:
            row += [
                "-" if figure == "detections_per_image" else f"{_ratio(figures, figure, p):.2f}x"
                for p in peers
            ]
        rows.append(row)
    return markdown_table(header, rows)


def environment() -> Dict[str, Any]:
    import detectron2
    import torchvision

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "compat": retinafocal.compat.describe(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def profile_detectors(detectors: Dict[str, Detector], settings: BenchmarkSettings,
                      samples: Sequence[Sample], row_limit: int = 15) -> Dict[str, str]:
    """torch.profiler tables (top operators by self time) of one training step and one batch-1
    inference per detector, after the timed runs (so nothing is cold)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort_by = "self_cpu_time_total"
    if settings.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
        # torch >= 2.4 names it "device"; older releases only know "cuda".
        from torch.autograd.profiler_util import FunctionEventAvg

        has_device = hasattr(FunctionEventAvg, "self_device_time_total")
        sort_by = "self_device_time_total" if has_device else "self_cuda_time_total"
    tables = {}
    for name, det in detectors.items():
        train = det.training_inputs(samples[: settings.train_batch])
        single = det.inference_inputs(samples[:1])
        with profile(activities=activities) as prof:
            det.train_step(train)
            _synchronize(settings.device)
        tables[f"{name} training"] = prof.key_averages().table(sort_by=sort_by,
                                                                row_limit=row_limit)
        _set_inference_bias({name: det}, settings)
        with profile(activities=activities) as prof:
            det.infer(single)
            _synchronize(settings.device)
        _restore_prior_bias({name: det})
        tables[f"{name} inference"] = prof.key_averages().table(sort_by=sort_by,
                                                                 row_limit=row_limit)
    return tables


def run_benchmark(settings: BenchmarkSettings, profile: bool = False,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The whole benchmark; returns the json-ready result (settings, environment, raw times,
    figures, ratios, target checks, table, optional profiles)."""
    torch.set_num_threads(settings.threads)
    num_images = max(settings.train_batch, settings.throughput_batch)
    samples = make_samples(settings, num_images, settings.seed)
    log(f"building {', '.join(settings.detectors)} ({settings.height}x{settings.width}, "
        f"{settings.device}, {settings.threads} threads)")
    detectors = {name: build_detector(name, settings) for name in settings.detectors}
    prepare(detectors, settings, samples[: settings.train_batch])
    log("timing (interleaved rounds)")
    raw: Dict[str, Any] = {"times": measure_times(detectors, settings, samples)}
    profiles = profile_detectors(detectors, settings, samples) if profile else {}
    del detectors
    if settings.memory:
        # Round-robin over the detectors, so that a slow drift of the machine hits all alike.
        raw["memory"] = {name: {"train": [], "inference": []} for name in settings.detectors}
        for repeat in range(settings.memory_repeats):
            for name in settings.detectors:
                log(f"peak memory of {name} (fresh subprocesses, round {repeat + 1} of "
                    f"{settings.memory_repeats})")
                for phase in ("train", "inference"):
                    raw["memory"][name][phase].append(measure_memory(name, phase, settings))
    figures = summarize(raw, settings)
    result = {
        "settings": asdict(settings),
        "environment": environment(),
        "raw": raw,
        "figures": figures,
        "ratios": {
            f"ours/{peer}": {fig: _ratio(figures, fig, peer) for fig in figures
                             if fig != "detections_per_image"}
            for peer in settings.detectors if peer != "retinafocal"
        } if "retinafocal" in settings.detectors else {},
        "targets": check_targets(figures) if "retinafocal" in settings.detectors else [],
        "table": format_table(figures, settings),
    }
    if profiles:
        result["profiles"] = profiles
    return result


# ---------------------------------------------------------------------------- CLI
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="retinafocal vs detectron2's RetinaNet vs torchvision's RetinaNet "
        "(R50-FPN, random init), side by side in one run."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="image size; repeat for several runs (default: 512 683 on CPU, "
                        "800 1067 and 600 800 on CUDA, the paper's scales at a 4:3 aspect)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--throughput-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, nargs=3, metavar=("TRAIN", "LATENCY", "THROUGHPUT"),
                        help="measured rounds (default 4 8 2 on CPU, 20 50 10 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up rounds of every phase (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    parser.add_argument("--inference-bias", default="threshold", choices=("threshold", "prior"))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh processes per detector and phase; the median is reported")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler's top operators per detector")
    parser.add_argument("--ours-opts", nargs="*", default=[],
                        help="yacs overrides for retinafocal only (KEY VALUE ...)")
    parser.add_argument("--ours-variants", nargs="*", default=[], choices=OURS_VARIANTS,
                        help="candidate optimisations applied to retinafocal only")
    parser.add_argument("--output", default="benchmark_detectors.json",
                        help="json file for the results (default benchmark_detectors.json)")
    parser.add_argument("--memory-worker", nargs=2, metavar=("DETECTOR", "PHASE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--settings-json", help=argparse.SUPPRESS)
    return parser


def settings_from_args(args: argparse.Namespace) -> List[BenchmarkSettings]:
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    sizes = args.size or ([(800, 1067), (600, 800)] if cuda else [(512, 683)])
    train_iters, latency_iters, throughput_iters = args.iters or ((20, 50, 10) if cuda
                                                                  else (4, 8, 2))
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    return [
        BenchmarkSettings(
            device=args.device, threads=args.threads, height=h, width=w,
            train_batch=args.train_batch, throughput_batch=args.throughput_batch,
            train_warmup=warmup, train_iters=train_iters,
            latency_warmup=warmup, latency_iters=latency_iters,
            throughput_warmup=warmup, throughput_iters=throughput_iters,
            inference_bias=args.inference_bias, detectors=tuple(args.detectors),
            ours_opts=tuple(args.ours_opts), ours_variants=tuple(args.ours_variants),
            memory=not args.no_memory, memory_repeats=args.memory_repeats,
        )
        for h, w in sizes
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.memory_worker:
        settings = BenchmarkSettings(**json.loads(args.settings_json))
        print(json.dumps(memory_worker(*args.memory_worker, settings)))
        return 0
    results = []
    for settings in settings_from_args(args):
        result = run_benchmark(settings, profile=args.profile,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
        results.append(result)
        print(f"\n{settings.height}x{settings.width}, {settings.device}, "
              f"{settings.threads} threads, training batch {settings.train_batch}:")
        print(result["table"])
        print("same detections as detectron2:",
              result["raw"]["times"].get("same_detections_as_detectron2"))
        for check in result["targets"]:
            state = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
            print(f"  target ours/{check['peer']} {check['figure']} "
                  f"{'<=' if check['limit'] < 1 else '<'} {check['limit']}: "
                  f"{check['ratio']:.2f}x {state}")
        for title, table in result.get("profiles", {}).items():
            print(f"\n--- profile: {title}\n{table}")
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"\nresults written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
