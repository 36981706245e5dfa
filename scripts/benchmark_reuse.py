"""Benchmark: the full forward pass against the reuse of frozen activations (helpers/reuse.py), in float32.

For the fact-lookup localization (MLPs 2-6) and a causal-tracing-like one that starts at layer 10,
both old and new path, in one process, from the same weights:

(a) ``--steps`` training steps on ``--facts`` facts (Sports-Athlete-Edit);
(b) one Sports-Athlete-Edit grid run's measurements at the cpu profile's settings (notebook 04:
    every format, the general loss, the quiz, the LoRA relearning attack, the soft prompt, the
    latent probes; ``--full-attack`` adds the gpu profile's ``full`` attack), timed per metric
    (the profile of where a run's measurements go);
(c) causal tracing of ``--trace-prompts`` prompts.

Each part runs ``--repeats`` times per path, alternating (old, new, then new, old, ...) so that a
drift of the machine's speed hits both paths alike. Prints the seconds, the ratio old / new of each
repeat with their mean and 95% Student-t interval, and the largest difference of any metric
between the two paths. ``MECHUNLEARN_PRECISION`` is set to float32 here. As in the grid's worker
processes, torch runs one thread (``--threads``), and part (a) trains with the cpu profile's step
(``--facts-per-step`` 16: every fact each step).

    MECHUNLEARN_RESULTS=/tmp/r .venv/bin/python scripts/benchmark_reuse.py --repeats 3
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
from helpers.stats import mean_ci
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


def profiled_measurements(model, task, loc, measure: robustness.Robustness, before: dict) -> tuple[dict, dict[str, float]]:
    """One grid run's measurements after the edit (evaluate, then attack), and the seconds per metric.

    ``before``: the unedited model's metrics, as the grid hands them to the evaluation after the edit."""
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
        metrics = measure.evaluate(model, task, before)
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


def alternating(run: Callable[[bool], tuple[float, object]], repeats: int) -> tuple[dict, dict[bool, object]]:
    """``run(enabled)`` ``repeats`` times per path, in the order old, new, then new, old, and so on; returns the
    seconds and ratios (old / new per repeat, their mean and 95% interval) and each path's first result."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, object] = {}
    for repeat in range(repeats):
        for enabled in (False, True) if repeat % 2 == 0 else (True, False):
            elapsed, result = run(enabled)
            seconds[enabled].append(elapsed)
            results.setdefault(enabled, result)
    ratios = [old / new for old, new in zip(seconds[False], seconds[True])]
    mean, low, high = mean_ci(ratios)
    return {"seconds": {"old": seconds[False], "new": seconds[True]}, "ratios": ratios,
            "ratio": mean, "ratio 95% CI": [low, high]}, results


def largest_difference(a: dict[str, float], b: dict[str, float]) -> float:
    diffs = [abs(a[k] - b[k]) for k in a if not (np.isnan(a[k]) and np.isnan(b[k]))]
    return max(diffs, default=0.0)


def compared(run: Callable[[bool], tuple[float, object]], repeats: int, old_only: bool) -> tuple[dict, dict[bool, object]]:
    """:func:`alternating` of both paths, or only the old path's seconds with ``old_only`` (the profile)."""
    if not old_only:
        return alternating(run, repeats)
    timed_runs = [run(False) for _ in range(repeats)]
    return {"seconds": {"old": [elapsed for elapsed, _ in timed_runs]}}, {False: timed_runs[0][1]}


