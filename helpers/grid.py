"""The experiment grid: every (task, localization, seed) run, recorded, with a progress bar."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.finetune import TrainingConfig
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.records import Measurements, run_experiment
from helpers.tasks import EditTask


@dataclass(frozen=True)
class PlannedRun:
    """One cell of the grid: a task (built with ``task_seed``), a localization, its config, a training seed."""

    task: EditTask
    task_seed: int
    localization: Localization
    config: TrainingConfig
    seed: int


def plan_runs(
    tasks: Mapping[int, EditTask], localizations: Sequence[Localization], configs: Mapping[str, TrainingConfig],
) -> list[PlannedRun]:
    """Every localization on every seed's task; each run trains with its task's seed."""
    missing = [loc.name for loc in localizations if loc.name not in configs]
    if missing:
        raise ValueError(f"No training config for localizations {missing}; run the sweep first")
    return [
        PlannedRun(task, seed, loc, configs[loc.name], seed)
        for seed, task in tasks.items() for loc in localizations
    ]


def run_grid(
    model: LoadedModel, runs: Sequence[PlannedRun], general_chunks: torch.Tensor, measurements: Measurements,
    *, progress: bool = True,
) -> pd.DataFrame:
    """Run (or find the records of) every planned run; one flattened row per run."""
    records = []
    bar = tqdm(runs, desc="grid", disable=not progress, unit="run")
    for run in bar:
        bar.set_postfix_str(f"{run.task.name} / {run.localization.name} / seed {run.seed}")
        records.append(run_experiment(
            model, run.task, run.localization, general_chunks, run.config,
            seed=run.seed, task_seed=run.task_seed, measurements=measurements,
        ))
    return pd.json_normalize(records, sep=".")
