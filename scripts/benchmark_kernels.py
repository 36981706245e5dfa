"""Benchmark, in float32: the plain unembedding and AdamW against the vocabulary-blocked unembedding and fused AdamW,
the loss terms' logits from one product with the unembedding against one per term, the soft prompt's whole padded
batch against its shared part run once, and PyTorch's own linear kernels (MKL on x86) against oneDNN's.

Four parts, each comparing both paths in one run:

``products``: for a few row counts (the rows one training step or one scoring batch unembeds),
the forward and the forward-and-backward pass (the gradient of the hidden states) of a
(262144, 640) matrix, Gemma-3-270M's unembedding, on the CPU: the median seconds of ``F.linear``
and of :class:`helpers.scoring.VocabBlockedLinear`, the ratios and the largest differences.

``runs`` (on PyTorch's own linear kernels, as these changes were measured): the embedded model, Sports-Athlete-Edit (16 facts): ``--steps`` training steps of the
fact-lookup and of the nonlocalized localization, one LoRA relearning attack and one soft-prompt
attack at the cpu profile's settings, and the scoring of 128 fact prompts, each ``--repeats`` times with the old path (``F.linear``,
PyTorch's default AdamW, one unembedding product per loss term, the soft prompt's whole padded batch) and the new one, alternating; the median seconds, the ratios old / new
and the largest difference of any loss or P(true).

``linear``: every weight shape of Gemma-3-270M (the attention and MLP projections, the
unembedding) for 32 and 512 rows, forward and forward-and-backward (input and weight gradients):
the median seconds of ``F.linear`` (PyTorch's kernel) and of :func:`helpers.kernels.linear` (oneDNN).

``backends``: the work of ``runs`` with every linear layer of the model on PyTorch's kernels
(old) and on oneDNN's (new, :func:`helpers.kernels.use_onednn`, what :func:`helpers.models.load_model` does on a CPU).

    .venv/bin/python scripts/benchmark_kernels.py --parts products runs linear backends
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from unittest import mock

import torch

os.environ["MECHUNLEARN_PRECISION"] = "float32"

from torch import nn

from helpers import finetune, relearning, scoring, soft_prompt
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized
from helpers.general_text import load_general_text
from helpers.kernels import OneDNNLinear, linear
from helpers.localization import Component, Localization, nonlocalized
from helpers.models import LoadedModel, load_model
from helpers.precision import describe_hardware
from helpers.relearning import RelearnConfig, relearn
from helpers.prompts import SPORTS, sports_fact_prompt
from helpers.scoring import VOCAB_BLOCK, VocabBlockedLinear, candidate_probs
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack
from helpers.sports import known_athletes
from helpers.tasks import sports_athlete_edit


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
        seconds[f"forward and backward {name}"] = median_seconds(backward(function), repeats)
    with torch.no_grad():
        logits = [function(hidden, weight) for function in paths.values()]
    grads = [backward(function)() for function in paths.values()]
    return {
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "forward ratio": seconds["forward plain"] / seconds["forward blocked"],
        "forward and backward ratio": seconds["forward and backward plain"] / seconds["forward and backward blocked"],
        "largest logit difference": float((logits[0] - logits[1]).abs().max()),
        "largest gradient difference": float((grads[0] - grads[1]).abs().max()),
    }


def compare_linear(rows: int, n_in: int, n_out: int, repeats: int) -> dict:
    """One weight shape: forward and forward-and-backward seconds of PyTorch's kernel and oneDNN's, and their largest differences."""
    x = torch.randn(rows, n_in, requires_grad=True)
    weight = (torch.randn(n_out, n_in) * 0.03).requires_grad_()
    grad = torch.randn(rows, n_out)
    paths = {"torch": torch.nn.functional.linear, "onednn": linear}
    seconds, outputs = {}, {}
    for name, function in paths.items():
        with torch.no_grad():
            seconds[f"forward {name}"] = median_seconds(lambda: function(x, weight), repeats)
        seconds[f"forward and backward {name}"] = median_seconds(
            lambda: torch.autograd.grad(function(x, weight), (x, weight), grad), repeats)
        outputs[name] = [function(x, weight).detach(), *torch.autograd.grad(function(x, weight), (x, weight), grad)]
    return {
        "forward ratio": round(seconds["forward torch"] / seconds["forward onednn"], 3),
        "forward and backward ratio": round(seconds["forward and backward torch"] / seconds["forward and backward onednn"], 3),
        "seconds": {k: round(v, 5) for k, v in seconds.items()},
        "largest relative difference": max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*outputs.values())),
    }


@contextmanager
def torch_linears(model: LoadedModel) -> Iterator[None]:
    """Every :class:`~helpers.kernels.OneDNNLinear` of ``model`` a plain ``nn.Linear`` (PyTorch's kernels) while inside."""
    swapped = [module for module in model.hf_model.modules() if type(module) is OneDNNLinear]
    for module in swapped:
        module.__class__ = nn.Linear
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = OneDNNLinear


@contextmanager
def old_path(model: LoadedModel) -> Iterator[None]:
    """PyTorch's linear kernels with the unembedding as one ``F.linear`` call per loss term, PyTorch's default AdamW and
    the soft prompt's whole batch, while inside."""
    def default_adamw(parameters, learning_rate):
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)

    with ExitStack() as stack:
        stack.enter_context(torch_linears(model))
        stack.enter_context(mock.patch.object(scoring, "_blocked_unembedding", lambda head, hidden: False))
        apart = functools.partial(finetune.joint_answer_logits, one_unembedding=False)
        for module in (finetune, relearning):
            stack.enter_context(mock.patch.object(module, "adamw", default_adamw))
            stack.enter_context(mock.patch.object(module, "joint_answer_logits", apart))
        whole_batch = functools.partial(soft_prompt.prefixed_logits, share_prefix=False)
        stack.enter_context(mock.patch.object(soft_prompt, "prefixed_logits", whole_batch))
        yield


