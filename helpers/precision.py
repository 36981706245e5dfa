"""Mixed precision on the CPU: bf16 matrix products with float32 weights, without re-casting frozen weights.

Under ``torch.autocast`` every matrix product runs in bf16, and a weight is cast again at every
call: a quarter of a bf16 training step's time on a CPU, most of it the 262k-row unembedding.
:class:`Precision` casts the frozen linear weights once and swaps the copies in only while
:meth:`Precision.active` is entered. Fine-tuning (:mod:`helpers.finetune`), the attacks
(:mod:`helpers.relearning`, :mod:`helpers.soft_prompt`), causal tracing (:mod:`helpers.tracing`)
and, when asked, the grid's evaluations (:mod:`helpers.robustness`) run their forward passes inside it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from helpers.models import LoadedModel

PRECISIONS = ("float32", "bfloat16")


class Precision:
    """The numeric context of a forward pass: float32, or bf16 autocast with frozen weights cast once.

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
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
