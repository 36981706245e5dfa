"""Run records: written once per configuration, skipped when they exist, gathered into a table."""

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import helpers.records as records
from helpers.finetune import TrainingConfig, retain_chunks
from helpers.localization import Component, Localization
from helpers.prompts import SPORTS
from helpers.records import answer_probabilities, load_records, run_experiment
from helpers.scoring import candidate_probs, renormalize
from helpers.tasks import sports_athlete_edit

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
CONFIG = TrainingConfig(learning_rate=1e-3, steps=2, batch_size=4, retain_batch_size=1, retain_length=16, retain_positions=4)


def test_forget_error_of_an_unedited_model_is_one_minus_its_p_true(tiny_model):
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    probs = renormalize(candidate_probs(tiny_model, task.forget_eval.prompt.tolist(), list(task.candidates), progress=False))
    p_true = probs[np.arange(4), [task.candidates.index(s) for s in task.forget_eval.true]]
    metrics = records.training_format_metrics(tiny_model, task)
    assert metrics["forget_error"] == pytest.approx(1 - p_true.mean(), abs=1e-6)
    assert 0 <= metrics["edit_accuracy"] <= 1 and 0 <= metrics["maintain_accuracy"] <= 1
    np.testing.assert_allclose(answer_probabilities(tiny_model, task.forget_eval, task.forget_eval.true.tolist(), task.candidates), p_true)


def test_records_are_written_once_and_gathered(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    first = run_experiment(tiny_model, task, localization, chunks, CONFIG, seed=0, task_seed=0)
    assert first["localization"] == "mlp1" and len(first["curves"]["total"]) == 2 and first["versions"]["torch"]
    assert (first["weights_dtype"], first["trained_weights_dtype"]) == ("float32", "float32")
    assert first["steps_taken"] == 2 and first["criterion_reached"] is False and first["curves"]["checks"][-1]["step"] == 2
    monkeypatch.setattr(records, "train_localized", refuse)
    assert run_experiment(tiny_model, task, localization, chunks, CONFIG, seed=0, task_seed=0) == first
    with pytest.raises(AssertionError, match="trained again"):
        run_experiment(tiny_model, task, localization, chunks, CONFIG, seed=1, task_seed=0)
    table = load_records()
    assert len(table) == 1 and {"metrics.forget_error", "metrics_before.forget_error", "training.learning_rate"} <= set(table.columns)


def refuse(*args, **kwargs):
    raise AssertionError("trained again although the record exists")


@pytest.mark.parametrize("change", ["code", "template", "dtype"])
def test_a_record_is_not_reused_after_a_change_of(change, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    run_experiment(tiny_model, task, localization, chunks, CONFIG, seed=0, task_seed=0)
    monkeypatch.setattr(records, "train_localized", refuse)
    model = tiny_model
    if change == "code":
        monkeypatch.setattr("helpers.keys.code_version", lambda: "changed")
    elif change == "template":
        task = replace(task, forget_eval=task.forget_eval.assign(prompt="Q: " + task.forget_eval.prompt))
    else:
        model = replace(tiny_model, hf_model=copy.deepcopy(tiny_model.hf_model).to(torch.bfloat16))
    with pytest.raises(AssertionError, match="trained again"):
        run_experiment(model, task, localization, chunks, CONFIG, seed=0, task_seed=0)


def test_the_evaluation_after_the_edit_and_each_check_are_handed_the_unedited_models_metrics(tiny_model, tmp_path, monkeypatch):
    """run_experiment evaluates the unedited model with before=None, then gives its metrics to the evaluation
    after the edit and to every checkpoint (so they can leave out what the unedited model cannot answer)."""
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    chunks = retain_chunks(tiny_model, ["The river flows slowly through the green valley. " * 20], 16)
    calls = []

    def evaluate(model, task, before=None):
        calls.append(("evaluate", before))
        return {"evaluations so far": float(len(calls))}

    def checkpoint(model, task, before=None):
        calls.append(("checkpoint", before))
        return {}

    measure = records.Measurements(evaluate=evaluate, checkpoint=checkpoint)
    record = run_experiment(tiny_model, task, localization, chunks, replace(CONFIG, check_every=1), seed=0, task_seed=0,
                            measurements=measure)
    before = {"evaluations so far": 1.0}
    assert calls == [("evaluate", None), ("checkpoint", before), ("checkpoint", before), ("evaluate", before)]
    assert record["metrics_before"] == before and record["metrics"] == {"evaluations so far": 4.0}
