import numpy as np
import pandas as pd
import pytest

from helpers.counterfact import load_counterfact
from helpers.formats import counterfact_items, measure_formats, sports_items, summarize_formats
from helpers.prompts import LETTERS, SPORTS

ATHLETES = pd.DataFrame({"athlete": ["A One", "B Two", "C Three"], "sport": ["football", "basketball", "baseball"]})


@pytest.mark.parametrize("fmt", ["fact", "paraphrase", "lettered_mcq", "cloze_mcq"])
def test_sports_items_point_at_the_true_sport(fmt):
    for item, sport in zip(sports_items(ATHLETES, fmt, np.random.default_rng(0)), ATHLETES.sport):
        if fmt == "lettered_mcq":
            assert item.candidates == LETTERS[:3]
            assert f"{LETTERS[item.correct]}. {sport}" in item.prompt
        else:
            assert item.candidates[item.correct] == sport


def test_option_order_is_seeded():
    first = [i.prompt for i in sports_items(ATHLETES, "cloze_mcq", np.random.default_rng(3))]
    again = [i.prompt for i in sports_items(ATHLETES, "cloze_mcq", np.random.default_rng(3))]
    orders = {i.prompt for seed in range(10) for i in sports_items(ATHLETES[:1], "cloze_mcq", np.random.default_rng(seed))}
    assert first == again and len(orders) > 1


def test_counterfact_paraphrase_gives_one_item_per_paraphrase():
    facts = load_counterfact().head(5)
    items = counterfact_items(facts, "paraphrase", np.random.default_rng(0))
    assert len(items) == facts.paraphrase_prompts.map(len).sum()
    assert all(i.candidates[i.correct] == facts.target_true.iloc[i.fact_id] for i in items)


def test_summary_averages_per_fact_and_flags_chance_formats():
    scores = pd.DataFrame({
        "format": ["fact"] * 4 + ["lettered_mcq"] * 4,
        "fact_id": [0, 1, 2, 3] * 2,
        "p_correct": [0.9, 0.8, 0.95, 0.85, 0.3, 0.35, 0.32, 0.36],
        "argmax_correct": [True] * 4 + [False] * 4,
        "chance": [1 / 3] * 8,
    })
    summary = summarize_formats(scores).set_index("format")
    assert summary.loc["fact", "p_correct"] == pytest.approx(0.875)
    assert summary.loc["fact", "n_facts"] == 4
    assert summary.loc["fact", "usable"] and not summary.loc["lettered_mcq", "usable"]
    assert summary.loc["fact", "ci_low"] < 0.875 < summary.loc["fact", "ci_high"]


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="Unknown format 'essay'"):
        sports_items(ATHLETES, "essay", np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind must be"):
        measure_formats(tiny_model, ATHLETES, "chess")
    with pytest.raises(ValueError, match="No facts"):
        measure_formats(tiny_model, ATHLETES.head(0), "sports")


def test_measure_formats_on_a_tiny_model(tiny_model):
    scores = measure_formats(tiny_model, ATHLETES, "sports", n_orders=2)
    assert set(scores.format) == {"fact", "paraphrase", "lettered_mcq", "cloze_mcq"}
    assert len(scores) == 3 * (1 + 1 + 2 + 2)
    assert scores.p_correct.between(0, 1).all()
    assert (scores.chance == 1 / len(SPORTS)).all()
