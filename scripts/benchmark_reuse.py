"""Benchmark: the full forward pass against the reuse of frozen activations (helpers/reuse.py), in float32.

For the fact-lookup localization (MLPs 2-6) and a causal-tracing-like one that starts at layer 10,
both old and new path, in one process, from the same weights:

(a) ``--steps`` training steps on ``--facts`` facts (Sports-Athlete-Edit);
(b) one Sports-Athlete-Edit grid run's measurements at the cpu profile's settings (notebook 04:
    every format, the general loss, the quiz, the LoRA relearning attack, the soft prompt, the
    latent probes; ``--full-attack`` adds the gpu profile's ``full`` attack), timed per metric
    (the profile of where a run's measurements go);
(c) causal tracing of ``--trace-prompts`` prompts.

Prints the seconds, the ratios old / new, and the largest difference of any metric between the
two paths. ``MECHUNLEARN_PRECISION`` is set to float32 here.

    MECHUNLEARN_RESULTS=/tmp/r .venv/bin/python scripts/benchmark_reuse.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from unittest import mock

import numpy as np
import torch

os.environ["MECHUNLEARN_PRECISION"] = "float32"

from helpers import (
    evaluation,
    reuse,
    robustness,
)
from helpers.contrast import contrast_batches
from helpers.counterfact import known_facts
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized
from helpers.general_text import load_general_text
from helpers.localization import Component, Localization
from helpers.models import load_model
from helpers.precision import describe_hardware
from helpers.prompts import SPORTS, sports_fact_prompt
from helpers.relearning import RelearnConfig
from helpers.soft_prompt import SoftPromptConfig
from helpers.sports import known_athletes
from helpers.tasks import sports_athlete_edit
from helpers.tracing import causal_trace

LOCALIZATIONS = {
    "fact_lookup": [Component("mlp", layer) for layer in range(2, 7)],
    "from_layer_10": [Component("attn", 10), Component("mlp", 10), Component("mlp", 11), Component("attn", 12),
                      Component("mlp", 12), Component("mlp", 13)],
}
SETTINGS = robustness.RobustnessSettings(  # profiles/cpu.yaml, notebook 04
    n_orders=2, max_general_tokens=512, quiz_size=32, seed=0, batch_size=32, eval_precision="float32",
    relearn=RelearnConfig(steps=10, eval_every=5, learning_rate=2e-4, lora_rank=64, batch_size=8, retain_batch_size=1,
                          precision="float32"),
    relearn_attacks=("lora",),
    soft_prompt=SoftPromptConfig(n_vectors=4, steps=6, batch_size=8, precision="float32"),
)


def timed(times: dict[str, float], name: Callable[..., str], function: Callable) -> Callable:
    """``function``, adding its wall time to ``times[name(*args, **kwargs)]``."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[name(*args, **kwargs)] += time.perf_counter() - start
    return wrapper


def profiled_measurements(model, task, loc, measure: robustness.Robustness) -> tuple[dict, dict[str, float]]:
    """One grid run's measurements after the edit (evaluate, then attack), and the seconds per metric."""
    times: dict[str, float] = defaultdict(float)
    patches = [
        mock.patch.object(evaluation, "format_metrics", timed(times, lambda m, t, fmt, **k: f"format {fmt}", evaluation.format_metrics)),
        mock.patch.object(evaluation, "general_loss", timed(times, lambda *a, **k: "general loss", evaluation.general_loss)),
        mock.patch.object(evaluation, "quiz_accuracy", timed(times, lambda *a, **k: "quiz", evaluation.quiz_accuracy)),
        mock.patch.object(robustness, "relearn", timed(times, lambda *a, attack, **k: f"relearn {attack}", robustness.relearn)),
        mock.patch.object(robustness, "soft_prompt_attack", timed(times, lambda *a, **k: "soft prompt", robustness.soft_prompt_attack)),
        mock.patch.object(robustness, "task_states", timed(times, lambda *a, **k: "latent states", robustness.task_states)),
        mock.patch.object(robustness, "latent_metrics", timed(times, lambda *a, **k: "latent probes", robustness.latent_metrics)),
    ]
    with ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        start = time.perf_counter()
        metrics = measure.evaluate(model, task)
        attacks = measure.attack(model, task, loc)
        times["total"] = time.perf_counter() - start
    return {**metrics, **flat_numbers(attacks)}, dict(times)


