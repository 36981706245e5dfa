"""Benchmark: a batch's prompts packed into one sequence (helpers/packing.py) against the batch the book ran
before, in float32, in one process, on the batches the book runs.

The baseline is the prefix's broadcast key/value cache for prompts with a shared prefix, and the plain
padded batch for prompts without one (paraphrases, multiple choice, CounterFact): the book packs the
first kind only, and the second is here to show why. For each batch: seconds of the forward pass (and
of the backward pass, where a training step takes one), median of ``--repeats``, for the baseline and
for packs of each ``--pack-tokens`` limit; the ratio baseline / packed; and the largest difference of
the last hidden states from the baseline's.

    .venv/bin/python scripts/benchmark_packing.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch

os.environ["MECHUNLEARN_PRECISION"] = "float32"

from helpers import evaluation, packing
from helpers.counterfact import known_facts
from helpers.finetune import restored
from helpers.localization import Component, Localization
from helpers.models import load_model
from helpers.precision import describe_hardware
from helpers.scoring import last_token_hidden, packed_last_hidden, shared_prefix_length, unembed
from helpers.sports import known_athletes
from helpers.tasks import counterfact_edit, sports_athlete_edit

FACT_LOOKUP = [Component("mlp", layer) for layer in range(2, 7)]


def batches(model) -> dict[str, tuple[list[str], bool]]:
    """The batches to time: (prompts, with a backward pass)."""
    task = sports_athlete_edit(known_athletes(model), 16, seed=0, n_maintain=16)
    facts = task.forget_train.prompt.tolist() + task.maintain_train.prompt.tolist()
    system_qa = [q.prompt for q in evaluation.completion_questions(task.forget_eval, "forget", "system_qa", task.candidates,
                                                                    with_new=True)]
    paraphrases = sorted(  # scored sorted by length, as helpers.scoring.candidate_probs sorts them
        (q.prompt for q in evaluation.completion_questions(task.forget_eval, "forget", "paraphrase", task.candidates,
                                                           with_new=True)), key=lambda p: len(model.tokenizer(p)["input_ids"]))
    counterfact = counterfact_edit(known_facts(model), 16, seed=0, n_maintain=16)
    return {
        "training step, 16 + 16 fact prompts": (facts, True),
        "relearning step, 8 + 8 fact prompts": (facts[:8] + facts[16:24], True),
        "scoring, 32 fact prompts": (facts, False),
        "scoring, 16 system-prompt questions": (system_qa, False),
        "no shared prefix: CounterFact training step, 16 + 16": (
            counterfact.forget_train.prompt.tolist() + counterfact.maintain_train.prompt.tolist(), True),
        "no shared prefix: scoring, 32 paraphrases": (paraphrases[:32], False),
    }


def seconds(step: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of ``step`` over ``repeats`` calls after one warm-up, and its last result."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pack-tokens", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the grid's workers use one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    loc = Localization.build("fact_lookup", model, FACT_LOOKUP, "benchmark")
    report: dict = {"hardware": describe_hardware(model.device), "threads": args.threads}
    for name, (prompts, backward) in batches(model).items():
        ids = [model.tokenizer(p)["input_ids"] for p in prompts]
        shared = shared_prefix_length(model, ids)

        def hidden_states(packed: bool) -> torch.Tensor:
            return packed_last_hidden(model, ids, shared) if packed else last_token_hidden(model, prompts, packed=False)

        def step(packed: bool) -> torch.Tensor:
            if not backward:
                with torch.inference_mode():
                    return hidden_states(packed)
            with restored(model, loc) as trained:
                hidden = hidden_states(packed)
                unembed(model, hidden).logsumexp(-1).sum().backward()
                for parameter in trained:
                    parameter.grad = None
                return hidden.detach()

        baseline, reference = seconds(lambda: step(False), args.repeats)
        entry = {"prompts": len(prompts), "shared prefix": shared, "tokens": sum(map(len, ids)),
                 "baseline": "prefix cache" if shared else "padded batch", "baseline seconds": baseline, "packed": {}}
        default = packing.PACK_TOKENS
        for limit in args.pack_tokens:
            packing.PACK_TOKENS = limit
            packed, hidden = seconds(lambda: step(True), args.repeats)
            entry["packed"][limit] = {"packs": len(packing.pack_groups(ids, shared)), "seconds": packed,
                                      "ratio": baseline / packed, "largest difference": float((hidden - reference).abs().max())}
        packing.PACK_TOKENS = default
        report[name] = entry
        print(json.dumps({name: entry}), flush=True)
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
