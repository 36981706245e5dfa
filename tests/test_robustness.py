"""The grid's measurements (helpers.robustness): settings checks and the precision of the evaluation."""

from dataclasses import replace

import pandas as pd
import pytest
import torch

from helpers.counterfact import load_counterfact
from helpers.evaluation import format_metrics, general_chunks, mcq_chance
from helpers.finetune import TrainingConfig
from helpers.formats import MCQ_FORMATS
from helpers.localization import Component, Localization
from helpers.prompts import SPORTS
from helpers.records import Measurements, load_records, run_experiment
from helpers.relearning import RelearnConfig
from helpers.results import relearning_curves, strength_curves
from helpers.robustness import STRENGTH_FORMATS, Robustness, RobustnessSettings
from helpers.soft_prompt import SoftPromptConfig
from helpers.tasks import sports_athlete_edit

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
TEXT = ["The river flows slowly through the green valley, past old mills and quiet farms. " * 8]


def robustness(model, eval_precision: str) -> Robustness:
    settings = RobustnessSettings(quiz_size=4, max_general_tokens=64, eval_precision=eval_precision, soft_prompt=None)
    chunks = general_chunks(model, TEXT)
    return Robustness(model, ATHLETES, load_counterfact().head(40), chunks, settings)


def test_bf16_evaluation_agrees_with_float32_and_leaves_the_weights_alone(tiny_model):
    task = sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)
    weights = {n: p.detach().clone() for n, p in tiny_model.hf_model.named_parameters()}
    exact = robustness(tiny_model, "float32").evaluate(tiny_model, task)
    fast = robustness(tiny_model, "bfloat16").evaluate(tiny_model, task)
    assert set(fast) == set(exact)
    assert max(abs(fast[k] - exact[k]) for k in exact if k != "general_loss") < 0.02
    assert fast["general_loss"] == pytest.approx(exact["general_loss"], rel=0.01)
    assert fast != exact  # bf16 really ran: some value differs by rounding
    after = dict(tiny_model.hf_model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], w) for n, w in weights.items())


def test_settings_name_what_is_out_of_range():
    with pytest.raises(ValueError, match="eval_precision"):
        RobustnessSettings(eval_precision="float16")
    with pytest.raises(ValueError, match="Unknown relearning attacks"):
        RobustnessSettings(relearn_attacks=("lora", "sgd"))
    with pytest.raises(ValueError, match="a tuple of task names"):
        RobustnessSettings(strength_curve_tasks="sports_athlete_edit")
    with pytest.raises(ValueError, match="attack_tasks must be a tuple of task names"):
        RobustnessSettings(attack_tasks="sports_athlete_edit")


def test_only_the_tasks_in_attack_tasks_are_attacked_and_the_chapters_skip_the_others(tiny_model):
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=3)
    settings = RobustnessSettings(
        quiz_size=4, max_general_tokens=64, latent_probes=False, eval_precision="float32", attack_tasks=("counterfact_edit",),
        relearn=RelearnConfig(steps=1, eval_every=1, lora_rank=2, batch_size=2, retain_batch_size=0, precision="float32"),
        soft_prompt=SoftPromptConfig(n_vectors=1, steps=1, batch_size=2, precision="float32"))
    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    chunks = general_chunks(tiny_model, TEXT)
    skipped = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), chunks, settings)
    assert skipped.attack(tiny_model, task, localization) == {}
    attacked = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), chunks, replace(settings, attack_tasks=None))
    results = attacked.attack(tiny_model, task, localization)
    assert {"relearn_error_lora", "relearn_error_full", "soft_prompt_p_true_after"} <= set(results)

    records = pd.DataFrame({"task": ["sports_athlete_edit", "sports_sport_edit"], "localization": "mlp1", "seed": 0,
                            "attacks.relearn_lora": [results["relearn_lora"], float("nan")]})
    curves = relearning_curves(records, "lora")
    assert set(curves.task) == {"sports_athlete_edit"} and len(curves) == len(results["relearn_lora"])
    with pytest.raises(ValueError, match="No run in the records was attacked by 'lora'"):
        relearning_curves(records.iloc[1:], "lora")


