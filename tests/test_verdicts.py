"""Verdicts follow from the paired interval, never from a typed-in answer."""

import numpy as np
import pandas as pd
import pytest

from helpers.verdicts import (
    CLAIMS,
    UNINFORMATIVE,
    VERDICT_COLOURS,
    Claim,
    claim_named,
    paired_differences,
    styled_verdicts,
    tally,
    verdict,
    verdict_table,
)


def metrics_with(differences: list[float], metric: str = "MCQ edit accuracy", task: str = "t") -> pd.DataFrame:
    """Fact lookup at 0.5 + difference and causal tracing at 0.5, one pair per seed, plus noise shared by the pair."""
    rows = []
    for seed, difference in enumerate(differences):
        shared = 0.1 * np.sin(seed)  # a seed effect common to both localizations cancels in the paired difference
        rows.append({"task": task, "localization": "fact_lookup", "seed": seed, metric: 0.5 + shared + difference,
                     "criterion_reached": True})
        rows.append({"task": task, "localization": "causal_tracing", "seed": seed, metric: 0.5 + shared,
                     "criterion_reached": True})
    return pd.DataFrame(rows)


CLAIM = Claim("format", "FLU is better", "MCQ edit accuracy", True, ("t",), ("causal_tracing",))


@pytest.mark.parametrize(("differences", "expected"), [
    ([0.30, 0.32, 0.31], "reproduced"),
    ([-0.30, -0.32, -0.31], "not reproduced"),
    ([0.30, -0.30, 0.05], "inconclusive"),
    ([0.30], "inconclusive (one seed)"),
])
def test_verdict_from_the_interval(differences, expected):
    table = verdict_table(metrics_with(differences), (CLAIM,))
    assert table.verdict.tolist() == [expected]
    assert table["difference (favouring FLU)"].iloc[0] == pytest.approx(np.mean(differences))


def test_an_incomplete_edit_on_either_side_gives_no_verdict():
    metrics = metrics_with([0.30, 0.32, 0.31])
    metrics.loc[(metrics.localization == "causal_tracing") & (metrics.seed == 1), "criterion_reached"] = False
    row = verdict_table(metrics, (CLAIM,)).iloc[0]
    assert row.verdict == "edit incomplete" and row["complete pairs"] == 2 and np.isnan(row.p)
    assert row.uncorrected == "reproduced"  # the interval alone would have said so


def test_claims_count_as_reproductions_only_on_the_paper_tasks():
    metrics = pd.concat([metrics_with([0.30, 0.32, 0.31], task="t"), metrics_with([0.30, 0.32, 0.31], task="u")])
    table = verdict_table(metrics, (CLAIM,)).set_index("task")
    assert table.loc["t", "test"] == "reproduction" and table.loc["u", "test"] == "new test"
    counts = tally(table.reset_index())
    assert counts.comparisons.tolist() == [1] and counts["both edits complete"].tolist() == [1]
    assert counts.reproduced.tolist() == [1]
    paper = {c.name: c.paper_tasks for c in CLAIMS}
    assert paper["relearning"] == ("sports_athlete_edit",) and "sports_sport_edit" in paper["format"]


def test_holm_correction_can_turn_a_reproduction_inconclusive():
    """Alone, a difference with p ~ .04 is reproduced; with a second, equal comparison in the family, Holm
    doubles the first p-value and keeps the second at that value (non-decreasing): both become inconclusive."""
    claim = Claim("format", "FLU is better", "MCQ edit accuracy", True, ("t",), ("causal_tracing", "random_mlps"))
    first = [0.13, 0.20, 0.27]  # the paired t-test against 0 gives p ~ .04
    metrics = metrics_with(first)
    p_first = verdict_table(metrics, (claim,)).p.iloc[0]
    assert 0.025 < p_first < 0.05 and verdict_table(metrics, (claim,)).verdict.iloc[0] == "reproduced"
    second = metrics[metrics.localization == "causal_tracing"].assign(localization="random_mlps")
    both = verdict_table(pd.concat([metrics, second]), (claim,))
    assert both.p.tolist() == pytest.approx([p_first, p_first])
    assert both["p (Holm)"].tolist() == pytest.approx([2 * p_first, 2 * p_first])
    assert both.verdict.tolist() == ["inconclusive", "inconclusive"] and both.uncorrected.tolist() == ["reproduced"] * 2


def test_lower_is_better_flips_the_sign():
    metrics = metrics_with([0.2, 0.21], metric="share")
    assert paired_differences(metrics, "t", "share", "causal_tracing", higher_is_better=False).tolist() == pytest.approx([-0.2, -0.21])