def flat_numbers(attacks: dict) -> dict[str, float]:
    """The attacks' numbers as one flat dict (curves by step)."""
    flat = {}
    for key, value in attacks.items():
        if isinstance(value, list):
            for row in value:
                flat |= {f"{key}.{row['step']}.{k}": v for k, v in row.items() if isinstance(v, float)}
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def progress(report: dict, key: str) -> None:
    """Print one finished part at once (the whole report follows at the end)."""
    print(json.dumps({key: report[key], "load_average": os.getloadavg()}, default=str), file=sys.stderr, flush=True)


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float:
    diffs = [abs(a[k] - b[k]) for k in a if not (np.isnan(a[k]) and np.isnan(b[k]))]
    return max(diffs, default=0.0)


def trace_both(model, n_prompts: int, paths: tuple[bool, ...]) -> dict:
    """Causal tracing of ``n_prompts`` known athletes (notebook 03's sports prompts), per path: seconds and effects."""
    athletes = known_athletes(model).sample(frac=1, random_state=0).head(n_prompts)
    foils = [[other for other in SPORTS if other != sport] for sport in athletes.sport]
    prompts = [sports_fact_prompt(a) for a in athletes.athlete]
    batches = contrast_batches(model, prompts, athletes.athlete.tolist(), athletes.sport.tolist(), foils, seed=0, batch_size=32)
    seconds, traces = {}, {}
    for enabled in paths:
        start = time.perf_counter()
        traces[enabled] = causal_trace(model, batches, seed=0, precision="float32", progress=False, reuse_noised=enabled)
        seconds["new" if enabled else "old"] = time.perf_counter() - start
    entry: dict = {"seconds": seconds}
    if len(paths) == 2:
        entry["ratio"] = seconds["old"] / seconds["new"]
        entry["largest effect difference"] = float(max(
            np.nanmax(np.abs(traces[True].mlp - traces[False].mlp)), np.nanmax(np.abs(traces[True].attn - traces[False].attn))))
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--edit-steps", type=int, default=12, help="steps of the edit measured in (b)")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    parser.add_argument("--trace-prompts", type=int, default=8)
    parser.add_argument("--old-only", action="store_true", help="only the full forward pass (the profile)")
    parser.add_argument("--full-attack", action="store_true", help="(b) also runs the `full` relearning attack")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model()
    task = sports_athlete_edit(known_athletes(model), args.facts, seed=0, n_maintain=16)
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    paths = (False,) if args.old_only else (False, True)
    report: dict = {"hardware": describe_hardware(model.device), "load_average": os.getloadavg()}
    for name, components in LOCALIZATIONS.items():
        loc = Localization.build(name, model, components, "benchmark")
        if "a" in args.parts:
            config = TrainingConfig(learning_rate=3e-5, steps=args.steps, batch_size=8, retain_batch_size=1, precision="float32",
                                    check_every=0)
            logs = {}
            for enabled in paths:
                reuse.clear()
                with restored(model, loc):
                    logs[enabled] = train_localized(model, loc, task, chunks, config, seed=0, progress=False, reuse_frozen=enabled)
            report[f"training {name}"] = {
                "seconds": {("new" if e else "old"): log.seconds for e, log in logs.items()},
                **({"ratio": logs[False].seconds / logs[True].seconds,
                    "largest loss difference": max(abs(x - y) for x, y in zip(logs[False].total, logs[True].total))}
                   if not args.old_only else {}),
            }
            progress(report, f"training {name}")
        if "b" in args.parts:
            results = {}
            for enabled in paths:
                reuse.clear()
                settings = replace(SETTINGS, relearn_attacks=("lora", "full")) if args.full_attack else SETTINGS
                measure = robustness.Robustness(model, known_athletes(model), known_facts(model), chunks, settings,
                                                reuse_frozen=enabled)
                measure.prepare(model, task)
                config = TrainingConfig(learning_rate=1e-4, steps=args.edit_steps, batch_size=8, retain_batch_size=1,
                                        precision="float32")
                torch.manual_seed(0)
                with restored(model, loc):
                    train_localized(model, loc, task, chunks, config, seed=0, progress=False)
                    results[enabled] = profiled_measurements(model, task, loc, measure)
            entry = {"seconds per metric": {("new" if e else "old"): t for e, (_, t) in results.items()}}
            if not args.old_only:
                entry["ratio"] = results[False][1]["total"] / results[True][1]["total"]
                entry["largest metric difference"] = largest_difference(results[False][0], results[True][0])
                entry["cache MiB"] = reuse.cache_bytes() / 2**20
            report[f"measurements {name}"] = entry
            progress(report, f"measurements {name}")
    if "c" in args.parts:  # last: building the TransformerLens bridge rewraps the model for good
        report["causal tracing"] = trace_both(model, args.trace_prompts, paths)
        progress(report, "causal tracing")
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
