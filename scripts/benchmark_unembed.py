"""Benchmark: the unembedding as one ``F.linear`` call against :class:`helpers.scoring.VocabBlockedLinear`, in float32.

For a few row counts (the rows one training step or one scoring batch unembeds), the forward
and the backward pass (the gradient of the hidden states) of a (262144, 640) matrix, Gemma-3-270M's
shape, on the CPU: the median seconds of each path, the ratios plain / blocked and the largest
difference of the logits and of the gradients, all in one run.

    .venv/bin/python scripts/benchmark_unembed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from helpers.precision import describe_hardware
from helpers.scoring import VOCAB_BLOCK, VocabBlockedLinear


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``function`` over ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(weight: torch.Tensor, rows: int, repeats: int) -> dict:
    """Forward and backward times of both paths for ``rows`` hidden states, and their largest differences."""
    hidden = torch.randn(rows, weight.shape[1], requires_grad=True)
    grad = torch.randn(rows, weight.shape[0])

    def backward(function) -> Callable[[], torch.Tensor]:
        return lambda: torch.autograd.grad(function(hidden, weight), hidden, grad)[0]

    paths = {"plain": torch.nn.functional.linear, "blocked": VocabBlockedLinear.apply}
    seconds = {}
    for name, function in paths.items():
        with torch.no_grad():
            seconds[f"forward {name}"] = median_seconds(lambda: function(hidden, weight), repeats)
        seconds[f"backward {name}"] = median_seconds(backward(function), repeats)
    with torch.no_grad():
        logits = [function(hidden, weight) for function in paths.values()]
    grads = [backward(function)() for function in paths.values()]
    return {
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "forward ratio": seconds["forward plain"] / seconds["forward blocked"],
        "backward ratio": seconds["backward plain"] / seconds["backward blocked"],
        "largest logit difference": float((logits[0] - logits[1]).abs().max()),
        "largest gradient difference": float((grads[0] - grads[1]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8, 16, 32, 48, 128])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.d_model) * 0.03
    report = {"hardware": describe_hardware(torch.device("cpu")), "threads": torch.get_num_threads(),
              "vocab block": VOCAB_BLOCK}
    for rows in args.rows:
        report[f"{rows} rows"] = compare(weight, rows, args.repeats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
