"""Hyper-parameter sweep: validation facts never evaluated, the selection rule as written, the grid."""

from dataclasses import replace

import pandas as pd
import pytest

from helpers.finetune import TrainingConfig, retain_chunks
from helpers.grid import load_grid, plan_runs, run_grid
from helpers.localization import Component, Localization
from helpers.prompts import SPORTS
from helpers.records import Measurements, load_records
from helpers.sweep import (
    SweepGrid,
    chosen_configs,
    editing_tasks,
    load_choices,
    save_choices,
    select,
    sweep,
    validation_and_evaluation_tasks,
)
from helpers.tasks import counterfact_edit, sports_athlete_edit

NAMES = [f"Player{i}" for i in range(30)]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
BASE = TrainingConfig(steps=2, batch_size=4, retain_batch_size=1, retain_length=16, retain_positions=4)


def test_validation_facts_are_held_out_of_every_evaluated_task():
    validation, evaluated = validation_and_evaluation_tasks(sports_athlete_edit, ATHLETES, seeds=[0, 1, 2], n_facts=4, n_maintain=4)
    held_out = set(validation.forget_train.subject)
    assert len(held_out) == 4 and set(evaluated) == {0, 1, 2}
    for task in evaluated.values():
        for split, subjects in task.subjects().items():
            assert not held_out & subjects, split


def test_no_subject_edited_in_the_sweep_is_edited_in_an_evaluated_task():
    """Sports-Sport-Edit is tuned on the sports validation task, so its athletes are held out too."""
    validation, evaluated = editing_tasks(
        {"sports": ATHLETES}, ["sports_athlete_edit", "sports_sport_edit"], athlete_seeds=[0, 1], other_seeds=[0, 1],
        n_facts=4, n_maintain=2, edited_sport=SPORTS[0], sport_edit_athletes=None)
    swept = {subject for task in validation.values() for subject in task.subjects()["forget_train"]}
    assert swept and set(evaluated) == {"sports_athlete_edit", "sports_sport_edit"}
    for name, by_seed in evaluated.items():
        for seed, task in by_seed.items():
            edited = task.subjects()["forget_train"] | task.subjects()["forget_eval"]
            assert edited and not swept & edited, (name, seed)
    with pytest.raises(ValueError, match="Unknown tasks"):
        editing_tasks({}, ["sports_edit"], athlete_seeds=[0], other_seeds=[0], n_facts=4, n_maintain=2,
                      edited_sport=SPORTS[0], sport_edit_athletes=None)


def test_counterfact_validation_holds_out_subjects():
    facts = pd.DataFrame({
        "subject": [f"S{i}" for i in range(20)], "prompt": [f"S{i} speaks" for i in range(20)],
        "target_true": ["French"] * 20, "target_new": ["English"] * 20,
        "mcq_wrong_options": [["English", "German", "Dutch"]] * 20,
        "paraphrase_prompts": [[]] * 20, "neighborhood_prompts": [[]] * 20,
    })
    validation, evaluated = validation_and_evaluation_tasks(counterfact_edit, facts, seeds=[0], n_facts=3, n_maintain=3)
    assert not set(validation.forget_eval.subject) & set(evaluated[0].forget_eval.subject)


def sweep_results(rows: list[tuple]) -> pd.DataFrame:
    """Sweep rows (localization, learning rate, maintain accuracy, steps taken, criterion reached, shortfall)."""
    frame = pd.DataFrame(rows, columns=["localization", "learning_rate", "maintain_accuracy", "steps_taken",
                                        "criterion_reached", "shortfall"])
    return frame.assign(forget_weight=1.0)


def test_select_takes_the_best_maintain_among_complete_edits_then_fewer_steps():
    results = sweep_results([
        ("a", 1e-5, 0.99, 50, False, 0.40),  # best maintain, but the edit is incomplete
        ("a", 3e-5, 0.80, 20, True, 0.0),
        ("a", 1e-4, 0.795, 10, True, 0.0),  # within .01 of the best complete one, and fewer steps
        ("b", 1e-5, 0.90, 30, True, 0.0),
        ("b", 1e-4, 0.70, 5, True, 0.0),  # fewer steps, but clearly worse maintain
    ])
    chosen = select(results).set_index("localization")
    assert chosen.loc["a", "learning_rate"] == 1e-4 and chosen.loc["a", "criterion_reached"]
    assert chosen.loc["b", "learning_rate"] == 1e-5
    configs = chosen_configs(chosen.reset_index(), BASE)
    assert configs["a"].learning_rate == 1e-4 and configs["a"].steps == BASE.steps
    with pytest.raises(ValueError, match="No sweep results"):
        select(results.iloc[:0])


def test_select_falls_back_to_the_closest_edit_and_flags_it():
    results = sweep_results([
        ("a", 1e-5, 0.99, 50, False, 0.60),
        ("a", 3e-5, 0.70, 50, False, 0.10),  # closest to the criterion
        ("a", 1e-4, 0.95, 50, False, 0.30),
    ])
    chosen = select(results).iloc[0]
    assert chosen.learning_rate == 3e-5 and not chosen.criterion_reached and chosen.shortfall == 0.10


def test_sweep_grid_needs_values_and_checks_ranges():
    with pytest.raises(ValueError, match="at least one learning rate"):
        SweepGrid(())
    with pytest.raises(ValueError, match="learning_rate"):
        SweepGrid((2.0,)).configs(BASE)


def test_sweep_records_are_validation_and_the_grid_runs_every_cell(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    validation, evaluated = validation_and_evaluation_tasks(sports_athlete_edit, ATHLETES, seeds=[0, 1], n_facts=4, n_maintain=4)
    locs = [Localization.build(f"mlp{l}", tiny_model, [Component("mlp", l)], "test") for l in (0, 1)]
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    results = sweep(tiny_model, validation, locs, chunks, BASE, SweepGrid((1e-4, 1e-3)), seed=0, progress=False)
    assert len(results) == 4 and results.maintain_accuracy.between(0, 1).all()
    assert (results.steps_taken == BASE.steps).all() and not results.criterion_reached.any() and (results.shortfall > 0).all()
    chosen = select(results)
    assert save_choices(chosen, tiny_model.name, validation.name).exists()
    runs = plan_runs(evaluated, locs, chosen_configs(chosen, BASE))
    assert len(runs) == 4
    grid = run_grid(tiny_model, runs, chunks, Measurements(), progress=False)
    assert sorted(zip(grid.seed, grid.localization)) == [(0, "mlp0"), (0, "mlp1"), (1, "mlp0"), (1, "mlp1")]
    assert len(load_records()) == 4 and len(load_records(purpose="validation")) == 4
    assert sorted(load_grid(tiny_model.name).key) == sorted(grid.key)
    assert load_choices(tiny_model.name, validation.name).localization.tolist() == chosen.localization.tolist()
    assert set(load_choices(tiny_model.name, validation.name).columns) >= {"steps_taken", "criterion_reached", "shortfall"}
    with pytest.raises(ValueError, match="No training config"):
        plan_runs(evaluated, locs, {})
    with pytest.raises(ValueError, match="check_every must be at least 1"):
        sweep(tiny_model, validation, locs, chunks, replace(BASE, check_every=0), SweepGrid((1e-4,)), seed=0, progress=False)
