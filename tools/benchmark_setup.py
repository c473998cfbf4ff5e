"""What a detector benchmark run measures (:class:`BenchmarkSettings`) and the synthetic images
it feeds every detector (:func:`make_samples`). Used by ``benchmark_detectors.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "DETECTORS",
    "OURS_VARIANTS",
    "PRECISIONS",
    "REGIMES",
    "BenchmarkSettings",
    "Sample",
    "make_samples",
]

#: Detector names, ours first: the ratio columns divide ours by each of the others.
DETECTORS = ("retinafocal", "detectron2", "torchvision")

#: Candidate optimisations that ``--ours-variants`` applies to retinafocal's model alone, to
#: measure what they would gain before anything changes in retinafocal.modeling:
#: "inplace_relu": the head's ReLUs overwrite their input (same results; one activation fewer
#: kept per conv for backward). The memory layout, precision and frozen-BN folding are config
#: keys, not variants: e.g. ``--ours-opts MODEL.RETINAFOCAL.MEMORY_FORMAT NCHW``.
OURS_VARIANTS = ("inplace_relu",)

#: What the head's last convs are set to (benchmark_regimes.py): "realistic" (outputs like a
#: trained model's), "all-candidates" (every level fills its top-k), "prior" (the paper's init).
REGIMES = ("realistic", "all-candidates", "prior")

#: Precision variants, each timed for all detectors: "fp32"; "amp": every detector's training
#: step and inference under fp16 autocast (training with a gradient scaler, as detectron2's
#: AMPTrainer), ours with MODEL.RETINAFOCAL.PRECISION fp16 inside (CUDA only); "bf16": the peers
#: under bf16 autocast, ours with MODEL.RETINAFOCAL.PRECISION bf16; "compiled-loss": float32,
#: ours with MODEL.RETINAFOCAL.LOSS.COMPILE (the peers as in "fp32").
PRECISIONS = ("fp32", "amp", "bf16", "compiled-loss")


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
    warmup: int = 1  # untimed rounds before each timed phase
    # Timed rounds of (training, latency, throughput), as ``--iters TRAIN LATENCY THROUGHPUT``.
    iters: Tuple[int, int, int] = (3, 5, 2)
    # Regimes timed, one table each (see REGIMES); the first is the headline, the one the
    # memory and the profiles are measured in.
    regimes: Tuple[str, ...] = ("realistic",)
    # Precision variants timed, rows of each table (see PRECISIONS).
    precisions: Tuple[str, ...] = ("fp32",)
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
        for name, allowed in (("regimes", REGIMES), ("precisions", PRECISIONS)):
            chosen = getattr(self, name)
            if not chosen or any(c not in allowed for c in chosen):
                raise ValueError(f"{name} must be a non-empty selection of {allowed}, got "
                                 f"{tuple(chosen)}")
        if "amp" in self.precisions and not self.device.startswith("cuda"):
            raise ValueError("the 'amp' precision (fp16 autocast) needs a CUDA device")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"image size must be at least 32 x 32, got {self.height} x "
                             f"{self.width}")
        for name in ("train_batch", "throughput_batch", "memory_iters", "memory_repeats",
                     "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.iters) != 3 or min(self.iters) < 1:
            raise ValueError(f"iters must be 3 numbers >= 1 (train, latency, throughput), got "
                             f"{self.iters}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        unknown = [v for v in self.ours_variants if v not in OURS_VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose among {OURS_VARIANTS}")
        self.iters = tuple(self.iters)  # a list after a round trip through json
        self.detectors = tuple(self.detectors)
        self.regimes = tuple(self.regimes)
        self.precisions = tuple(self.precisions)
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
