"""The paper's numbers load with their labels and line up with ours, measured as the paper measured them."""

import pandas as pd
import pytest

from helpers.paper import SYSTEM_QA, completion_chance, like_the_paper, model_layers, paper_numbers, side_by_side
from helpers.prompts import SPORTS
from helpers.results import LATENT_HEADLINE, LATENT_NEW, latent_by_layer
from helpers.tasks import sports_athlete_edit, sports_sport_edit

N_LAYERS = 18  # the embedded model's depth: the paper's layer 8 of 28 sits at our layer 4


def fake_records(system_qa_before: float = 0.8) -> pd.DataFrame:
    """Sports-Athlete-Edit (two localizations, two seeds) and CounterFact-Edit (one run), every column a run record has."""
    rows = []
    for task, localizations, seeds in (("sports_athlete_edit", ("fact_lookup", "causal_tracing"), (0, 1)),
                                       ("counterfact_edit", ("fact_lookup",), (0,))):
        sports = task.startswith("sports")
        for i, localization in enumerate(localizations):
            for seed in seeds:
                value = 0.1 * (i + 1) + 0.01 * seed
                row = {
                    "task": task, "localization": localization, "seed": seed, "model": "tiny", "dtype": "torch.float32",
                    "n_forget": 4, "n_parameters": 100, "training.steps": 12, "steps_taken": 10, "criterion_reached": seed == 0,
                    "measurements.settings.relearn.lora_rank": 8, "measurements.settings.relearn.steps": 3,
                    "metrics_before.lettered_mcq_maintain_accuracy": 0.26, "metrics_before.cloze_mcq_maintain_accuracy": 0.6,
                    "metrics.forget_error": value, "metrics.maintain_accuracy": value, "metrics.edit_accuracy": value,
                    "metrics.paraphrase_edit_accuracy": value, "metrics.cloze_mcq_forget_error": value,
                    "metrics.cloze_mcq_edit_accuracy": value, "metrics.quiz_accuracy": value, "attacks.relearn_error_lora": value,
                }
                if sports:
                    row |= {"metrics_before.system_qa_maintain_accuracy": system_qa_before,
                            "metrics.system_qa_forget_error": 0.5 + value, "metrics.system_qa_maintain_accuracy": 0.7,
                            "metrics.system_qa_edit_accuracy": 0.4 + value}
                    for layer in range(N_LAYERS):  # the edited-model probe reads 0.9 - layer/100 as the original sport
                        row |= {f"attacks.latent_edited_true_L{layer}": 0.9 - layer / 100, f"attacks.latent_edited_new_L{layer}": layer / 100,
                                f"attacks.latent_original_true_L{layer}": 0.5, f"attacks.latent_original_new_L{layer}": 0.5}
                rows.append(row)
    return pd.DataFrame(rows)


def test_paper_numbers_are_labelled_probabilities():
    paper = paper_numbers()
    assert paper.value.between(0, 1).all() and paper.model.notna().all()
    flu = paper.set_index(["task", "localization", "metric"]).value
    assert flu[("sports_athlete_edit", "fact_lookup", "MCQ edit accuracy")] == 0.86


def test_like_the_paper_takes_sports_in_its_format_and_the_edited_probe_at_its_depth():
    ours = like_the_paper(fake_records()).set_index(["task", "localization", "seed", "metric"]).sort_index()
    sports = ours.loc[("sports_athlete_edit", "causal_tracing", 1)]
    assert sports.loc["edit accuracy", "value"] == pytest.approx(0.61) and sports.loc["edit accuracy", "measured as"] == SYSTEM_QA
    assert sports.loc["maintain accuracy", "value"] == 0.7
    assert sports.loc["paraphrase edit accuracy", "value"] == pytest.approx(0.21)  # not the paper's Q/A: unchanged
    assert sports.loc[LATENT_HEADLINE, "value"] == pytest.approx(0.86) and sports.loc[LATENT_NEW, "value"] == pytest.approx(0.04)
    assert sports.loc[LATENT_HEADLINE, "measured as"] == "probe trained on the edited model, layer 4 of 0-17"
    counterfact = ours.loc[("counterfact_edit", "fact_lookup", 0)]
    assert counterfact.loc["edit accuracy", "measured as"] == "fact prompt (training format)"
    assert counterfact.loc["MCQ edit accuracy", "measured as"] == "cloze mcq"
    assert not ours.index.duplicated().any()