def trace_batches(model, n_prompts: int) -> list:
    """Notebook 03's sports contrast batches for ``n_prompts`` known athletes."""
    athletes = known_athletes(model).sample(frac=1, random_state=0).head(n_prompts)
    foils = [[other for other in SPORTS if other != sport] for sport in athletes.sport]
    prompts = [sports_fact_prompt(a) for a in athletes.athlete]
    return contrast_batches(model, prompts, athletes.athlete.tolist(), athletes.sport.tolist(), foils, seed=0, batch_size=32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=16)
    parser.add_argument("--facts-per-step", type=int, default=16, help="(a): forget and maintain facts per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--edit-steps", type=int, default=12, help="steps of the edit measured in (b)")
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each path per part, alternating")
    parser.add_argument("--trace-prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the grid's workers use one)")
    parser.add_argument("--localizations", nargs="+", choices=list(LOCALIZATIONS), default=list(LOCALIZATIONS))
    parser.add_argument("--old-only", action="store_true", help="only the full forward pass (the profile)")
    parser.add_argument("--full-attack", action="store_true", help="(b) also runs the `full` relearning attack")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model()
    task = sports_athlete_edit(known_athletes(model), args.facts, seed=0, n_maintain=16)
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    report: dict = {"hardware": describe_hardware(model.device), "threads": torch.get_num_threads(),
                    "repeats": args.repeats, "load_average": os.getloadavg()}
    for name in args.localizations:
        loc = Localization.build(name, model, LOCALIZATIONS[name], "benchmark")
        if "a" in args.parts:
            config = TrainingConfig(learning_rate=3e-5, steps=args.steps, batch_size=args.facts_per_step, retain_batch_size=1,
                                    precision="float32", check_every=0)

            def train(enabled: bool) -> tuple[float, list[float]]:
                reuse.clear()
                with restored(model, loc):
                    log = train_localized(model, loc, task, chunks, config, seed=0, progress=False, reuse_frozen=enabled)
                return log.seconds, log.total

            entry, losses = compared(train, args.repeats, args.old_only)
            if not args.old_only:
                entry["largest loss difference"] = max(abs(x - y) for x, y in zip(losses[False], losses[True]))
            report[f"training {name}"] = entry
            progress(report, f"training {name}")
        if "b" in args.parts:
            settings = replace(SETTINGS, relearn_attacks=("lora", "full")) if args.full_attack else SETTINGS
            times: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            athletes, facts = known_athletes(model), known_facts(model)
            before = robustness.Robustness(model, athletes, facts, chunks, settings).evaluate(model, task)

            def measure(enabled: bool) -> tuple[float, dict]:
                reuse.clear()
                robust = robustness.Robustness(model, athletes, facts, chunks, settings, reuse_frozen=enabled)
                robust.prepare(model, task)
                config = TrainingConfig(learning_rate=1e-4, steps=args.edit_steps, batch_size=8, retain_batch_size=1,
                                        precision="float32")
                torch.manual_seed(0)
                with restored(model, loc):
                    train_localized(model, loc, task, chunks, config, seed=0, progress=False)
                    metrics, seconds = profiled_measurements(model, task, loc, robust, before)
                times[enabled].append(seconds)
                return seconds["total"], metrics

            entry, metrics = compared(measure, args.repeats, args.old_only)
            entry["seconds per metric (median)"] = {
                "new" if enabled else "old": {key: float(np.median([t[key] for t in runs])) for key in runs[0]}
                for enabled, runs in times.items() if runs
            }
            if not args.old_only:
                entry["largest metric difference"] = largest_difference(metrics[False], metrics[True])
                entry["cache MiB"] = reuse.cache_bytes() / 2**20
            report[f"measurements {name}"] = entry
            progress(report, f"measurements {name}")
    if "c" in args.parts:  # last: building the TransformerLens bridge rewraps the model for good
        batches = trace_batches(model, args.trace_prompts)

        def trace(enabled: bool) -> tuple[float, object]:
            start = time.perf_counter()
            traced = causal_trace(model, batches, seed=0, precision="float32", progress=False, reuse_noised=enabled)
            return time.perf_counter() - start, traced

        entry, traces = compared(trace, args.repeats, args.old_only)
        if not args.old_only:
            entry["largest effect difference"] = float(max(np.nanmax(np.abs(traces[True].mlp - traces[False].mlp)),
                                                           np.nanmax(np.abs(traces[True].attn - traces[False].attn))))
        report["causal tracing"] = entry
        progress(report, "causal tracing")
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
