"""The single-pass engine behind the label-based losses (:class:`LabelLossRunner`): loss and
analytic gradient (:mod:`._terms`) from one pass, eager over row chunks or one ``torch.compile``
kernel, with no one-hot target and none of autograd's temporaries."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._terms import Terms, compute_dtype

logger = logging.getLogger(__name__)

__all__ = ["LabelLossRunner", "check_labels", "REDUCTIONS"]

REDUCTIONS = ("none", "mean", "sum")

# (anchor, class) elements per eager CPU chunk: its temporaries stay in cache and are recycled, and
# at ATen's intra-op grain size each op runs on the calling thread, with no OpenMP fork/join. A
# chunk boundary can move an element between vectorised and scalar pow/exp/log (last-ulp
# differences), so this size is part of the results: keep it fixed.
_EAGER_CPU_CHUNK_ELEMENTS = 1 << 15
# On GPUs the caching allocator recycles temporaries anyway; chunks there only bound their memory.
_EAGER_GPU_CHUNK_ELEMENTS = 1 << 23


def _pass(terms, x: Tensor, labels: Tensor, loss_out: Tensor, grad_out: Optional[Tensor] = None):
    """Loss of logits x (M, K) against labels (M,) into ``loss_out``, (M, K) or summed over the
    classes (M,), and d loss / d x into ``grad_out`` (M, K) when given; 0 on ignored rows.
    torch.compile specialises on both choices: each combination is its own kernel."""
    classes = torch.arange(x.shape[1], device=x.device)
    t = (classes[None, :] == labels[:, None]).to(compute_dtype(x.dtype))
    valid = (labels >= 0)[:, None]
    loss, grad = terms(x.to(t.dtype), t, grad_out is not None)
    if grad_out is not None:
        grad_out.copy_(torch.where(valid, grad, 0.0))
    loss = torch.where(valid, loss, 0.0)
    # Row sums, not a grand total: a total inside the compiled kernel loses fp32 accuracy.
    loss_out.copy_(loss.sum(dim=1) if loss_out.dim() == 1 else loss)


def _num_valid_elements(labels: Tensor, num_classes: int) -> Tensor:
    """Number of (valid anchor, class) elements as a tensor, at least 1 (no host sync)."""
    return ((labels >= 0).sum() * num_classes).clamp_min(1)


class LabelLossRunner:
    """Applies one ``terms`` object to logits (..., K) against labels (...) (class in [0, K),
    K = background, -1 = ignored): fp32 results (float64 for float64 logits), gradients in the
    logits' dtype. With ``compile`` the pass compiles on first use (left out of pickled and
    deep-copied state); after a failed compilation the runner warns once and stays eager."""

    def __init__(self, terms: Terms, compile: bool = False) -> None:
        self.terms = terms
        self.compile = bool(compile)
        self._compiled: Optional[Callable[..., None]] = None
        self._compile_failed = False

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = None
        return state

    def loss(
        self, logits: Tensor, labels: Tensor, reduction: str = "sum", where: str = "LabelLossRunner"
    ) -> Tensor:
        """The loss, differentiable in the logits: ``reduction`` as in :func:`label_focal_loss`
        ("mean" is 0 when nothing is valid); ``where`` names the caller in error messages."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        check_labels(logits, labels, where)
        if torch.is_grad_enabled() and logits.requires_grad:
            return _FusedLabelLoss.apply(logits, labels, self, reduction)
        if reduction == "none":
            return self._detached(logits, labels, per_row=False).view(logits.shape)
        total = self._detached(logits, labels, per_row=True).sum()
        if reduction == "mean":
            total = total / _num_valid_elements(labels, logits.shape[-1])
        return total

    def anchor_losses(self, logits: Tensor, labels: Tensor, where: str = "anchor_losses") -> Tensor:
        """(...) loss of each anchor summed over its K classes, 0 for ignored anchors, with no
        gradient or (..., K) temporary (OHEM ranks anchors by it); ``where`` as in :meth:`loss`."""
        check_labels(logits, labels, where)
        return self._detached(logits, labels, per_row=True).view(labels.shape)

    def elementwise_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(..., K) loss of each (anchor, class) element, 0 for ignored anchors; no gradient."""
        check_labels(logits, labels, "elementwise_losses")
        return self._detached(logits, labels, per_row=False).view(logits.shape)

    def _detached(self, logits: Tensor, labels: Tensor, per_row: bool) -> Tensor:
        x = logits.detach().reshape(-1, logits.shape[-1])
        return self.run(x, labels.reshape(-1), per_row)

    def run(
        self, x: Tensor, labels: Tensor, per_row: bool, grad: Optional[Tensor] = None
    ) -> Tensor:
        """The loss of x (M, K) against labels (M,), (M,) if ``per_row`` else (M, K), from one
        :func:`_pass` (compiled if ``compile`` and M >= 2; d loss / d x into ``grad`` if given)."""
        shape = x.shape[:1] if per_row else x.shape
        loss = torch.empty(shape, dtype=compute_dtype(x.dtype), device=x.device)
        outs = (loss,) if grad is None else (loss, grad)
        if self.compile and x.shape[0] >= 2 and not self._compile_failed:
            if self._compiled is None:
                # With mark_dynamic below: one kernel for any anchor count, K and constants baked
                # in. torch.compile caches by code object: a new runner reuses earlier kernels.
                self._compiled = torch.compile(_pass)
            for tensor in (x, labels) + outs:
                torch._dynamo.mark_dynamic(tensor, 0)
            try:
                self._compiled(self.terms, x, labels, *outs)
                return loss
            except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
                self._compile_failed = True
                logger.warning(
                    "retinafocal.losses: torch.compile of the fused loss (%s%s) failed on %s; "
                    "this loss runs eagerly from now on. Reason: %s: %s",
                    "rows" if per_row else "elementwise",
                    "" if grad is None else "_and_grad",
                    x.device.type,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
        chunk = _EAGER_CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else _EAGER_GPU_CHUNK_ELEMENTS
        step = max(1, chunk // max(1, x.shape[1]))
        with torch.no_grad():
            for start in range(0, x.shape[0], step):
                rows = slice(start, start + step)
                _pass(self.terms, x[rows], labels[rows], *(out[rows] for out in outs))
        return loss


class _FusedLabelLoss(torch.autograd.Function):
    """Loss and gradient from one pass; backward scales the saved gradient into a new buffer
    (not in place, so a graph kept with ``retain_graph=True`` can run backward again)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, runner: LabelLossRunner, reduction: str):
        x = logits.reshape(-1, logits.shape[-1])
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
        ctx.logits_shape = logits.shape
        ctx.reduction = reduction
        ctx.scale = None
        ctx.grad = grad
        loss = runner.run(x, labels.reshape(-1), reduction != "none", grad)
        if reduction == "none":
            return loss.view(logits.shape)
        total = loss.sum()
        if reduction == "mean":
            # In the loss's own dtype: an fp32 scale would round float64 means at 1e-8.
            ctx.scale = 1.0 / _num_valid_elements(labels, x.shape[1]).to(loss.dtype)
            total = total * ctx.scale
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        grad = ctx.grad
        if ctx.reduction == "none":
            scale = grad_output.reshape(grad.shape)
        else:
            scale = grad_output if ctx.scale is None else grad_output * ctx.scale
        # Into a buffer of the gradient's dtype: fp16/bf16 logits get an fp16/bf16 gradient.
        out = torch.mul(grad, scale, out=torch.empty_like(grad))
        return out.view(ctx.logits_shape), None, None, None


