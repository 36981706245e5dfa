"""Benchmark, in float32: the grid's runs in this process (every core's threads) against worker processes.

A few runs of the grid at the cpu profile's settings (Sports-Athlete-Edit, 16 facts; training
until the edit is complete or ``--steps``, then every measurement notebook 04 makes on that task,
the LoRA and soft-prompt attacks included), for the fact-lookup localization (MLPs 2-6) and one
that starts at layer 10, over ``--seeds`` seeds (each seed its own task, as in the grid). Both paths in one run, each from an empty
results folder of its own:

- ``local``: :class:`helpers.executors.LocalExecutor`, one run after another in this process,
  with torch's default number of threads;
- ``processes``: :class:`helpers.executors.ProcessExecutor` with ``--workers`` workers
  (default: one per core, within memory) of ``--threads`` threads; the time includes starting
  them and loading the model in each.

Prints the seconds, the ratio local / processes, runs per hour, and the measurements that differ most
between the two paths' records. ``MECHUNLEARN_PRECISION`` is set to float32 here.

    .venv/bin/python scripts/benchmark_executors.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ["MECHUNLEARN_PRECISION"] = "float32"

from helpers.counterfact import known_facts
from helpers.executors import LocalExecutor, ModelSpec, PlannedRun, ProcessExecutor, available_cores
from helpers.finetune import TrainingConfig, retain_chunks
from helpers.general_text import load_general_text
from helpers.grid import run_grid
from helpers.localization import Component, Localization
from helpers.models import load_model
from helpers.precision import describe_hardware
from helpers.relearning import RelearnConfig
from helpers.robustness import Robustness, RobustnessSettings
from helpers.soft_prompt import SoftPromptConfig
from helpers.sports import known_athletes
from helpers.tasks import sports_athlete_edit

LOCALIZATIONS = {
    "fact_lookup": [Component("mlp", layer) for layer in range(2, 7)],
    "from_layer_10": [Component("attn", 10), Component("mlp", 10), Component("mlp", 11), Component("mlp", 12)],
}
SETTINGS = RobustnessSettings(  # profiles/cpu.yaml, notebook 04, on Sports-Athlete-Edit
    n_orders=2, max_general_tokens=512, quiz_size=32, seed=0, batch_size=32, eval_precision="float32",
    relearn=RelearnConfig(steps=10, eval_every=5, learning_rate=2e-4, lora_rank=64, batch_size=8, retain_batch_size=1,
                          precision="float32"),
    relearn_attacks=("lora",),
    soft_prompt=SoftPromptConfig(n_vectors=4, steps=6, batch_size=8, learning_rate=1e-2, precision="float32"),
    strength_curve_tasks=("sports_athlete_edit",),
)


def measured_columns(records) -> list[str]:
    """The numeric columns of the records that hold measurements (not times, not settings)."""
    prefixes = ("metrics", "metrics_before", "attacks", "curves", "strength")
    return [c for c in records.columns if c.startswith(prefixes) and "second" not in c]


def largest_differences(a, b, n: int = 5) -> dict[str, float]:
    """The ``n`` numeric measurements that differ most between two paths' records, with their largest difference."""
    differences = {}
    for column in measured_columns(a):
        try:
            x, y = np.asarray(a[column].tolist(), dtype=float), np.asarray(b[column].tolist(), dtype=float)
        except (TypeError, ValueError):  # text, or lists of uneven length
            continue
        if x.shape == y.shape and x.size:
            differences[column] = float(np.nanmax(np.abs(x - y), initial=0.0))
    return dict(sorted(differences.items(), key=lambda item: -item[1])[:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per localization (runs: 2 x seeds)")
    parser.add_argument("--steps", type=int, default=8, help="step cap of each edit")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="threads per worker (default: the cores shared out)")
    args = parser.parse_args()
    model = load_model()
    chunks = retain_chunks(model, load_general_text("train"), TrainingConfig().retain_length)
    athletes = known_athletes(model)
    measurements = Robustness(model, athletes, known_facts(model), chunks, SETTINGS).measurements()
    config = TrainingConfig(learning_rate=2e-4, steps=args.steps, batch_size=16, retain_batch_size=1, precision="float32",
                            check_every=4)
    localizations = [Localization.build(name, model, components, "benchmark") for name, components in LOCALIZATIONS.items()]
    tasks = {seed: sports_athlete_edit(athletes, 16, seed=seed, n_maintain=16) for seed in range(args.seeds)}
    runs = [PlannedRun(task, seed, loc, config, seed)
            for seed, task in tasks.items() for loc in localizations]  # as helpers.grid.plan_runs orders them
    executors = {"local": LocalExecutor(), "processes": ProcessExecutor(ModelSpec(model.name), args.workers, args.threads)}
    report: dict = {"hardware": describe_hardware(model.device), "cores": available_cores(),
                    "threads (local)": torch.get_num_threads(), "runs": len(runs),
                    "workers": executors["processes"].workers, "threads per worker": executors["processes"].threads}
    seconds, records = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, executor in executors.items():
            os.environ["MECHUNLEARN_RESULTS"] = str(Path(folder) / name)  # an empty results folder per path
            start = time.perf_counter()
            records[name] = run_grid(model, runs, chunks, measurements, executor=executor)
            seconds[name] = time.perf_counter() - start
        executors["processes"].close()
    report["seconds"] = {name: round(value, 1) for name, value in seconds.items()}
    report["runs per hour"] = {name: round(3600 * len(runs) / value, 1) for name, value in seconds.items()}
    report["ratio local / processes"] = round(seconds["local"] / seconds["processes"], 3)
    report["largest differences of a measurement"] = largest_differences(records["local"], records["processes"])
    report["steps taken"] = records["local"].steps_taken.tolist()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
