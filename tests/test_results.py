"""Records to long tables: each value lands in the right row."""

import pandas as pd
import pytest

from helpers.results import format_metrics_long, latent_by_layer, mcq_usability, relearning_curves

RECORDS = pd.DataFrame({
    "task": ["sports_athlete_edit", "counterfact_edit"], "localization": ["fact_lookup", "fact_lookup"], "seed": [0, 0],
    "metrics_before.lettered_mcq_maintain_accuracy": [0.26, 0.25], "metrics_before.cloze_mcq_maintain_accuracy": [0.6, 0.7],
    "metrics.forget_error": [0.9, 0.8], "metrics.cloze_mcq_forget_error": [0.4, 0.3],
    "attacks.relearn_lora": [[{"step": 0, "p_true": 0.1}, {"step": 5, "p_true": 0.5}], [{"step": 0, "p_true": 0.2}]],
    "attacks.latent_original_true_L3": [0.25, None], "attacks.latent_original_new_L3": [0.75, None],
})


def test_usability_compares_with_chance_plus_margin():
    table = mcq_usability(RECORDS).set_index(["task", "format"])
    assert not table.loc[("sports_athlete_edit", "lettered_mcq"), "usable"]
    assert table.loc[("counterfact_edit", "cloze_mcq"), "usable"]
    assert table.loc[("counterfact_edit", "cloze_mcq"), "chance"] == 0.25


def test_format_metrics_long_picks_each_column():
    long = format_metrics_long(RECORDS, ["fact", "cloze_mcq"], ["forget_error", "edit_accuracy"])
    values = long.set_index(["task", "format", "kind"]).value
    assert values[("counterfact_edit", "cloze_mcq", "forget_error")] == 0.3 and len(long) == 4
    with pytest.raises(ValueError, match="No metric"):
        format_metrics_long(RECORDS, ["paraphrase"], ["edit_accuracy"])


def test_curves_and_latent_tables():
    curves = relearning_curves(RECORDS, "lora")
    assert curves.step.tolist() == [0, 5, 0] and curves.p_true.tolist() == [0.1, 0.5, 0.2]
    latent = latent_by_layer(RECORDS)
    assert len(latent) == 1 and latent.share_true.iloc[0] == 0.25 and latent.share_new.iloc[0] == 0.75
    with pytest.raises(ValueError, match="lack the columns"):
        relearning_curves(RECORDS, "full")
