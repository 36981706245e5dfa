"""Run records: one JSON file per (task, localization, model, seed, hyper-parameters) run.

:func:`run_experiment` edits one task with one localization end to end and writes a record
with everything needed to trust and redo the run: the configuration, package versions, wall
time, training curves and metrics. A record's file name is a hash of its configuration, so a
finished run is found and skipped instead of trained again. :func:`load_records` gathers the
records into one DataFrame. Records live in ``results/runs/`` (outside git).
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.cache import results_dir
from helpers.finetune import TrainingConfig, restored, train_localized
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.scoring import candidate_probs, renormalize
from helpers.seed import seed_everything
from helpers.tasks import EditTask

PACKAGES = ("torch", "transformers", "transformer-lens", "peft", "scikit-learn", "pandas")


def answer_probabilities(model: LoadedModel, frame: pd.DataFrame, answers: list[str], candidates: tuple[str, ...] | None) -> np.ndarray:
    """P(answer) per row: renormalized over ``candidates`` (sports), else over the full vocabulary."""
    if candidates is None:
        return candidate_probs(model, frame.prompt.tolist(), [[a] for a in answers], progress=False)[:, 0]
    probs = renormalize(candidate_probs(model, frame.prompt.tolist(), list(candidates), progress=False))
    return probs[np.arange(len(frame)), [candidates.index(a) for a in answers]]


def training_format_metrics(model: LoadedModel, task: EditTask) -> dict[str, float]:
    """Forget error (1 - P(true)), edit accuracy (P(new)) and maintain accuracy on the fact prompt."""
    forget = task.forget_eval
    metrics = {
        "forget_error": float(1 - answer_probabilities(model, forget, forget.true.tolist(), task.candidates).mean()),
        "maintain_accuracy": float(answer_probabilities(
            model, task.maintain_eval, task.maintain_eval.true.tolist(), task.candidates).mean()),
    }
    if task.mode == "edit":
        metrics["edit_accuracy"] = float(answer_probabilities(model, forget, forget.new.tolist(), task.candidates).mean())
    return metrics


def run_key(configuration: dict) -> str:
    """A short hash of a run's configuration (its record's file name)."""
    return hashlib.sha256(json.dumps(configuration, sort_keys=True).encode()).hexdigest()[:16]


def run_experiment(
    model: LoadedModel, task: EditTask, localization: Localization, general_chunks: torch.Tensor,
    config: TrainingConfig, *, seed: int, task_seed: int, progress: bool = False,
) -> dict:
    """Train, measure and record one run; return the existing record if this run was done."""
    configuration = {
        "task": task.name, "task_seed": task_seed, "n_forget": len(task.forget_train),
        "localization": localization.name, "components": localization.ids, "model": model.name,
        "seed": seed, "training": config.to_dict(),
    }
    path = results_dir("runs") / f"{run_key(configuration)}.json"
    if path.exists():
        return json.loads(path.read_text())
    seed_everything(seed)
    before = training_format_metrics(model, task)
    with restored(model, localization):
        log = train_localized(model, localization, task, general_chunks, config, seed=seed, progress=progress)
        after = training_format_metrics(model, task)
    record = {
        **configuration, "n_parameters": localization.n_parameters,
        "versions": {name: version(name) for name in PACKAGES},
        "seconds": log.seconds, "curves": log.to_dict(), "metrics_before": before, "metrics": after,
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_records(folder: Path | None = None) -> pd.DataFrame:
    """Every run record as one row; nested fields flattened (``metrics.forget_error``, ...)."""
    folder = folder or results_dir("runs")
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, sep=".")