def test_side_by_side_puts_ours_beside_the_papers_rows_with_footnotes():
    table, notes = side_by_side(fake_records(), "tiny")
    rows = table.set_index(["task", "localization", "metric"])
    edit = rows.loc[("sports_athlete_edit", "fact_lookup", "edit accuracy")]
    assert edit["ours (tiny)"] == pytest.approx(0.505) and edit.seeds == 2 and edit["ours measured as"] == SYSTEM_QA
    latent = rows.loc[("sports_athlete_edit", "causal_tracing", LATENT_HEADLINE)]
    assert latent.paper == 1.0 and latent["ours (tiny)"] == pytest.approx(0.86)
    assert rows.loc[("sports_athlete_edit", "nonlocalized", "edit accuracy"), "ours (tiny)"] != rows.loc[
        ("sports_athlete_edit", "nonlocalized", "edit accuracy"), "ours (tiny)"]  # not run: empty
    assert len(table) == len(paper_numbers())
    number = {note.split(". ", 1)[1].split(":")[0]: note.split(".")[0] for note in notes}
    assert list(number) == ["Model", "Seeds", "Facts edited", "Training", "Sports forget error, maintain and edit accuracy",
                            "MCQ", "Relearning", "Latent"]
    assert set(number.values()) == {str(i) for i in range(1, 9)}
    assert edit.notes == "1 2 3 4 5" and latent.notes == "1 2 3 4 8"
    assert rows.loc[("counterfact_edit", "fact_lookup", "MCQ edit accuracy"), "notes"] == "1 2 3 4 6"
    text = "\n".join(notes)
    assert "sports_athlete_edit: 2; counterfact_edit: 1" in text and "cap 12, 10.0 steps on average, 2 of 4 edits complete" in text
    assert "ours at layer 4 of 0-17 (after 5 of 18 blocks" in text and "lora rank 8" in text and "0.80 (chance 0.33)" in text


def test_a_format_at_chance_before_editing_is_flagged():
    table, notes = side_by_side(fake_records(system_qa_before=0.35), "tiny")
    edit = table.set_index(["task", "localization", "metric"]).loc[("sports_athlete_edit", "fact_lookup", "edit accuracy")]
    assert edit["ours measured as"] == f"{SYSTEM_QA} (at chance before editing)"
    assert any("0.35 (chance 0.33, at chance" in note for note in notes)


def test_records_without_the_papers_format_keep_the_training_format():
    records = fake_records().drop(columns=[c for c in fake_records() if "system_qa" in c or "latent" in c])
    table, notes = side_by_side(records, "tiny")
    edit = table.set_index(["task", "localization", "metric"]).loc[("sports_athlete_edit", "fact_lookup", "edit accuracy")]
    assert edit["ours measured as"] == "fact prompt (training format)" and edit.notes == "1 2 3 4"
    assert not any(note.split(". ", 1)[1].startswith(("Latent", "Sports")) for note in notes)


def test_completion_chance_follows_the_tasks_answers():
    athletes = pd.DataFrame({"athlete": [f"A{i}" for i in range(24)], "sport": [SPORTS[i % 3] for i in range(24)]})
    for task in (sports_athlete_edit(athletes, 2, seed=0, n_maintain=2), sports_sport_edit(athletes, "football", seed=0, n_maintain=2)):
        assert completion_chance(task.name) == 1 / len(task.candidates)
    with pytest.raises(ValueError, match="sports tasks only"):
        completion_chance("counterfact_edit")


def test_probes_must_cover_every_layer_and_the_csv_its_columns(tmp_path):
    latent = latent_by_layer(fake_records())
    assert model_layers(latent) == N_LAYERS
    with pytest.raises(ValueError, match="not at every layer"):
        model_layers(latent[latent.layer != 3])
    path = tmp_path / "numbers.csv"
    path.write_text("task,value\nx,1\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        paper_numbers(path)
