"""The single-pass engine behind the label-based classification losses.

Instead of a one-hot (anchors x K) target and autograd's temporaries, a :class:`LabelLossRunner`
applies a "terms" object (loss and analytic gradient, :mod:`._terms`) to logits (M, K) and labels
(M,) in one pass, eagerly over row chunks or as one ``torch.compile`` kernel: element (i, c) has
target ``c == labels[i]``, ignored rows are masked, the gradient goes straight to its buffer.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Tuple

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


# Passes over logits (M, K) and labels (M,): per chunk of rows eagerly, whole under torch.compile.


def _targets_and_valid(x: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    classes = torch.arange(x.shape[1], device=x.device)
    t = (classes[None, :] == labels[:, None]).to(compute_dtype(x.dtype))
    return t, (labels >= 0)[:, None]


def _pass_rows_and_grad(terms, x: Tensor, labels: Tensor, rows_out: Tensor, grad_out: Tensor):
    """Per-anchor loss (summed over classes, 0 if ignored) into rows_out (M,), and d loss / d x
    (0 on ignored rows) into grad_out (M, K)."""
    t, valid = _targets_and_valid(x, labels)
    loss, grad = terms(x.to(t.dtype), t, True)
    grad_out.copy_(torch.where(valid, grad, 0.0))
    # Row sums, not a grand total: a total inside the compiled kernel loses fp32 accuracy.
    rows_out.copy_(torch.where(valid, loss, 0.0).sum(dim=1))


def _pass_rows(terms, x: Tensor, labels: Tensor, rows_out: Tensor) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, _ = terms(x.to(t.dtype), t, False)
    rows_out.copy_(torch.where(valid, loss, 0.0).sum(dim=1))


def _pass_elementwise(terms, x: Tensor, labels: Tensor, loss_out: Tensor) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, _ = terms(x.to(t.dtype), t, False)
    loss_out.copy_(torch.where(valid, loss, 0.0))


def _pass_elementwise_and_grad(
    terms, x: Tensor, labels: Tensor, loss_out: Tensor, grad_out: Tensor
) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, grad = terms(x.to(t.dtype), t, True)
    loss_out.copy_(torch.where(valid, loss, 0.0))
    grad_out.copy_(torch.where(valid, grad, 0.0))


_PASSES: Dict[str, Callable[..., None]] = {
    "rows_and_grad": _pass_rows_and_grad,
    "rows": _pass_rows,
    "elementwise": _pass_elementwise,
    "elementwise_and_grad": _pass_elementwise_and_grad,
}


def _num_valid_elements(labels: Tensor, num_classes: int) -> Tensor:
    """Number of (valid anchor, class) elements as a tensor, at least 1 (no host sync)."""
    return ((labels >= 0).sum() * num_classes).clamp_min(1)


class LabelLossRunner:
    """Applies one ``terms`` object to logits (..., K) against labels (...) (class in [0, K),
    K = background, -1 = ignored). Results are fp32 (float64 for float64 logits), gradients in
    the logits' dtype. With ``compile``, each pass is compiled on first use, dynamic in the
    number of anchors; after a failed compilation the runner warns once and stays eager. Compiled
    functions are left out of pickled and deep-copied state."""

    def __init__(self, terms: Terms, compile: bool = False) -> None:
        self.terms = terms
        self.compile = bool(compile)
        self._compiled: Dict[str, Callable[..., None]] = {}
        self._compile_failed = False

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"] = {}
        return state

    def loss(
        self, logits: Tensor, labels: Tensor, reduction: str = "sum", where: str = ""
    ) -> Tensor:
        """The loss, differentiable in the logits: ``reduction`` as in :func:`label_focal_loss`
        ("mean" is 0 when nothing is valid); ``where`` names the caller in error messages."""
        where = where or type(self).__name__
        if reduction not in REDUCTIONS:
            raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        check_labels(logits, labels, where)
        if torch.is_grad_enabled() and logits.requires_grad:
            return _FusedLabelLoss.apply(logits, labels, self, reduction)
        x = logits.detach().reshape(-1, logits.shape[-1])
        lab = labels.reshape(-1)
        if reduction == "none":
            return self._elementwise(x, lab).view(logits.shape)
        total = self._rows(x, lab).sum()
        if reduction == "mean":
            total = total / _num_valid_elements(lab, x.shape[1])
        return total

    def anchor_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(...) loss of each anchor summed over its K classes, 0 for ignored anchors; no
        gradient and no (..., K) temporary (OHEM ranks anchors by it)."""
        check_labels(logits, labels, "anchor_losses")
        x = logits.detach().reshape(-1, logits.shape[-1])
        return self._rows(x, labels.reshape(-1)).view(labels.shape)

    def elementwise_losses(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(..., K) loss of each (anchor, class) element, 0 for ignored anchors; no gradient."""
        check_labels(logits, labels, "elementwise_losses")
        x = logits.detach().reshape(-1, logits.shape[-1])
        return self._elementwise(x, labels.reshape(-1)).view(logits.shape)

    def run(self, name: str, x: Tensor, labels: Tensor, outs: Tuple[Tensor, ...]) -> None:
        """Run pass ``name`` on x (M, K) and labels (M,) into ``outs`` (M rows each)."""
        if self.compile and x.shape[0] >= 2 and not self._compile_failed:
            if self._run_compiled(name, x, labels, outs):
                return
        self._run_eager(name, x, labels, outs)

    def _rows(self, x: Tensor, labels: Tensor) -> Tensor:
        rows = torch.empty(x.shape[0], dtype=compute_dtype(x.dtype), device=x.device)
        self.run("rows", x, labels, (rows,))
        return rows

    def _elementwise(self, x: Tensor, labels: Tensor) -> Tensor:
        loss = torch.empty(x.shape, dtype=compute_dtype(x.dtype), device=x.device)
        self.run("elementwise", x, labels, (loss,))
        return loss

    def _run_eager(self, name: str, x: Tensor, labels: Tensor, outs: Tuple[Tensor, ...]) -> None:
        run_pass = _PASSES[name]
        chunk = _EAGER_CPU_CHUNK_ELEMENTS if x.device.type == "cpu" else _EAGER_GPU_CHUNK_ELEMENTS
        step = max(1, chunk // max(1, x.shape[1]))
        with torch.no_grad():
            for start in range(0, x.shape[0], step):
                rows = slice(start, start + step)
                run_pass(self.terms, x[rows], labels[rows], *(out[rows] for out in outs))

    def _run_compiled(
        self, name: str, x: Tensor, labels: Tensor, outs: Tuple[Tensor, ...]
    ) -> bool:
        """Run pass ``name`` compiled; False (after one warning per runner) if that fails."""
        fn = self._compiled.get(name)
        if fn is None:
            # With mark_dynamic below: one kernel for any anchor count, K and constants baked in.
            # torch.compile caches by code object: a new runner reuses earlier kernels.
            fn = self._compiled[name] = torch.compile(_PASSES[name])
        for tensor in (x, labels) + tuple(outs):
            torch._dynamo.mark_dynamic(tensor, 0)
        try:
            fn(self.terms, x, labels, *outs)
            return True
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
            self._compile_failed = True
            logger.warning(
                "retinafocal.losses: torch.compile of the fused loss (%s) failed on %s; this loss "
                "runs eagerly from now on. Reason: %s: %s",
                name,
                x.device.type,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return False


class _FusedLabelLoss(torch.autograd.Function):
    """Loss and gradient from one pass; backward scales the saved gradient into a new buffer
    (not in place, so a graph kept with ``retain_graph=True`` can run backward again)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, runner: LabelLossRunner, reduction: str):
        x = logits.reshape(-1, logits.shape[-1])
        lab = labels.reshape(-1)
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
        ctx.logits_shape = logits.shape
        ctx.reduction = reduction
        ctx.scale = None
        ctx.grad = grad
        if reduction == "none":
            loss = torch.empty(x.shape, dtype=compute_dtype(logits.dtype), device=x.device)
            runner.run("elementwise_and_grad", x, lab, (loss, grad))
            return loss.view(logits.shape)
        rows = torch.empty(x.shape[0], dtype=compute_dtype(logits.dtype), device=x.device)
        runner.run("rows_and_grad", x, lab, (rows, grad))
        total = rows.sum()
        if reduction == "mean":
            # In the loss's own dtype: an fp32 scale would round float64 means at 1e-8.
            ctx.scale = 1.0 / _num_valid_elements(lab, x.shape[1]).to(rows.dtype)
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
            "MODEL.RETINANET.NUM_CLASSES (LazyConfig model.num_classes), which the data "
            "exceeds"
            if hi > num_classes
            else ""
        )
        raise ValueError(
            f"{where}: labels must lie in [-1, K={num_classes}] (-1 ignored, K background), "
            f"got values in [{lo}, {hi}]{more}"
        )
