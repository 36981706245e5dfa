"""The experiment grid: every (task, localization, seed) run, recorded, with a progress bar.

The runs execute in this process or as submitit jobs (:mod:`helpers.executors`).

:func:`run_grid` also writes a manifest (``results/grids/<model>.json``) naming the records of
the grid it ran, so that the chapters that only read results (05-08) show exactly that grid,
even when the results folder holds runs of other profiles too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import json

import pandas as pd
import torch

from helpers.cache import results_dir, slug, write_json
from helpers.executors import Executor, LocalExecutor, PlannedRun
from helpers.finetune import TrainingConfig
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.records import Measurements
from helpers.tasks import EditTask


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
    *, executor: Executor | None = None, progress: bool = True,
) -> pd.DataFrame:
    """Run (or find the records of) every planned run, in this process by default; one flattened row per run."""
    records = (executor or LocalExecutor()).run(model, runs, general_chunks, measurements, desc="grid", progress=progress)
    write_json(manifest_path(model.name), [r["key"] for r in records])
    return pd.json_normalize(records, sep=".")


def manifest_path(model_name: str) -> Path:
    return results_dir("grids") / f"{slug(model_name)}.json"


def load_grid(model_name: str) -> pd.DataFrame:
    """The records of the last grid :func:`run_grid` ran for ``model_name``, one flattened row each."""
    path = manifest_path(model_name)
    if not path.exists():
        raise FileNotFoundError(f"No grid has been run for {model_name!r} (no {path}); run notebook 04 first")
    keys = json.loads(path.read_text())
    missing = [k for k in keys if not (results_dir("runs") / f"{k}.json").exists()]
    if missing:
        raise FileNotFoundError(f"The grid's manifest names {len(missing)} records that are gone, e.g. {missing[0]}")
    return pd.json_normalize([json.loads((results_dir("runs") / f"{k}.json").read_text()) for k in keys], sep=".")
