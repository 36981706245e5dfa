"""Run records: one JSON file per (task, localization, model, seed, hyper-parameters) run.

:func:`run_experiment` edits one task with one localization end to end and writes a record
with everything needed to trust and redo the run: the configuration, package versions, wall
time, training curves with the completeness checks, the steps taken and whether the edit
reached the completeness criterion (``steps_taken``, ``criterion_reached``: see
:mod:`helpers.finetune`), the metrics before and after the edit, and the attacks on the edited
model; also the dtype the model holds its weights in (``weights_dtype``) and the one its
trained weights were stepped in (``trained_weights_dtype``: always float32, see
:class:`helpers.finetune.Float32Masters`). A record's file name is a hash of its configuration, so a finished run is found and
skipped instead of trained again. :func:`load_records` gathers the records into one
DataFrame. Records live in ``results/runs/`` (outside git).

What is measured is a :class:`Measurements`: ``evaluate`` runs on the model before and after
the edit (the before values are cached per task, since every localization starts from the
same model; the evaluation after the edit is handed them, so it can leave out what the
unedited model cannot answer), ``attack`` only on the edited model (relearning, probes:
anything that needs the edited weights), and ``prepare``, when given, on the unedited model
just before a run trains (to keep what an attack compares against, such as the original
hidden states), and ``checkpoint``, when given, at every completeness check during training
(handed the before values too; its values join the checks in ``curves.checks``: the strength
curve of :mod:`helpers.robustness`). Their ``settings`` are part of the run's key, so changing
what is measured re-runs the grid instead of mixing old and new metrics.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from helpers.cache import results_dir, write_json
from helpers.finetune import TrainingConfig, restored, train_localized, weights_dtype
from helpers.keys import model_key, prompts_digest
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.precision import resolved
from helpers.scoring import answer_probabilities
from helpers.seed import seed_everything
from helpers.tasks import EditTask

PACKAGES = ("torch", "transformers", "transformer-lens", "peft", "scikit-learn", "pandas")
PURPOSES = ("evaluation", "validation")


def training_format_metrics(model: LoadedModel, task: EditTask, before: Mapping[str, float] | None = None) -> dict[str, float]:
    """Forget error (1 - P(true)), edit accuracy (P(new)) and maintain accuracy on the fact prompt (all of them
    whatever ``before`` holds)."""
    forget = task.forget_eval
    metrics = {
        "forget_error": float(1 - answer_probabilities(model, forget, forget.true.tolist(), task.candidates).mean()),
        "maintain_accuracy": float(answer_probabilities(
            model, task.maintain_eval, task.maintain_eval.true.tolist(), task.candidates).mean()),
    }
    if task.mode == "edit":
        metrics["edit_accuracy"] = float(answer_probabilities(model, forget, forget.new.tolist(), task.candidates).mean())
    return metrics


class Evaluate(Protocol):
    """Metrics of ``model`` on ``task``. ``before``: the unedited model's metrics from the same function when
    ``model`` is an edit of it, None when it is the unedited model itself."""

    def __call__(self, model: LoadedModel, task: EditTask, before: Mapping[str, float] | None = None) -> dict[str, float]: ...


Attack = Callable[[LoadedModel, EditTask, Localization], dict]


@dataclass(frozen=True)
class Measurements:
    """What a run measures: ``evaluate`` before and after the edit, ``attack`` after it only, ``checkpoint`` during it."""

    evaluate: Evaluate = training_format_metrics
    attack: Attack | None = None
    prepare: Callable[[LoadedModel, EditTask], None] | None = None
    checkpoint: Evaluate | None = None
    settings: dict = field(default_factory=dict)  # everything that changes the numbers; part of the key

    def key(self) -> dict:
        """The part of a run's key that names what is measured (``checkpoint`` only when set)."""
        key = {
            "evaluate": self.evaluate.__qualname__,
            "attack": self.attack.__qualname__ if self.attack else None,
            "settings": self.settings,
        }
        return key | ({"checkpoint": self.checkpoint.__qualname__} if self.checkpoint else {})


