"""Frozen BatchNorm folded into the convolution before it (``MODEL.RETINAFOCAL.FOLD_FROZEN_BN``).

A frozen BatchNorm is ``y = x * s + t`` with ``s = weight / sqrt(running_var + eps)`` and
``t = bias - running_mean * s``, so ``conv(x, W, b) * s + t == conv(x, W * s, b * s + t)``: one
pass over the weights instead of over the activations (far more at detection resolutions).
Parameters, buffers and the norm submodule stay, so checkpoints load and save as before; autograd
differentiates through the fold (outputs equal up to float rounding)."""
from __future__ import annotations

from typing import Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FrozenBNFoldedConv2d", "fold_frozen_batchnorm"]


class FrozenBNFoldedConv2d(Conv2d):
    """detectron2's ``Conv2d`` with a ``FrozenBatchNorm2d`` norm, run as one folded convolution.
    Where no gradient is needed the folded tensors are kept until a weight or statistic changes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.norm, FrozenBatchNorm2d):
            raise TypeError(f"{type(self).__name__} needs a FrozenBatchNorm2d norm, got "
                            f"{type(self.norm).__name__}")
        # (key, weight, bias) in one attribute, so key and tensors are set and freed together.
        # Not annotated: TorchScript warns about an Optional annotated in __init__.
        self._folded = None

    @classmethod
    def from_conv(cls, conv: Conv2d) -> "FrozenBNFoldedConv2d":
        """The folded twin of ``conv``, sharing its parameters and norm (nothing is copied)."""
        folded = cls.__new__(cls)
        folded.__dict__.update(conv.__dict__)  # the same parameters, buffers, hooks, submodules
        # The update shares the module dicts with `conv`: give the twin its own.
        for name in ("_parameters", "_buffers", "_modules"):
            setattr(folded, name, dict(getattr(conv, name)))
        folded._folded = None
        return folded

    def folded_weight_and_bias(self) -> Tuple[Tensor, Tensor]:
        """``(W * s, b * s + t)``: weight (O, I, kh, kw) and bias (O,), differentiable."""
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = self.bias
        return weight, shift if bias is None else bias * scale + shift

    @torch.jit.unused
    def _kept_weight_and_bias(self) -> Tuple[Tensor, Tensor]:
        """:meth:`folded_weight_and_bias`, recomputed only when an input tensor's version (bumped
        by any in-place change or load) or storage (a move) changed."""
        tensors = [self.weight, self.norm.weight, self.norm.bias, self.norm.running_mean,
                   self.norm.running_var]
        if self.bias is not None:
            tensors.append(self.bias)
        key = tuple(v for t in tensors for v in (t._version, t.data_ptr()))
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                weight, bias = self.folded_weight_and_bias()
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias
        trains = self.weight.requires_grad or (bias is not None and bias.requires_grad)
        # Scripted and compiled code fold on the fly (torch.compile's freezing then makes the
        # folded weights constants): neither can follow tensor versions.
        if (trains and torch.is_grad_enabled()) or torch.jit.is_scripting() or (
            torch.compiler.is_compiling()
        ):
            weight, bias = self.folded_weight_and_bias()
        else:
            weight, bias = self._kept_weight_and_bias()
        x = self._conv_forward(x, weight, bias)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def train(self, mode: bool = True) -> "FrozenBNFoldedConv2d":
        # Folded tensors kept for an evaluation go stale once the weights train: free them.
        if mode:
            self._folded = None
        return super().train(mode)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Replace, in place, every detectron2 ``Conv2d`` inside ``module`` whose norm is a
    ``FrozenBatchNorm2d`` by its :class:`FrozenBNFoldedConv2d` twin. Returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Conv2d and isinstance(child.norm, FrozenBatchNorm2d):
                setattr(parent, name, FrozenBNFoldedConv2d.from_conv(child))
                count += 1
    return count
