"""Records to long tables: each value lands in the right row."""

import pandas as pd
import pytest

from helpers.results import (
    FIT_COLUMNS,
    LATENT_HEADLINE,
    attack_fits,
    format_metrics_long,
    headline_mcq_format,
    headline_metrics,
    latent_by_layer,
    matched_comparison,
    matched_strength,
    mcq_usability,
    relearning_before_after,
    relearning_curves,
    strength_bins,
    strength_curves,
)

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


def test_usability_is_judged_on_every_seed():
    """Seed 0's maintain set alone is at chance; over both seeds the format is usable."""
    records = pd.DataFrame({
        "task": ["counterfact_edit"] * 4, "localization": ["fact_lookup", "random_mlps"] * 2, "seed": [0, 0, 1, 1],
        "metrics_before.lettered_mcq_maintain_accuracy": [0.25, 0.25, 0.45, 0.45],
        "metrics_before.cloze_mcq_maintain_accuracy": [0.6, 0.6, 0.7, 0.7],
    })
    table = mcq_usability(records).set_index(["task", "format"])
    row = table.loc[("counterfact_edit", "lettered_mcq")]
    assert row["usable"] and row["seeds"] == 2
    assert row["accuracy before editing"] == pytest.approx(0.35) and row["lowest seed"] == 0.25


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


def headline_records() -> pd.DataFrame:
    """Two tasks, two localizations, two seeds, with every headline column."""
    rows = []
    for task in ("sports_athlete_edit", "counterfact_edit"):
        for i, localization in enumerate(("fact_lookup", "causal_tracing")):
            for seed in (0, 1):
                value = 0.1 * (i + 1) + 0.01 * seed
                rows.append({
                    "task": task, "localization": localization, "seed": seed, "n_parameters": 100 * (i + 1),
                    "criterion_reached": seed == 0,
                    "metrics_before.lettered_mcq_maintain_accuracy": 0.26, "metrics_before.cloze_mcq_maintain_accuracy": 0.6,
                    "metrics.forget_error": value, "metrics.maintain_accuracy": value, "metrics.edit_accuracy": value,
                    "metrics.paraphrase_edit_accuracy": value, "metrics.cloze_mcq_forget_error": value,
                    "metrics.cloze_mcq_edit_accuracy": value, "metrics.lettered_mcq_edit_accuracy": 0.99,
                    "metrics.lettered_mcq_forget_error": 0.99, "metrics.quiz_accuracy": value,
                    "attacks.relearn_error_lora": value,
                    "attacks.relearn_lora": [{"step": 0, "relearn_error": 0.9}, {"step": 10, "relearn_error": value}],
                    "attacks.latent_original_true_L0": value if task.startswith("sports") else None,
                    "attacks.latent_original_true_L1": 0.5 if task.startswith("sports") else None,
                    "attacks.latent_original_new_L0": 0.0 if task.startswith("sports") else None,
                })
    return pd.DataFrame(rows)


def test_headline_metrics_use_the_usable_mcq_format_and_average_probe_layers():
    metrics = headline_metrics(headline_records()).set_index(["task", "localization", "seed"])
    row = metrics.loc[("sports_athlete_edit", "causal_tracing", 1)]
    assert row.mcq_format == "cloze_mcq"  # lettered is at chance before editing: not the headline
    assert metrics.criterion_reached.tolist() == [True, False] * 4
    assert row["MCQ edit accuracy"] == pytest.approx(0.21) and row["relearning error"] == pytest.approx(0.21)
    assert row[LATENT_HEADLINE] == pytest.approx((0.21 + 0.5) / 2)
    assert metrics.loc[("counterfact_edit", "fact_lookup", 0), LATENT_HEADLINE] != metrics.loc[("counterfact_edit", "fact_lookup", 0), LATENT_HEADLINE]


def test_headline_mcq_format_prefers_lettered_when_usable():
    usability = pd.DataFrame({"task": ["t", "t"], "format": ["lettered_mcq", "cloze_mcq"], "usable": [True, True]})
    assert headline_mcq_format(usability, "t") == "lettered_mcq"
    assert headline_mcq_format(usability.assign(usable=False), "t") is None


def test_relearning_before_after_takes_the_first_and_last_step():
    ends = relearning_before_after(headline_records(), "lora")
    assert set(ends.when) == {"before the attack", "after the attack"} and len(ends) == 16


