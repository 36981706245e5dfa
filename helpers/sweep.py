"""Choosing each localization's hyper-parameters on a validation task, never on the evaluated facts.

The paper swept the learning rate and the forget-loss weight ``c_f`` per method and tuned them
on the very facts it then evaluated. Here the sweep runs on a **validation task**: facts drawn
with their own seed and held out of every evaluation task (:func:`validation_and_evaluation_tasks`).

The selection rule (:func:`select`), fixed before looking at results, compares edits of matched
strength: every run trains until its edit meets the completeness criterion on the trained facts,
or until the step cap (:mod:`helpers.finetune`). Per localization,

1. among the configurations whose validation run **reached the criterion**, the one with the best
   maintain accuracy (on the validation task's measured maintain facts) wins; maintain
   accuracies within ``tie`` of the best count as equal, and then the one that took **fewer
   steps** wins (then the smaller learning rate, then the smaller ``c_f``);
2. if no configuration reached it, the one **closest** to it (the smallest
   :func:`helpers.finetune.criterion_shortfall` at its last check; ties as above) wins, and the
   choice is flagged ``criterion_reached = False``, so that the grid's tables can say so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from helpers.cache import results_dir, slug, write_json
from helpers.choices import TASKS as EDITING_TASKS
from helpers.executors import Executor, LocalExecutor, PlannedRun
from helpers.finetune import TrainingConfig
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.records import Measurements
from helpers.tasks import EditTask, counterfact_edit, sports_athlete_edit, sports_sport_edit

VALIDATION_SEED = 10_000  # the validation task's seed; evaluation tasks use small seeds


@dataclass(frozen=True)
class SweepGrid:
    """The values tried: every learning rate with every forget weight ``c_f``."""

    learning_rates: tuple[float, ...]
    forget_weights: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.learning_rates or not self.forget_weights:
            raise ValueError("A sweep needs at least one learning rate and one forget weight")

    def configs(self, base: TrainingConfig) -> list[TrainingConfig]:
        """``base`` with each (learning rate, c_f) pair; :class:`TrainingConfig` checks the ranges."""
        return [replace(base, learning_rate=lr, forget_weight=cf) for lr in self.learning_rates for cf in self.forget_weights]


def validation_and_evaluation_tasks(
    make_task: Callable[..., EditTask], known: pd.DataFrame, *, seeds: Sequence[int], **task_args,
) -> tuple[EditTask, dict[int, EditTask]]:
    """A validation task, and one evaluation task per seed built without its forget subjects."""
    validation = make_task(known, seed=VALIDATION_SEED, **task_args)
    held_out = validation_subjects(validation)
    return validation, {seed: make_task(known, seed=seed, holdout=held_out, **task_args) for seed in seeds}


def validation_subjects(validation: EditTask) -> set[str]:
    """The subjects a validation task edits: no evaluated task may contain them."""
    return set(validation.forget_train.subject) | set(validation.forget_eval.subject)


def editing_tasks(
    known: Mapping[str, pd.DataFrame], tasks: Sequence[str], *, athlete_seeds: Sequence[int], other_seeds: Sequence[int],
    n_facts: int, n_maintain: int, edited_sport: str, sport_edit_athletes: int | None,
) -> tuple[dict[str, EditTask], dict[str, dict[int, EditTask]]]:
    """Chapter 04's validation task per data set and its evaluated tasks per seed.

    ``known`` holds the known ``"sports"`` athletes and ``"counterfact"`` facts. Sports-Sport-Edit
    has no validation task of its own: it is tuned on the sports validation task, so it is
    built without that task's athletes too.
    """
    unknown = set(tasks) - set(EDITING_TASKS)
    if unknown:
        raise ValueError(f"Unknown tasks {sorted(unknown)}; choose from {list(EDITING_TASKS)}")
    validation, evaluated = {}, {}
    if {"sports_athlete_edit", "sports_sport_edit"} & set(tasks):
        validation["sports"], evaluated["sports_athlete_edit"] = validation_and_evaluation_tasks(
            sports_athlete_edit, known["sports"], seeds=athlete_seeds, n_facts=n_facts, n_maintain=n_maintain)
    if "counterfact_edit" in tasks:
        validation["counterfact"], evaluated["counterfact_edit"] = validation_and_evaluation_tasks(
            counterfact_edit, known["counterfact"], seeds=other_seeds, n_facts=n_facts, n_maintain=n_maintain)
    if "sports_sport_edit" in tasks:
        held_out = validation_subjects(validation["sports"])
        evaluated["sports_sport_edit"] = {
            s: sports_sport_edit(known["sports"], edited_sport, seed=s, n_maintain=n_maintain,
                                 n_athletes=sport_edit_athletes, holdout=held_out)
            for s in other_seeds
        }
    return validation, {name: evaluated[name] for name in tasks}


def sweep(
    model: LoadedModel, task: EditTask, localizations: Sequence[Localization], general_chunks: torch.Tensor,
    base: TrainingConfig, grid: SweepGrid, *, seed: int, executor: Executor | None = None, progress: bool = True,
) -> pd.DataFrame:
    """Train every localization with every configuration of ``grid`` on the validation ``task``.

    The runs execute in this process unless ``executor`` says otherwise (:mod:`helpers.executors`).
    One row per run: the training-format metrics, the steps taken, whether the run reached the
    completeness criterion and its shortfall at the last check.
    """
    if not base.check_every:
        raise ValueError("The sweep selects by the completeness criterion: base.check_every must be at least 1")
    runs = [PlannedRun(task, VALIDATION_SEED, loc, config, seed) for loc in localizations for config in grid.configs(base)]
    records = (executor or LocalExecutor()).run(
        model, runs, general_chunks, Measurements(), purpose="validation", desc=f"sweep {task.name}", progress=progress,
    )
    return pd.DataFrame([
        {"localization": run.localization.name, "learning_rate": run.config.learning_rate,
         "forget_weight": run.config.forget_weight, **record["metrics"], "steps_taken": record["steps_taken"],
         "criterion_reached": record["criterion_reached"], "shortfall": record["curves"]["checks"][-1]["shortfall"]}
        for run, record in zip(runs, records)
    ])


def select(results: pd.DataFrame, *, tie: float = 0.01) -> pd.DataFrame:
    """One row per localization: the configuration the selection rule picks (see the module doc).

    Among the runs that reached the completeness criterion, the best maintain accuracy (within
    ``tie``), then the fewest steps; if none reached it, the smallest shortfall (within ``tie``),
    then the best maintain accuracy and the fewest steps. Further ties: smaller learning rate, then ``c_f``.
    """
    if results.empty:
        raise ValueError("No sweep results to select from")
    order = ["steps_taken", "learning_rate", "forget_weight"]
    chosen = []
    for _, group in results.groupby("localization", sort=False):
        reached = group[group.criterion_reached.astype(bool)]
        if len(reached):
            candidates = reached[reached.maintain_accuracy >= reached.maintain_accuracy.max() - tie]
            chosen.append(candidates.sort_values(order).iloc[0])
        else:
            closest = group[group.shortfall <= group.shortfall.min() + tie]
            best = closest[closest.maintain_accuracy >= closest.maintain_accuracy.max() - tie]
            chosen.append(best.sort_values(order).iloc[0])
    return pd.DataFrame(chosen).reset_index(drop=True)


def choices_path(model_name: str, task_name: str) -> Path:
    return results_dir("hyperparameters", slug(model_name)) / f"{task_name}.json"


def save_choices(choices: pd.DataFrame, model_name: str, task_name: str) -> Path:
    """Write the chosen (learning rate, c_f) per localization; return the path."""
    path = choices_path(model_name, task_name)
    columns = ["localization", "learning_rate", "forget_weight", "maintain_accuracy", "steps_taken", "criterion_reached", "shortfall"]
    write_json(path, choices[columns].to_dict(orient="records"))
    return path


def load_choices(model_name: str, task_name: str) -> pd.DataFrame:
    """The choices :func:`save_choices` wrote (notebook 04's sweep)."""
    path = choices_path(model_name, task_name)
    if not path.exists():
        raise FileNotFoundError(f"No hyper-parameters chosen for {task_name!r} on {model_name!r} at {path}; run notebook 04 first")
    return pd.DataFrame(json.loads(path.read_text()))


def chosen_configs(choices: pd.DataFrame, base: TrainingConfig) -> dict[str, TrainingConfig]:
    """``base`` with each localization's chosen learning rate and ``c_f``."""
    return {
        row.localization: replace(base, learning_rate=float(row.learning_rate), forget_weight=float(row.forget_weight))
        for row in choices.itertuples()
    }