def test_no_worse_claims_use_the_margin():
    assert verdict(-0.04, 0.02, margin=0.05) == "reproduced"
    assert verdict(-0.04, 0.02) == "inconclusive"
    assert verdict(-0.20, -0.10, margin=0.05) == "not reproduced"


def test_unmeasured_comparisons_are_left_out_and_bad_input_is_refused():
    metrics = metrics_with([0.1, 0.2])
    metrics.loc[metrics.localization == "causal_tracing", "MCQ edit accuracy"] = np.nan
    assert verdict_table(metrics, (CLAIM,)).empty
    with pytest.raises(ValueError, match="lack the columns"):
        verdict_table(metrics.drop(columns="MCQ edit accuracy"), (CLAIM,))
    with pytest.raises(ValueError, match="criterion_reached"):
        verdict_table(metrics.drop(columns="criterion_reached"), (CLAIM,))


def test_the_table_shows_the_parameter_ratio_when_known():
    metrics = metrics_with([0.1, 0.2]).assign(n_parameters=lambda f: f.localization.map({"fact_lookup": 10, "causal_tracing": 25}))
    assert verdict_table(metrics, (CLAIM,))["parameters (x FLU)"].tolist() == [2.5]


def test_claims_by_name_and_the_coloured_table():
    assert claim_named("relearning") is next(c for c in CLAIMS if c.name == "relearning")
    with pytest.raises(ValueError, match="Unknown claim 'speed'"):
        claim_named("speed")
    html = styled_verdicts(verdict_table(metrics_with([0.30, 0.32, 0.31]), (CLAIM,))).to_html()
    assert VERDICT_COLOURS["reproduced"] in html and "statement" not in html


def test_relearning_verdicts_need_informative_attacks_on_both_sides():
    metrics = pd.concat([metrics_with([0.30, 0.32, 0.31], "relearning error"),
                         metrics_with([0.30, 0.32, 0.31])[["MCQ edit accuracy"]]], axis=1)
    claims = (Claim("relearning", "FLU resists", "relearning error", True, ("causal_tracing",)), CLAIM)
    fits = metrics[["task", "localization", "seed"]].assign(attack="lora", informative=True)
    kept = verdict_table(metrics, claims, fits=fits, attack="lora")
    assert kept.verdict.tolist() == ["reproduced", "reproduced"]
    assert kept["attack informative"].iloc[0] == "6/6" and pd.isna(kept["attack informative"].iloc[1])
    fits.loc[(fits.localization == "causal_tracing") & (fits.seed == 1), "informative"] = False
    flagged = verdict_table(metrics, claims, fits=fits, attack="lora")
    assert flagged.verdict.tolist() == [UNINFORMATIVE, "reproduced"] and flagged["attack informative"].iloc[0] == "5/6"
    # Out of Holm's family, like an incomplete edit: no p-value to correct or to count.
    assert kept.p.notna().all() and flagged[["p", "p (Holm)"]].iloc[0].isna().all()
    # No fits of that attack: nothing shows that it worked.
    assert verdict_table(metrics, claims, fits=fits, attack="full").verdict.tolist() == [UNINFORMATIVE, "reproduced"]
    with pytest.raises(ValueError, match="fits=..., attack=..."):
        verdict_table(metrics, claims, fits=fits)


def test_an_uninformative_comparison_leaves_holms_family():
    metrics = pd.concat([metrics_with([0.30, 0.32, 0.31], "relearning error", task) for task in ("t", "u")], ignore_index=True)
    claim = Claim("relearning", "FLU resists", "relearning error", True, ("t", "u"), ("causal_tracing",))
    fits = metrics[["task", "localization", "seed"]].assign(attack="lora", informative=True)
    both = verdict_table(metrics, (claim,), fits=fits, attack="lora").set_index("task")
    assert both.loc["t", "p (Holm)"] == pytest.approx(2 * both.loc["t", "p"])  # two comparisons in the family
    fits.loc[fits.task == "u", "informative"] = False
    one = verdict_table(metrics, (claim,), fits=fits, attack="lora").set_index("task")
    assert one.loc["u", "verdict"] == UNINFORMATIVE and one.loc["t", "p (Holm)"] == pytest.approx(one.loc["t", "p"])


def test_tally_counts_uninformative_attacks():
    table = pd.DataFrame({
        "claim": ["relearning", "relearning"], "test": ["reproduction", "reproduction"],
        "verdict": ["reproduced", UNINFORMATIVE], "complete pairs": [3, 3], "seeds": [3, 3],
    })
    counts = tally(table).iloc[0]
    assert counts.comparisons == 2 and counts[UNINFORMATIVE] == 1
