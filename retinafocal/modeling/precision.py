"""The compute precision of the backbone and head (``MODEL.RETINAFOCAL.PRECISION``): ``bf16``
and ``fp16`` run them under ``torch.autocast`` and hand float32 predictions to the loss, anchor
labelling and box decoding. ``bf16`` (CPU and GPU) needs no gradient scaling; where it would be
emulated (a CPU without AVX512-BF16 or AMX, a GPU without bf16) the model runs in float32 with a
warning. ``fp16`` (GPU only) trains with detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``)."""
from __future__ import annotations

import functools
import logging
from typing import Dict, List, Optional, Set, Tuple

import torch
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from torch import Tensor

__all__ = [
    "PRECISIONS",
    "PrecisionDenseDetector",
    "autocast_dtype",
    "check_precision",
    "check_precision_and_amp",
    "cpu_has_native_bf16",
]

logger = logging.getLogger(__name__)

#: Values of ``MODEL.RETINAFOCAL.PRECISION`` and the autocast dtype of each (None: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Both names of each setting, so that one message serves the yacs and the LazyConfig form.
_PRECISION_KEY = "MODEL.RETINAFOCAL.PRECISION (LazyConfig: model.precision)"
_AMP_KEY = "SOLVER.AMP.ENABLED (LazyConfig: train.amp.enabled)"


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` naming the key unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"{_PRECISION_KEY} must be one of {sorted(PRECISIONS)}, got {precision!r}")


def _cpuinfo_flags() -> Set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):  # "flags\t\t: fpu vme ...", one colon
                    return set(line.split(":")[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), the only case where oneDNN's
    bf16 convolutions beat float32 ones. Falls back to ``/proc/cpuinfo`` without torch's probes."""
    probes = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]  # fmt: skip
    if all(callable(p) for p in probes):
        return any(p() for p in probes)
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo_flags())


@functools.lru_cache(maxsize=None)
def autocast_dtype(precision: str, device_type: str) -> Optional[torch.dtype]:
    """The dtype to autocast the backbone and head to on ``device_type`` ("cpu", "cuda"), or None
    for float32. bf16 where it would be emulated falls back to float32 with a warning (logged
    once per process and device type, hence the cache); fp16 on a CPU is an error."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if device_type == "cpu":
        if dtype == torch.float16:
            raise ValueError(
                f"{_PRECISION_KEY} = 'fp16' needs a CUDA device; on a CPU use 'bf16' or 'fp32'"
            )
        if not cpu_has_native_bf16():
            logger.warning(
                f"{_PRECISION_KEY} = 'bf16', but this CPU has neither AVX512-BF16 nor AMX: bf16 "
                "would be emulated, slower than float32. Running in float32."
            )
            return None
    elif device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning(f"{_PRECISION_KEY} = 'bf16', but this GPU lacks bf16: running in float32.")
        return None
    return dtype


def check_precision_and_amp(precision: str, amp_enabled: bool) -> None:
    """Raise ``ValueError`` naming both keys unless ``SOLVER.AMP.ENABLED`` (detectron2's fp16
    ``AMPTrainer``, with gradient scaling) fits the precision: fp16 needs it, bf16 refuses it,
    fp32 with AMP is detectron2's AMP, unchanged."""
    check_precision(precision)
    if precision == "fp16" and not amp_enabled:
        raise ValueError(
            f"{_PRECISION_KEY} = 'fp16' trains with gradient scaling, which detectron2's "
            f"AMPTrainer does: set {_AMP_KEY} = True as well"
        )
    if amp_enabled and precision == "bf16":
        raise ValueError(
            f"{_AMP_KEY} = True is detectron2's fp16 mixed precision, but {_PRECISION_KEY} = "
            "'bf16': set AMP to False for bf16, or the precision to 'fp16' (or 'fp32') for AMP"
        )


class PrecisionDenseDetector(DenseDetector):
    """detectron2's ``DenseDetector`` whose backbone and head compute at ``precision`` (one of
    :data:`PRECISIONS`; a scripted model runs in float32). ``forward`` is detectron2's flow
    written out, because TorchScript compiles no ``super()`` call."""

    def __init__(self, *args, precision: str = "fp32", **kwargs):
        super().__init__(*args, **kwargs)
        check_precision(precision)
        self.precision = precision

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """``batched_inputs``: one ``DatasetMapper`` dict per image ("image" (C, H, W),
        "instances" in training, optionally "height" and "width"). Returns the losses in
        training; in inference one ``{"instances": Instances}`` per image, resized to its
        "height" x "width" (scripted: the bare ``Instances`` at the batch's image sizes)."""
        images = self.preprocess_image(batched_inputs)
        if torch.jit.is_scripting():
            features, predictions = self.dense_predictions(images.tensor)
        else:  # fp32 too: autocast_dtype gives None, and no autocast is entered
            features, predictions = self._dense_predictions_autocast(images.tensor)
        if self.training:
            assert not torch.jit.is_scripting(), "a scripted model only runs inference"
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.forward_training(images, features, predictions, gt_instances)
        results = self.forward_inference(images, features, predictions)
        if torch.jit.is_scripting():
            return results
        processed = []
        for result, inputs, (height, width) in zip(results, batched_inputs, images.image_sizes):
            height, width = inputs.get("height", height), inputs.get("width", width)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def dense_predictions(self, images: Tensor) -> Tuple[List[Tensor], List[List[Tensor]]]:
        """Backbone and head on the padded batch ``images`` (N, C, H, W). Returns the
        ``head_in_features`` maps, one (N, Ci, Hi, Wi) per level, and ``[logits, deltas]``, each
        one tensor per level, (N, A*K, Hi, Wi) and (N, A*4, Hi, Wi)."""
        all_features = self.backbone(images)
        features = [all_features[f] for f in self.head_in_features]
        logits, deltas = self.head(features)
        return features, [logits, deltas]

    @torch.jit.unused
    def _dense_predictions_autocast(
        self, images: Tensor
    ) -> Tuple[List[Tensor], List[List[Tensor]]]:
        """:meth:`dense_predictions` under autocast to ``precision``, predictions cast back to
        float32 (the features only give the anchor generator its sizes)."""
        device_type = images.device.type
        dtype = autocast_dtype(self.precision, device_type)
        if dtype is None:  # fp32, or bf16 falling back (autocast_dtype has logged why)
            return self.dense_predictions(images)
        with torch.autocast(device_type, dtype=dtype):
            features, predictions = self.dense_predictions(images)
        return features, [[p.float() for p in level] for level in predictions]