Path = Callable[[LoadedModel], AbstractContextManager]


def compare_runs(steps: int, repeats: int, old: Path, new: Path) -> dict:
    """Training, the LoRA attack and the soft prompt on the embedded model, inside ``old(model)`` and ``new(model)`` alternating."""
    model = load_model()
    known = known_athletes(model)
    task = sports_athlete_edit(known, 16, seed=0, n_maintain=16)
    prompts = [sports_fact_prompt(athlete) for athlete in known.athlete[:128]]
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    training = TrainingConfig(learning_rate=1e-4, steps=steps, batch_size=16, retain_batch_size=1, precision="float32",
                              check_every=0)
    attack = RelearnConfig(steps=10, eval_every=5, learning_rate=2e-4, lora_rank=64, batch_size=8, retain_batch_size=1,
                           precision="float32")
    soft = SoftPromptConfig(n_vectors=4, steps=6, batch_size=8, learning_rate=1e-2, precision="float32")
    localizations = [Localization.build("fact_lookup", model, [Component("mlp", layer) for layer in range(2, 7)], "MLPs 2-6"),
                     nonlocalized("nonlocalized", model)]

    def one_of_each() -> tuple[dict[str, float], dict[str, float]]:
        seconds, values = {}, {}
        for localization in localizations:
            with restored(model, localization):
                log = train_localized(model, localization, task, chunks, training, seed=0, progress=False)
            seconds[f"{steps} training steps, {localization.name}"] = log.seconds
            values[f"loss {localization.name}"] = log.total[-1]
        start = time.perf_counter()
        curve = relearn(model, task, None, chunks, attack, attack="lora", seed=0, progress=False)
        seconds["LoRA attack"] = time.perf_counter() - start
        values["LoRA held-out P(true)"] = float(curve.p_true.iloc[-1])
        start = time.perf_counter()
        probs = candidate_probs(model, prompts, list(SPORTS), batch_size=32, progress=False)
        seconds[f"scoring {len(prompts)} prompts"] = time.perf_counter() - start
        values["scoring P"] = float(probs.max())
        start = time.perf_counter()
        values["soft-prompt P(true)"] = soft_prompt_attack(model, task, soft, seed=0, progress=False)["soft_prompt_p_true_after"]
        seconds["soft-prompt attack"] = time.perf_counter() - start
        return seconds, values

    times: dict[str, dict[str, list[float]]] = {"old": defaultdict(list), "new": defaultdict(list)}
    values: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for path in ("old", "new"):
            with (old if path == "old" else new)(model):
                seconds, values[path] = one_of_each()
            for name, value in seconds.items():
                times[path][name].append(value)
    report = {}
    for name in times["old"]:
        old, new = statistics.median(times["old"][name]), statistics.median(times["new"][name])
        report[name] = {"old s": round(old, 2), "new s": round(new, 2), "ratio": round(old / new, 3)}
    report["largest difference of a loss or probability"] = max(abs(values["old"][k] - values["new"][k]) for k in values["old"])
    return report


PARTS = ("products", "runs", "linear", "backends")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 8, 16, 32, 48, 128])
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7, help="timings per product; the runs take a third as many")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"hardware": describe_hardware(torch.device("cpu")), "threads": torch.get_num_threads(),
              "vocab block": VOCAB_BLOCK}
    if "products" in args.parts:
        weight = torch.randn(args.vocab, args.d_model) * 0.03
        for rows in args.rows:
            report[f"{rows} rows"] = compare(weight, rows, args.repeats)
    if "runs" in args.parts:
        report["runs"] = compare_runs(args.steps, max(1, args.repeats // 3), old=old_path, new=torch_linears)
    if "linear" in args.parts:
        shapes = {"q": (640, 1024), "k, v": (640, 256), "o": (1024, 640), "gate, up": (640, 2048), "down": (2048, 640),
                  "unembedding": (640, args.vocab)}
        for name, (n_in, n_out) in shapes.items():
            for rows in (32, 512):
                report[f"linear {name}, {rows} rows"] = compare_linear(rows, n_in, n_out, args.repeats)
    if "backends" in args.parts:
        report["backends"] = compare_runs(args.steps, max(1, args.repeats // 3), old=torch_linears, new=lambda model: nullcontext())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
