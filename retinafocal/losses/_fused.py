"""Single-pass machinery behind the label-based classification losses.

A dense detector's classification target is one integer per anchor (a class in [0, K), K for
background, -1 for ignored), yet the usual implementations expand it to a one-hot (anchors x K)
float matrix and let autograd record half a dozen (anchors x K) temporaries. Here a loss is an
elementwise "terms" object that returns the loss *and* its analytic derivative, and a "runner"
applies it to logits (M, K) and labels (M,) in one pass, writing the gradient straight into its
final buffer. The target of element (i, c) is ``c == labels[i]``, computed on the fly; ignored
rows are masked in the same pass, with no gather of the valid rows.

Runners execute either eagerly, over row chunks small enough that their temporaries stay in cache
(and come from the allocator's free lists instead of fresh, page-faulting memory), or through
``torch.compile`` as one fused kernel (C++/OpenMP on CPU, Triton on GPU). Compilation happens on
first use, is cached per runner, and falls back to eager for good if it fails.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

__all__ = [
    "FocalTerms",
    "FocalStarTerms",
    "HingeTerms",
    "fused_label_loss",
    "anchor_losses",
    "check_labels",
    "REDUCTIONS",
]

REDUCTIONS = ("none", "mean", "sum")

# Eager runners on CPU split the rows between torch.get_num_threads() Python threads, each
# walking chunks of at most this many elements: below ATen's intra-op grain size (32768), so every
# op runs inline on its thread. Large ops would instead meet at an OpenMP barrier after each of
# the ~50 elementwise steps, which on a machine shared with other processes stalled for
# milliseconds per op (the eager pass ran 5-20x slower than this layout there). Chunks this small
# also keep the temporaries in cache and recycle them through malloc rather than page-faulting
# fresh (anchors x K) buffers.
_EAGER_CPU_CHUNK_ELEMENTS = 1 << 15
_MAX_EAGER_THREADS = 8
# On GPUs the caching allocator recycles temporaries anyway; chunks there only bound their memory.
_EAGER_GPU_CHUNK_ELEMENTS = 1 << 23

# Gradient buffers at least this large are backed by transparent huge pages on Linux CPU: the
# first touch of a fresh 4 KiB-page mapping costs ~7x the write itself on the machines we measured
# (a 129 MB buffer: 60 ms to fault and fill vs 8 ms with huge pages).
_HUGE_PAGE = 2 << 20
_HUGE_PAGE_MIN_BYTES = 8 << 20


# ------------------------------------------------------------------------------------------------
# Elementwise terms: (x, t) -> (loss, d loss / d x). x and t have the compute dtype (float32, or
# float64 for float64 logits) and broadcast against each other; t is the binary target, 0 or 1
# for the label-based losses (FocalTerms also accepts soft targets in [0, 1]).
# ------------------------------------------------------------------------------------------------


def _log1p_of_unit(e: Tensor, u: Tensor) -> Tensor:
    """log1p(e) for e in [0, 1], given u = 1 + e, to within a few ulp.

    ``torch.log1p`` is not vectorised on CPU (it was ~10x slower than ``log`` here, eager and under
    inductor); ``log(u) * e / (u - 1)`` cancels the rounding of u exactly (Goldberg's identity)
    and costs one division. Where u rounds to 1, log1p(e) == e to working precision.
    """
    return torch.where(u == 1.0, e, torch.log(u) * (e / (u - 1.0)))


def _sigmoid_parts(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(sigmoid(x), sigmoid(-x), softplus(-|x|) = log1p(exp(-|x|))) from a single exp.

    Both sigmoids are formed without the cancellation of ``1 - sigmoid(x)``, so logits of +-100
    keep their tiny probabilities and every term below stays finite.
    """
    e = torch.exp(-x.abs())
    u = 1.0 + e
    inv = 1.0 / u
    small = e * inv
    nonneg = x >= 0
    p = torch.where(nonneg, inv, small)
    p_neg = torch.where(nonneg, small, inv)
    return p, p_neg, _log1p_of_unit(e, u)


class FocalTerms:
    """Sigmoid focal loss, ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` per element.

    With p = sigmoid(x), p_t = p if t = 1 else 1 - p, alpha_t = alpha if t = 1 else 1 - alpha
    (no weighting when alpha < 0). Soft targets follow torchvision's definition: ``ce = BCE(x, t)``,
    ``1 - p_t = t (1 - p) + (1 - t) p``, ``alpha_t = alpha t + (1 - alpha)(1 - t)``.
    With q = 1 - p_t the derivative is

        d FL / d x = alpha_t q^gamma [ (p - t) + gamma * ce * (1 - 2t) * p (1 - p) / q ],

    where p (1 - p) / q lies in [0, 1]. For hard targets (``hard_targets=True``, the label-based
    losses) it is simply p or 1 - p, which saves a division per element. gamma = 0 takes a
    separate branch, so it is exactly alpha-balanced CE.
    """

    def __init__(self, alpha: float, gamma: float, hard_targets: bool = False):
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.hard_targets = bool(hard_targets)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        p, p_neg, log1p_e = _sigmoid_parts(x)
        not_t = 1.0 - t
        # BCE(x, t) = (1 - t) x + softplus(-x), written so neither hard target cancels.
        ce = not_t * x + torch.clamp_min(-x, 0.0) + log1p_e
        if self.alpha >= 0:
            a_t = self.alpha * t + (1.0 - self.alpha) * not_t
        else:
            a_t = None
        # p - t, exact for hard targets (no 1 - p rounding at large logits).
        d_ce = not_t * p - t * p_neg
        if self.gamma == 0.0:
            loss, grad = ce, d_ce
        else:
            q = t * p_neg + not_t * p
            mod = q * q if self.gamma == 2.0 else torch.pow(q, self.gamma)
            loss = ce * mod
            if need_grad:
                if self.hard_targets:
                    r = t * p + not_t * p_neg
                else:
                    r = torch.where(q > 0, p * p_neg / q, 0.0)
                grad = mod * (d_ce + (self.gamma * ce) * (not_t - t) * r)
        if a_t is not None:
            loss = a_t * loss
            if need_grad:
                grad = a_t * grad
        return loss, (grad if need_grad else None)


class FocalStarTerms:
    """FL* (paper, Appendix A): ``x_t = x`` if t = 1 else ``-x``;
    ``p*_t = sigmoid(gamma x_t + beta)``;
    ``FL* = -log(p*_t) / gamma = softplus(-(gamma x_t + beta)) / gamma``;
    ``d FL* / d x = -s * sigmoid(-(gamma x_t + beta))`` with s = +1 (t = 1) or -1 (t = 0).
    """

    def __init__(self, gamma: float, beta: float):
        self.gamma = float(gamma)
        self.beta = float(beta)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        s = 2.0 * t - 1.0
        z = (self.gamma * s) * x + self.beta
        _, p_neg_z, log1p_e = _sigmoid_parts(z)
        loss = (torch.clamp_min(-z, 0.0) + log1p_e) * (1.0 / self.gamma)
        return loss, (-s * p_neg_z if need_grad else None)


class HingeTerms:
    """Hinge on p_t (paper, Sec. 5.1): ``L = max(0, margin - p_t)``, zero once p_t >= margin.

    ``d L / d x = -s p_t (1 - p_t)`` where p_t < margin, else 0 (s = +1 for t = 1, -1 for t = 0).
    """

    def __init__(self, margin: float):
        self.margin = float(margin)

    def __call__(self, x: Tensor, t: Tensor, need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
        s = 2.0 * t - 1.0
        p_t, p_t_neg, _ = _sigmoid_parts(s * x)
        below = p_t < self.margin
        loss = torch.where(below, self.margin - p_t, 0.0)
        if not need_grad:
            return loss, None
        return loss, torch.where(below, -s * (p_t * p_t_neg), 0.0)


# ------------------------------------------------------------------------------------------------
# Runners: apply terms to logits (M, K) and labels (M,). Same code runs eagerly (per chunk) and
# under torch.compile (whole tensors).
# ------------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 logits accumulate in fp32; float64 stays float64 (gradcheck).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _targets_and_valid(x: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    classes = torch.arange(x.shape[1], device=x.device)
    t = (classes[None, :] == labels[:, None]).to(_compute_dtype(x.dtype))
    return t, (labels >= 0)[:, None]


def _run_rows_and_grad(terms, x: Tensor, labels: Tensor, rows_out: Tensor, grad_out: Tensor):
    """Per-anchor loss (summed over classes, 0 if ignored) into rows_out (M,), and d loss / d x
    (0 on ignored rows) into grad_out (M, K)."""
    t, valid = _targets_and_valid(x, labels)
    loss, grad = terms(x.to(t.dtype), t, True)
    grad_out.copy_(torch.where(valid, grad, 0.0))
    # Row sums, not one grand total: the compiled kernel then reduces only 80 values per
    # accumulator, and the caller's torch.sum over rows keeps fp32 totals accurate (a grand total
    # inside the kernel drifted by ~1e-5 relative on 10^6 elements).
    rows_out.copy_(torch.where(valid, loss, 0.0).sum(dim=1))


def _run_rows(terms, x: Tensor, labels: Tensor, rows_out: Tensor) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, _ = terms(x.to(t.dtype), t, False)
    rows_out.copy_(torch.where(valid, loss, 0.0).sum(dim=1))


def _run_elementwise(terms, x: Tensor, labels: Tensor, loss_out: Tensor) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, _ = terms(x.to(t.dtype), t, False)
    loss_out.copy_(torch.where(valid, loss, 0.0))


def _run_elementwise_and_grad(
    terms, x: Tensor, labels: Tensor, loss_out: Tensor, grad_out: Tensor
) -> None:
    t, valid = _targets_and_valid(x, labels)
    loss, grad = terms(x.to(t.dtype), t, True)
    loss_out.copy_(torch.where(valid, loss, 0.0))
    grad_out.copy_(torch.where(valid, grad, 0.0))


_RUNNERS: Dict[str, Callable[..., None]] = {
    "rows_and_grad": _run_rows_and_grad,
    "rows": _run_rows,
    "elementwise": _run_elementwise,
    "elementwise_and_grad": _run_elementwise_and_grad,
}

_compiled: Dict[str, Callable[..., None]] = {}
_compile_failed: Dict[str, bool] = {}


_pool: Optional[ThreadPoolExecutor] = None
_pool_key: Tuple[int, int] = (0, 0)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads, recreated after a fork or a thread change."""
    global _pool, _pool_key
    key = (os.getpid(), workers)
    if _pool is None or _pool_key != key:
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="retinafocal-loss")
        _pool_key = key
    return _pool


def _run_eager(name: str, terms, x: Tensor, labels: Tensor, outs: Tuple[Tensor, ...]) -> None:
    runner = _RUNNERS[name]
    rows = x.shape[0]
    on_cpu = x.device.type == "cpu"
    chunk = _EAGER_CPU_CHUNK_ELEMENTS if on_cpu else _EAGER_GPU_CHUNK_ELEMENTS
    step = max(1, chunk // max(1, x.shape[1]))

    def work(lo: int, hi: int) -> None:
        with torch.no_grad():  # grad mode is per thread; the pool's threads start with it on
            for start in range(lo, hi, step):
                sl = slice(start, min(start + step, hi))
                runner(terms, x[sl], labels[sl], *(o[sl] for o in outs))

    # Beyond ~8 threads the per-op Python overhead, serialised by the GIL, stops paying off.
    workers = min(torch.get_num_threads(), _MAX_EAGER_THREADS, -(-rows // step)) if on_cpu else 1
    if workers <= 1:
        work(0, rows)
        return
    # Contiguous, chunk-aligned row ranges; the calling thread takes the first one itself.
    per_worker = -(-rows // (workers * step)) * step
    ranges = [(lo, min(lo + per_worker, rows)) for lo in range(0, rows, per_worker)]
    pool = _thread_pool(workers - 1)
    futures = [pool.submit(work, lo, hi) for lo, hi in ranges[1:]]
    work(*ranges[0])
    for future in futures:
        future.result()


def _run(
    name: str, terms, x: Tensor, labels: Tensor, outs: Tuple[Tensor, ...], compile: bool
) -> None:
    """Run runner ``name`` on logits x (M, K) and labels (M,), writing ``outs`` (each with M
    rows). ``compile`` routes through torch.compile, falling back to eager if that fails."""
    if compile and x.shape[0] >= 2 and not _compile_failed.get(name, False):
        fn = _compiled.get(name)
        if fn is None:
            # dynamic=None plus mark_dynamic below: one kernel for every anchor count (images of
            # different sizes) while K and the loss constants are baked in.
            fn = _compiled[name] = torch.compile(_RUNNERS[name])
        for tensor in (x, labels) + tuple(outs):
            torch._dynamo.mark_dynamic(tensor, 0)
        try:
            fn(terms, x, labels, *outs)
            return
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use eager"
            _compile_failed[name] = True
            logger.warning(
                "retinafocal.losses: torch.compile of the fused loss (%s) failed on %s; using the "
                "eager implementation from now on. Reason: %s: %s",
                name,
                x.device.type,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
    _run_eager(name, terms, x, labels, outs)


# ------------------------------------------------------------------------------------------------
# Buffers, validation, autograd.
# ------------------------------------------------------------------------------------------------


def _is_compiling() -> bool:
    """True while torch.compile traces us (an mmap there would break the graph)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def _empty_gradient(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for a large gradient, huge-page backed on Linux CPU.

    The buffer is released (unmapped) when the last tensor viewing it dies, like any tensor.
    """
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if (
        device.type != "cpu"
        or nbytes < _HUGE_PAGE_MIN_BYTES
        or not hasattr(mmap, "MADV_HUGEPAGE")
        or _is_compiling()
    ):
        return torch.empty(shape, dtype=dtype, device=device)
    size = -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP unsupported: ordinary pages, still correct
        pass
    return torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)


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
    if labels.numel() == 0:
        return
    if labels.device.type == "cpu":
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi > num_classes:
            raise ValueError(
                f"{where}: labels must lie in [-1, K={num_classes}] (-1 ignored, K background), "
                f"got values in [{lo}, {hi}]"
            )
    else:
        # No host sync on accelerators: a device-side assert instead of a readable message.
        torch._assert_async(((labels >= -1) & (labels <= num_classes)).all())


class _FusedLabelLoss(torch.autograd.Function):
    """Loss and gradient from one pass; backward only scales the saved gradient.

    The scaled gradient goes to a new buffer rather than in place, so that a graph kept with
    ``retain_graph=True`` (e.g. by gradcheck) can run backward again; on CPU that buffer is
    huge-page backed and costs about what an in-place scale would.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, terms, reduction: str, compile: bool):
        x = logits.reshape(-1, logits.shape[-1])
        lab = labels.reshape(-1)
        grad = _empty_gradient(tuple(x.shape), logits.dtype, logits.device)
        ctx.logits_shape = logits.shape
        ctx.reduction = reduction
        ctx.scale = None
        if reduction == "none":
            loss = torch.empty(x.shape, dtype=_compute_dtype(logits.dtype), device=x.device)
            _run("elementwise_and_grad", terms, x, lab, (loss, grad), compile)
            ctx.grad = grad
            return loss.view(logits.shape)
        rows = torch.empty(x.shape[0], dtype=_compute_dtype(logits.dtype), device=x.device)
        _run("rows_and_grad", terms, x, lab, (rows, grad), compile)
        total = rows.sum()
        ctx.grad = grad
        if reduction == "mean":
            ctx.scale = 1.0 / _num_valid_elements(lab, x.shape[1])
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
        out = _empty_gradient(tuple(grad.shape), grad.dtype, grad.device)
        torch.mul(grad, scale, out=out)
        return out.view(ctx.logits_shape), None, None, None, None


def _num_valid_elements(labels: Tensor, num_classes: int) -> Tensor:
    """Number of (valid anchor, class) elements as a tensor, at least 1 (no host sync)."""
    return ((labels >= 0).sum() * num_classes).clamp_min(1)


def fused_label_loss(
    logits: Tensor,
    labels: Tensor,
    terms,
    reduction: str = "sum",
    compile: bool = False,
    where: str = "fused_label_loss",
) -> Tensor:
    """Apply elementwise ``terms`` to logits (..., K) against integer labels (...).

    Labels: class index in [0, K) (positive for that class), K = background, -1 = ignored.
    Reductions: "sum" over valid anchors and classes; "mean" = sum / (valid anchors * K) (0 when
    nothing is valid); "none": elementwise (..., K) with 0 on ignored anchors. Results are fp32
    (float64 for float64 logits); the gradient has the logits' dtype.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_labels(logits, labels, where)
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    if needs_grad:
        return _FusedLabelLoss.apply(logits, labels, terms, reduction, compile)
    x = logits.detach().reshape(-1, logits.shape[-1])
    lab = labels.reshape(-1)
    if reduction == "none":
        loss = torch.empty(x.shape, dtype=_compute_dtype(x.dtype), device=x.device)
        _run("elementwise", terms, x, lab, (loss,), compile)
        return loss.view(logits.shape)
    rows = torch.empty(x.shape[0], dtype=_compute_dtype(x.dtype), device=x.device)
    _run("rows", terms, x, lab, (rows,), compile)
    total = rows.sum()
    if reduction == "mean":
        total = total / _num_valid_elements(lab, x.shape[1])
    return total


def anchor_losses(logits: Tensor, labels: Tensor, terms, compile: bool = False) -> Tensor:
    """Per-anchor loss (..., ) = sum over the K classes, 0 for ignored anchors; no gradient.

    Used to rank anchors (OHEM) without materialising the (anchors x K) elementwise loss.
    """
    check_labels(logits, labels, "anchor_losses")
    x = logits.detach().reshape(-1, logits.shape[-1])
    lab = labels.reshape(-1)
    rows = torch.empty(x.shape[0], dtype=_compute_dtype(x.dtype), device=x.device)
    _run("rows", terms, x, lab, (rows,), compile)
    return rows.view(labels.shape)
