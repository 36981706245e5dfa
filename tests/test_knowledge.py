"""The knowledge filters on the embedded model, and their per-model cache."""

import pandas as pd
import pytest

import helpers.scoring
from helpers.counterfact import known_facts, load_counterfact
from helpers.knowledge import candidate_sample
from helpers.sports import known_athletes, load_sports
from tests.conftest import CI_CANDIDATES

pytestmark = pytest.mark.model


# Chapter 00 of the cpu book scores every candidate and shows how many are known (~35% of athletes).


def test_embedded_model_knows_enough_athletes(embedded_model):
    known = known_athletes(embedded_model, candidate_sample(load_sports(), CI_CANDIDATES))
    assert len(known) >= CI_CANDIDATES // 4  # 140 of 400 today
    assert known.sport.value_counts().min() >= CI_CANDIDATES // 16  # every sport: 42 or more today
    assert (known.p_true >= 0.5).all()


def test_embedded_model_knows_enough_counterfact_facts(embedded_model):
    known = known_facts(embedded_model, candidate_sample(load_counterfact(), CI_CANDIDATES))
    assert len(known) >= CI_CANDIDATES // 5  # 116 of 400 today
    assert (known.p_true >= 0.5).all()


def test_scores_come_from_the_cache_the_second_time(embedded_model, monkeypatch):
    sample = candidate_sample(load_sports(), CI_CANDIDATES)
    known_athletes(embedded_model, sample)

    def refuse(*args, **kwargs):
        raise AssertionError("scored again instead of reading the cache")

    monkeypatch.setattr(helpers.scoring, "candidate_probs", refuse)
    monkeypatch.setattr("helpers.sports.candidate_probs", refuse)
    assert len(known_athletes(embedded_model, sample, threshold=0.9)) < len(known_athletes(embedded_model, sample, threshold=0.5))


def test_threshold_out_of_range(embedded_model):
    with pytest.raises(ValueError, match="threshold must lie in"):
        known_athletes(embedded_model, threshold=1.5)


def test_candidate_sample_is_seeded_ordered_and_optional():
    frame = pd.DataFrame({"athlete": [f"A{i}" for i in range(50)]})
    sample = candidate_sample(frame, 10)
    assert len(sample) == 10 and sample.index.is_monotonic_increasing
    pd.testing.assert_frame_equal(sample, candidate_sample(frame, 10))
    assert not sample.equals(candidate_sample(frame, 10, seed=1))
    assert candidate_sample(frame, None) is frame and candidate_sample(frame, 0) is frame and candidate_sample(frame, 99) is frame
    with pytest.raises(ValueError, match="must be positive"):
        candidate_sample(frame, -3)