def check_labels(logits: Tensor, labels: Tensor, where: str) -> None:
    """Raise a clear error unless ``labels`` fits ``logits`` (..., K): same leading shape,
    integer dtype, values in [-1, K] (-1 = ignored, K = background)."""
    if not logits.is_floating_point():
        raise TypeError(f"{where}: logits must be a floating tensor, got {logits.dtype}")
    if logits.dim() < 1:
        raise ValueError(f"{where}: logits must have a class dimension (..., K), got a scalar")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"{where}: labels must be integer class indices (-1 ignored, K background), "
            f"got dtype {labels.dtype}"
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{where}: labels shape {tuple(labels.shape)} must equal logits shape without the "
            f"class dimension {tuple(logits.shape[:-1])}"
        )
    if labels.device != logits.device:
        raise ValueError(f"{where}: labels on {labels.device}, logits on {logits.device}")
    num_classes = logits.shape[-1]
    # One range test for every device, so the CPU path exercises what accelerators assert.
    in_range = ((labels >= -1) & (labels <= num_classes)).all()
    if labels.device.type != "cpu":
        # No host sync on accelerators: a device-side assert instead of a readable message.
        torch._assert_async(in_range)
        return
    if not bool(in_range):
        lo, hi = int(labels.min()), int(labels.max())
        more = (
            ". K is the number of classes, the logits' last dimension: in a detector, "
            "MODEL.RETINANET.NUM_CLASSES (LazyConfig model.num_classes), which the data exceeds"
            if hi > num_classes
            else ""
        )
        raise ValueError(
            f"{where}: labels must lie in [-1, K={num_classes}] (-1 ignored, K background), "
            f"got values in [{lo}, {hi}]{more}"
        )