def run_key(configuration: dict) -> str:
    """A short hash of a run's configuration (its record's file name)."""
    return hashlib.sha256(json.dumps(configuration, sort_keys=True, default=str).encode()).hexdigest()[:16]


def baseline_metrics(model: LoadedModel, task: EditTask, measurements: Measurements) -> dict[str, float]:
    """``measurements.evaluate`` on the unedited model, cached in ``results/baselines/``."""
    key = run_key({**model_key(model), "task": task.fingerprint(), "prompts": prompts_digest(task), "measure": measurements.key()})
    path = results_dir("baselines") / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    metrics = measurements.evaluate(model, task)
    write_json(path, metrics)
    return metrics


def run_configuration(
    model: LoadedModel, task: EditTask, localization: Localization, config: TrainingConfig, *, seed: int, task_seed: int,
    measurements: Measurements, purpose: str,
) -> dict:
    """Everything that identifies a run; its :func:`run_key` names the run's record.

    The training precision is resolved for the model's device: the key and the record hold the
    precision that runs, never ``"auto"``.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    return {
        "purpose": purpose, "task": task.name, "task_seed": task_seed, "task_fingerprint": task.fingerprint(),
        "n_forget": len(task.forget_train), "localization": localization.name, "components": localization.ids,
        "localization_settings": localization.settings,
        **model_key(model), "prompts": prompts_digest(task), "seed": seed,
        "training": resolved(config, model.device).to_dict(), "measurements": measurements.key(),
    }


def record_path(key: str) -> Path:
    """Where the record of the run with this key is (or will be) written."""
    return results_dir("runs") / f"{key}.json"


def run_experiment(
    model: LoadedModel, task: EditTask, localization: Localization, general_chunks: torch.Tensor,
    config: TrainingConfig, *, seed: int, task_seed: int, measurements: Measurements = Measurements(),
    purpose: str = "evaluation", progress: bool = False,
) -> dict:
    """Train, measure and record one run; return the existing record if this run was done.

    The model's weights are the original ones again when this returns.
    """
    config = resolved(config, model.device)  # train with the precision the key names
    configuration = run_configuration(
        model, task, localization, config, seed=seed, task_seed=task_seed, measurements=measurements, purpose=purpose,
    )
    key = run_key(configuration)
    path = record_path(key)
    if path.exists():
        return json.loads(path.read_text())
    before = baseline_metrics(model, task, measurements)
    if measurements.prepare:
        measurements.prepare(model, task)
    checkpoint = partial(measurements.checkpoint, before=before) if measurements.checkpoint else None
    seed_everything(seed)
    with restored(model, localization):
        log = train_localized(model, localization, task, general_chunks, config, seed=seed, progress=progress,
                              checkpoint=checkpoint)
        start = time.perf_counter()
        after = measurements.evaluate(model, task, before)
        attacks = measurements.attack(model, task, localization) if measurements.attack else {}
        measure_seconds = time.perf_counter() - start
    record = {
        "key": key, **configuration, "n_parameters": localization.n_parameters,
        "weights_dtype": weights_dtype(model), "trained_weights_dtype": "float32",
        "versions": {name: version(name) for name in PACKAGES},
        "seconds": log.seconds, "measure_seconds": measure_seconds, "curves": log.to_dict(),
        "steps_taken": log.steps, "criterion_reached": log.reached,
        "metrics_before": before, "metrics": after, "attacks": attacks,
    }
    write_json(path, record)
    return record


def load_records(folder: Path | None = None, *, purpose: str | None = "evaluation") -> pd.DataFrame:
    """Every run record as one row (of one ``purpose``, or all); nested fields flattened (``metrics.forget_error``)."""
    folder = folder or results_dir("runs")
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    records = [r for r in records if purpose is None or r.get("purpose") == purpose]
    if not records:
        return pd.DataFrame()
    return pd.json_normalize(records, sep=".")
