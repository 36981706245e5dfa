"""Float32 matrix products on a CPU through oneDNN, whichever company made the CPU.

PyTorch's x86 wheels compute a float32 ``nn.Linear`` with Intel's MKL, which chooses its kernels
by the CPU's vendor as well as by its instruction set: on an AMD EPYC with AVX-512 it ran the
products of this model at 70-87 GFLOPS on one core, where oneDNN (also shipped inside PyTorch,
choosing its kernels by instruction set alone) ran the same products at 150-185
(``scripts/benchmark_kernels.py --parts linear`` measures both on any machine). Every matrix
product of a small model's forward and backward pass is such a product, so on a CPU the project
routes them through oneDNN: :func:`use_onednn` swaps the class of every ``nn.Linear`` of a model for
:class:`OneDNNLinear`, whose products (input, input gradient, weight gradient) are oneDNN's. It is
still float32 arithmetic: the results differ from MKL's by rounding only (the order of the sums).

``MECHUNLEARN_LINEAR=torch`` keeps PyTorch's own kernels (the comparison's other side); a model
on a GPU, a bf16 weight or an autocast region always uses them.

A custom autograd function cannot see which gradients a backward pass asks for, only which inputs
require one: a gradient with respect to activations alone (attribution patching) still computes the
gradient of every weight that requires one, seven times the work on this model. Such passes run
inside :func:`weights_frozen`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_ENV = "MECHUNLEARN_LINEAR"
LINEAR_CHOICES = ("onednn", "torch")


def linear_backend() -> str:
    """``"onednn"`` (the default, where PyTorch has it) or ``"torch"``, from ``$MECHUNLEARN_LINEAR``."""
    choice = os.environ.get(LINEAR_ENV, "").strip().lower() or "onednn"
    if choice not in LINEAR_CHOICES:
        raise ValueError(f"{LINEAR_ENV}={choice!r} is not one of {LINEAR_CHOICES}")
    if choice == "onednn" and not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return "torch"
    return choice


def _product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` by oneDNN (``weight`` may be a transposed view: no copy is made)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """``F.linear`` whose three products run in oneDNN; the input is kept for the backward pass only
    when the weight needs its gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        ctx.has_bias = bias is not None
        out = _product(x, weight)
        return out + bias if bias is not None else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _product(grad, weight.T) if ctx.needs_input_grad[0] else None
        grad_weight = _product(rows.T, x.reshape(-1, x.shape[-1]).T) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def runs_on_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes oneDNN's path: float32 on a CPU, outside autocast."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN where :func:`runs_on_onednn`, else by PyTorch."""
    if runs_on_onednn(x, weight):
        return _OneDNNLinearFunction.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same weights, same checks by ``isinstance``) whose forward is :func:`linear`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


def use_onednn(module: nn.Module) -> int:
    """Make every plain ``nn.Linear`` inside ``module`` an :class:`OneDNNLinear` (in place), if
    :func:`linear_backend` is ``"onednn"``; return how many were swapped."""
    if linear_backend() != "onednn":
        return 0
    swapped = 0
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = OneDNNLinear
            swapped += 1
    return swapped


@contextmanager
def weights_frozen(module: nn.Module) -> Iterator[None]:
    """Inside, no parameter of ``module`` requires a gradient (a backward pass computes none for them and
    leaves no ``.grad``); on exit every ``requires_grad`` flag is as it was."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