def test_attack_fits_read_both_halves_of_each_attack():
    curve = [{"step": 0, "p_true": 0.1, "p_true_learned": 0.2}, {"step": 5, "p_true": 0.3, "p_true_learned": 0.6}]
    flat = [{"step": 0, "p_true": 0.1, "p_true_learned": 0.2}, {"step": 5, "p_true": 0.1, "p_true_learned": 0.22}]
    records = pd.DataFrame({
        "task": ["t", "t"], "localization": ["fact_lookup", "causal_tracing"], "seed": [0, 0],
        "attacks.relearn_lora": [curve, flat],
        # The soft prompt is judged from its random start: a start that already raised P(true) is no fit.
        "attacks.soft_prompt_train_p_true_before": [0.2, 0.2], "attacks.soft_prompt_train_p_true_start": [0.3, 0.5],
        "attacks.soft_prompt_train_p_true_after": [0.9, 0.52], "attacks.soft_prompt_p_true_before": [0.1, 0.1],
        "attacks.soft_prompt_p_true_start": [0.2, 0.4], "attacks.soft_prompt_p_true_after": [0.4, 0.1],
    })
    fits = attack_fits(records).set_index(["attack", "localization"])
    assert fits.loc[("lora", "fact_lookup")][FIT_COLUMNS].tolist() == [0.2, 0.2, 0.6, 0.1, 0.1, 0.3]
    assert fits.loc[("soft_prompt", "causal_tracing")][FIT_COLUMNS].tolist() == [0.2, 0.5, 0.52, 0.1, 0.4, 0.1]
    assert fits.informative.to_dict() == {("lora", "fact_lookup"): True, ("lora", "causal_tracing"): False,
                                         ("soft_prompt", "fact_lookup"): True, ("soft_prompt", "causal_tracing"): False}
    with pytest.raises(ValueError, match="No attack results"):
        attack_fits(records[["task", "localization", "seed"]])


def check(step: int, p_new: float, paraphrase: float) -> dict:
    return {"step": step, "p_true": (1 - p_new) / 2, "p_new": p_new, "shortfall": 0.0, "complete": False,
            "paraphrase_edit_accuracy": paraphrase, "cloze_mcq_edit_accuracy": paraphrase / 2}


STRENGTH_RECORDS = pd.DataFrame({
    "task": ["sports_athlete_edit"] * 4 + ["counterfact_edit"],
    "localization": ["fact_lookup", "fact_lookup", "causal_tracing", "causal_tracing", "fact_lookup"],
    "seed": [0, 1, 0, 1, 0],
    "curves.checks": [
        [check(4, 0.6, 0.5), check(8, 0.95, 0.9)], [check(4, 0.7, 0.7)],
        [check(4, 0.3, 0.2), check(8, 0.65, 0.4), check(12, 0.92, 0.95)], [check(4, 0.62, 0.6)],
        [{"step": 4, "p_true": 0.5, "p_new": 0.3, "shortfall": 0.9, "complete": False}],  # strength curve off
    ],
})


def test_strength_curves_take_the_training_format_from_the_check():
    curves = strength_curves(STRENGTH_RECORDS)
    assert len(curves) == 2 * 7 and set(curves.task) == {"sports_athlete_edit"}  # the run without measures has no rows
    row = curves[(curves.localization == "causal_tracing") & (curves.step == 8) & (curves.measure == "cloze_mcq_edit_accuracy")]
    assert row.edit_accuracy.item() == 0.65 and row.forget_error.item() == pytest.approx(0.825)
    assert row.value.item() == 0.2 and row.format.item() == "cloze_mcq"
    with pytest.raises(ValueError, match="No strength curve"):
        strength_curves(STRENGTH_RECORDS.tail(1))


def test_strength_bins_are_closed_on_the_left_and_the_last_on_both_sides():
    bins = strength_bins(pd.Series([0.0, 0.5, 0.89, 0.9, 1.0, float("nan")]), [0, 0.5, 0.9, 1])
    assert bins.tolist()[:5] == ["[0, 0.5)", "[0.5, 0.9)", "[0.5, 0.9)", "[0.9, 1]", "[0.9, 1]"] and pd.isna(bins.iloc[5])
    with pytest.raises(ValueError, match="increasing"):
        strength_bins(pd.Series([0.5]), [0.5, 0.5])


def test_matched_strength_compares_localizations_within_a_bin():
    matched = matched_strength(strength_curves(STRENGTH_RECORDS), [0, 0.5, 0.9, 1])
    paraphrase = matched[matched.measure == "paraphrase_edit_accuracy"].set_index(["bin", "localization"])
    middle = paraphrase.loc[("[0.5, 0.9)", "causal_tracing")]
    assert middle.value == pytest.approx(0.5) and middle.edit_accuracy == pytest.approx(0.635)
    assert (middle.checks, middle.seeds) == (2, 2)
    assert paraphrase.loc[("[0.5, 0.9)", "fact_lookup")].value == pytest.approx(0.6)
    comparison = matched_comparison(matched).set_index("measure")
    row = comparison.loc["paraphrase_edit_accuracy"]  # bins [0.5, 0.9): .6 vs .5; [0.9, 1]: .9 vs .95
    assert (row.localization, row.bins, row.above) == ("causal_tracing", 2, 1)
    assert row["mean difference"] == pytest.approx((0.1 - 0.05) / 2)
