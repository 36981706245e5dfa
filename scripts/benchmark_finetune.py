"""Benchmark: the naive fine-tuning loop against ours, same task, seed and model, one process.

The naive loop computes the logits of every position (for the fact losses and for the retain
loss) in float32, as a first implementation would; ours computes only the last position's
logits for the facts and a random subset of positions for the retain loss (see
``helpers/finetune.py``), once in float32 and once in bf16 (``helpers.precision.Precision``). All
train the same localization with the same hyper-parameters from the same weights. The
bf16 loop runs twice, with eager attention (the book's default, see ``helpers/models.py``) and
with PyTorch's SDPA kernel (Hugging Face's default, which the naive loop uses).

bf16 is measured only where the CPU computes it natively (AVX512-BF16, AMX; or on CUDA): on
other CPUs it is emulated and many times slower, so the bf16 rows say "not measured here"
rather than estimate a gain this machine cannot show. The output names the flags that decided
what ``precision="auto"`` chooses here; ``MECHUNLEARN_PRECISION`` is ignored (this script
compares the precisions on purpose).

    .venv/bin/python scripts/benchmark_finetune.py --facts 16 --batch 8 --steps 10 --timed-run 50

Prints the seconds per step of each loop, the ratio to the naive loop, the time a 50-step run
would take at that rate, and the final losses (the bf16 loop's differ from float32 by rounding).
``--timed-run N`` then times a whole N-step edit of the ``--facts`` facts with the book's loop
(``precision="auto"``, eager attention), end to end. ``--batch`` is the facts per step for the forget and for
the maintain loss (default: all of them).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from unittest import mock

import torch

import helpers.finetune as finetune
from helpers.general_text import load_general_text
from helpers.localization import Component, Localization
from helpers.models import load_model
from helpers.precision import FORCE_ENV, describe_hardware, native_bf16, resolve_precision
from helpers.scoring import unembed
from helpers.sports import known_athletes
from helpers.tasks import sports_athlete_edit


def naive_answer_logits(model, prompts):
    """Every position's logits, then the last one (what ``logits_to_keep=1`` avoids)."""
    batch = model.tokenizer(list(prompts), return_tensors="pt", padding=True).to(model.device)
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return model.hf_model(**batch, position_ids=position_ids).logits[:, -1].float()


def naive_joint_logits(model, *prompt_lists, extra=None, **_):
    """Each prompt list's :func:`naive_answer_logits`, then the extra rows' logits from a product of their own."""
    logits = [naive_answer_logits(model, prompts) for prompts in prompt_lists]
    if extra is not None:
        logits.append(unembed(model, extra, blocked=False).float())
    return tuple(logits)


def naive_retain_rows(model, chunks, n_positions, generator):
    """Every position's final hidden state and next token (what sampling positions avoids)."""
    hidden = model.hf_model.base_model(chunks.to(model.device)).last_hidden_state[:, :-1]
    return hidden.flatten(0, 1), chunks[:, 1:].flatten().to(model.device)


def run(model, localization, task, chunks, config, seed, naive: bool = False, attention: str = "eager") -> finetune.TrainingLog:
    model.hf_model.set_attn_implementation(attention)
    patches = (
        [mock.patch.object(finetune, "joint_answer_logits", naive_joint_logits),
         mock.patch.object(finetune, "retain_rows", naive_retain_rows)] if naive else []
    )
    for patch in patches:
        patch.start()
    try:
        with finetune.restored(model, localization):
            return finetune.train_localized(model, localization, task, chunks, config, seed=seed)
    finally:
        for patch in patches:
            patch.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--facts", type=int, default=16, help="facts edited")
    parser.add_argument("--batch", type=int, default=None, help="forget (and maintain) facts per step; default --facts")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mlps", default="2,3,4,5,6", help="MLP layers trained (comma-separated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--retain", type=int, default=2, help="general-text sequences per step")
    parser.add_argument("--timed-run", type=int, default=0, help="then time one whole run of this many steps")
    args = parser.parse_args()
    batch = args.batch or args.facts
    os.environ.pop(FORCE_ENV, None)  # both precisions are measured on purpose

    torch.manual_seed(args.seed)
    model = load_model(args.model)
    task = sports_athlete_edit(known_athletes(model), args.facts, seed=args.seed)
    localization = Localization.build(
        "benchmark", model, [Component("mlp", int(l)) for l in args.mlps.split(",")], "benchmark"
    )
    config = finetune.TrainingConfig(
        learning_rate=args.learning_rate, steps=args.steps, batch_size=batch, retain_batch_size=args.retain,
        check_every=0)  # the steps alone, as in the naive loop: no completeness checks, no early stop
    chunks = finetune.retain_chunks(model, load_general_text("train"), config.retain_length)
    float32, bf16 = replace(config, precision="float32"), replace(config, precision="bfloat16")
    logs = {
        "naive": run(model, localization, task, chunks, float32, args.seed, naive=True, attention="sdpa"),
        "ours_float32": run(model, localization, task, chunks, float32, args.seed),
    }
    if native_bf16(model.device):
        logs["ours_bfloat16"] = run(model, localization, task, chunks, bf16, args.seed)
        logs["ours_bfloat16_sdpa"] = run(model, localization, task, chunks, bf16, args.seed, attention="sdpa")
    bf16_note = "measured" if native_bf16(model.device) else "not measured here: this CPU has no native bf16"
    per_step = {name: log.seconds / args.steps for name, log in logs.items()}
    timed = {}
    if args.timed_run:
        book_loop = replace(config, precision="auto", steps=args.timed_run)
        log = run(model, localization, task, chunks, book_loop, args.seed)
        timed = {"timed_run": {"steps": args.timed_run, "precision": resolve_precision("auto", model.device),
                               "seconds": log.seconds, "final_forget_loss": log.forget[-1]}}
    print(json.dumps({
        "precision_auto": describe_hardware(model.device), "bf16": bf16_note,
        "facts": args.facts, "facts_per_step": batch, "steps": args.steps, "retain_sequences": args.retain,
        "trainable_parameters": localization.n_parameters, "seconds_per_step": per_step,
        "speedup_vs_naive": {name: per_step["naive"] / t for name, t in per_step.items()},
        "seconds_per_50_step_run": {name: 50 * t for name, t in per_step.items()},
        "final_forget_loss": {name: log.forget[-1] for name, log in logs.items()},
        "final_maintain_loss": {name: log.maintain[-1] for name, log in logs.items()},
        "final_retain_loss": {name: log.retain[-1] for name, log in logs.items()},
        **timed,
    }, indent=1))


if __name__ == "__main__":
    main()
