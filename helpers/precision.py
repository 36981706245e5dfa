"""Mixed precision: bf16 matrix products with float32 weights, where the hardware makes them faster.

bf16 is a speed-up only where the hardware computes it natively: CPUs with AVX512-BF16 or AMX
(``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``) and CUDA devices that support it. Elsewhere
(most laptops, AMD Zen 3 and older) the CPU emulates it, up to 80x slower than float32 per
matrix product. Every precision parameter of the project therefore defaults to ``"auto"``, which
:func:`resolve_precision` turns into ``"bfloat16"`` on such hardware and ``"float32"`` elsewhere,
from the hardware's flags (never from a timing, so that every process on one machine chooses the
same). ``MECHUNLEARN_PRECISION=float32`` (or ``bfloat16``) forces one precision everywhere, over
any explicit value: ``make book PRECISION=float32`` measures the float32 path without editing a
file. What is recorded is always the resolved precision, never ``"auto"``.

Under ``torch.autocast`` every matrix product runs in bf16, and a weight is cast again at every
call: a quarter of a bf16 training step's time on a CPU, most of it the 262k-row unembedding.
:class:`Precision` casts the frozen linear weights once and swaps the copies in only while
:meth:`Precision.active` is entered. Fine-tuning (:mod:`helpers.finetune`), the attacks
(:mod:`helpers.relearning`, :mod:`helpers.soft_prompt`), causal tracing (:mod:`helpers.tracing`)
and, when asked, the grid's evaluations (:mod:`helpers.robustness`) run their forward passes inside it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from helpers.choices import PRECISION_CHOICES, PRECISIONS
from helpers.models import LoadedModel, resolve_device

CHOICES = PRECISION_CHOICES  # what a precision parameter accepts
FORCE_ENV = "MECHUNLEARN_PRECISION"  # forces one precision over every parameter ("auto" or unset: no forcing)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of native bf16 arithmetic
NATIVE_BF16_FEATURES = frozenset({"bf16"})  # the ARM feature of native bf16 arithmetic (ARMv8.6)
Config = TypeVar("Config")  # a frozen dataclass with ``*precision`` fields


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where ``/proc/cpuinfo`` is missing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what :mod:`platform` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def as_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device; ``None`` is the CPU, ``"auto"`` what :func:`helpers.models.resolve_device` picks."""
    if isinstance(device, torch.device):
        return device
    return torch.device(resolve_device(device) if device == "auto" else device or "cpu")


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: the CPU) computes bf16 natively: the CPU's flags, or CUDA's own answer."""
    device = as_device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_flags() & (NATIVE_BF16_FLAGS | NATIVE_BF16_FEATURES))
    return False


def check_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`CHOICES`, else a clear error naming the parameter."""
    if precision not in CHOICES:
        raise ValueError(f"{name} must be one of {CHOICES}, got {precision!r}")
    return precision


def forced_precision() -> str | None:
    """The precision ``MECHUNLEARN_PRECISION`` forces, or None (unset, empty or ``auto``)."""
    value = os.environ.get(FORCE_ENV, "").strip()
    if value in ("", "auto"):
        return None
    if value not in PRECISIONS:
        raise ValueError(f"{FORCE_ENV} must be one of {CHOICES}, got {value!r}")
    return value


def resolve_precision(precision: str = "auto", device: str | torch.device | None = None) -> str:
    """``"float32"`` or ``"bfloat16"``: the forcing variable, else an explicit value, else what ``device`` computes natively."""
    check_precision(precision)
    forced = forced_precision()
    if forced:
        return forced
    if precision != "auto":
        return precision
    return "bfloat16" if native_bf16(device) else "float32"


def resolved(config: Config, device: str | torch.device | None = None) -> Config:
    """A copy of a frozen dataclass with every ``*precision`` field resolved, nested dataclasses included."""
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("precision"):
            changes[f.name] = resolve_precision(value, device)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = resolved(value, device)
    return dataclasses.replace(config, **changes)


def describe_hardware(device: str | torch.device | None = None) -> str:
    """One line saying what ``auto`` chooses on ``device`` and why, and whether a precision is forced."""
    summary = hardware_summary(device)
    if summary["device"].startswith("cuda"):
        reason = "the CUDA device " + ("supports" if summary["auto"] == "bfloat16" else "lacks") + " bf16"
    elif summary["native_bf16_flags"]:
        reason = f"the CPU has {', '.join(summary['native_bf16_flags'])}"
    else:
        reason = f"the CPU has none of {', '.join(sorted(NATIVE_BF16_FLAGS))}"
    line = f"auto chooses {summary['auto']} on {summary['device']}: {reason}"
    if summary["forced"]:
        line += f"; {FORCE_ENV}={summary['forced']} forces {summary['forced']} everywhere"
    return line


def hardware_summary(device: str | torch.device | None = None) -> dict:
    """What decided ``auto`` on this machine: the device, the native-bf16 flags present, the choice, the forcing."""
    device = as_device(device)
    flags = sorted(cpu_flags() & (NATIVE_BF16_FLAGS | NATIVE_BF16_FEATURES))
    return {
        "device": str(device), "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": flags, "auto": "bfloat16" if native_bf16(device) else "float32",
        "forced": forced_precision(),
    }


class Precision:
    """The numeric context of a forward pass: float32, or bf16 autocast with frozen weights cast once.

    ``precision`` is resolved for the model's device (:func:`resolve_precision`); ``self.precision``
    holds the result.

    The linear weights that are not ``trained`` (by default: those that do not require
    gradients when this object is built, so build it after choosing what trains; pass
    ``trained=()`` for inference) are cast to bf16 here and swapped in only inside
    :meth:`active`: the same products as plain autocast, without the casts. Outside, the
    model holds its float32 weights, so evaluations in between are unaffected.

    When training, enter ``active()`` once per optimizer step: autocast caches its bf16 copies
    of the trainable weights until it exits, so a context held across steps would keep using
    the old weights.
    """

    def __init__(self, model: LoadedModel, precision: str, *, trained: Collection[nn.Parameter] | None = None) -> None:
        precision = resolve_precision(precision, model.device)
        if trained is None:
            trained = [p for p in model.hf_model.parameters() if p.requires_grad]
        trained_ids = {id(p) for p in trained}
        self.model, self.precision = model, precision
        self.low_precision: dict[nn.Linear, tuple[nn.Parameter, nn.Parameter]] = {}
        if precision == "bfloat16":
            for module in model.hf_model.modules():
                weight = getattr(module, "weight", None)
                if isinstance(module, nn.Linear) and id(weight) not in trained_ids and weight.dtype == torch.float32:
                    copy = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
                    self.low_precision[module] = (weight, copy)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the forward passes inside in this precision (a backward pass may follow outside)."""
        enabled = self.precision == "bfloat16"
        with torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=enabled):
            for module, (_, copy) in self.low_precision.items():
                module._parameters["weight"] = copy  # not ``.weight =``: a tied lm_head keeps its embedding intact
            try:
                yield
            finally:
                for module, (original, _) in self.low_precision.items():
                    module._parameters["weight"] = original