def test_the_strength_curve_is_recorded_at_each_check_for_the_named_tasks(tiny_model, tmp_path, monkeypatch):
    """Each check of a named task gets the paraphrase and MCQ measures of the forget facts; the training format comes
    from the completeness check itself; with the setting off no hook runs and the key names none."""
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path))
    task = sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)
    settings = RobustnessSettings(quiz_size=4, max_general_tokens=64, soft_prompt=None, relearn_attacks=(), latent_probes=False,
                                  eval_precision="float32", strength_curve_tasks=(task.name,))
    on = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), general_chunks(tiny_model, TEXT), settings)
    point = on.strength_point(tiny_model, task)
    expected = {}
    for fmt in ("paraphrase", *MCQ_FORMATS):
        expected |= format_metrics(tiny_model, task, fmt, n_orders=1, seed=0)
    assert set(point) == {f"{fmt}_{kind}" for fmt in ("paraphrase", *MCQ_FORMATS) for kind in ("forget_error", "edit_accuracy")}
    assert point == pytest.approx({k: expected[k] for k in point}, abs=1e-6)
    assert on.strength_point(tiny_model, replace(task, name="sports_sport_edit")) == {}  # a task not named

    localization = Localization.build("mlp1", tiny_model, [Component("mlp", 1)], "test")
    config = TrainingConfig(learning_rate=1e-3, steps=2, batch_size=3, retain_batch_size=0, retain_length=16,
                            retain_positions=4, check_every=1)
    record = run_experiment(tiny_model, task, localization, torch.zeros(1, 16, dtype=torch.long), config,
                            seed=0, task_seed=0, measurements=replace(on.measurements(), attack=None))
    measured = {f"{fmt}_{kind}" for fmt in on._measured(STRENGTH_FORMATS, task, record["metrics_before"])
                for kind in ("forget_error", "edit_accuracy")}
    checks = record["curves"]["checks"]
    assert [c["step"] for c in checks] == [1, 2] and all(measured <= set(c) for c in checks)
    curves = strength_curves(load_records())
    assert len(curves) == 2 * len(measured) and set(curves.step) == {1, 2}
    assert curves.groupby("step").edit_accuracy.first().tolist() == [c["p_new"] for c in checks]

    off = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), general_chunks(tiny_model, TEXT),
                     replace(settings, strength_curve_tasks=()))
    assert off.measurements().checkpoint is None and "checkpoint" not in off.measurements().key()
    assert on.measurements().key()["checkpoint"] == "Robustness.strength_point"


def test_after_an_edit_the_formats_the_unedited_model_answers_at_chance_are_left_out(tiny_model):
    """Given the unedited model's metrics, evaluate and strength_point skip an MCQ format at chance there and keep
    the one above it; without them, or with measure_formats_at_chance, every format."""
    task = sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)
    settings = RobustnessSettings(quiz_size=4, max_general_tokens=64, soft_prompt=None, relearn_attacks=(),
                                  latent_probes=False, eval_precision="float32", strength_curve_tasks=(task.name,))
    chunks = general_chunks(tiny_model, TEXT)
    gated = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), chunks, settings)
    every = gated.evaluate(tiny_model, task)
    before = every | {"lettered_mcq_maintain_accuracy": mcq_chance(task), "cloze_mcq_maintain_accuracy": 0.9}
    after = gated.evaluate(tiny_model, task, before)
    assert set(after) == {k for k in every if not k.startswith("lettered_mcq_")}
    assert after == pytest.approx({k: every[k] for k in after}, abs=1e-6)  # the model is unchanged: the same numbers
    assert not any(k.startswith("lettered_mcq_") for k in gated.strength_point(tiny_model, task, before))
    assert any(k.startswith("cloze_mcq_") for k in gated.strength_point(tiny_model, task, before))

    forced = Robustness(tiny_model, ATHLETES, load_counterfact().head(40), chunks,
                        replace(settings, measure_formats_at_chance=True))
    assert set(forced.evaluate(tiny_model, task, before)) == set(every)
    assert forced.measurements().key() != gated.measurements().key()
    with pytest.raises(ValueError, match="lack"):
        gated.evaluate(tiny_model, task, {"forget_error": 0.1})
