"""The knowledge filters on the embedded model, and their per-model cache."""

import pandas as pd
import pytest

import helpers.scoring
from helpers.counterfact import known_facts
from helpers.knowledge import candidate_sample
from helpers.sports import known_athletes

pytestmark = pytest.mark.model


def test_embedded_model_knows_enough_athletes(embedded_model):
    known = known_athletes(embedded_model)
    assert len(known) >= 250
    assert known.sport.value_counts().min() >= 60
    assert (known.p_true >= 0.5).all()


def test_embedded_model_knows_enough_counterfact_facts(embedded_model):
    known = known_facts(embedded_model)
    assert len(known) >= 150
    assert (known.p_true >= 0.5).all()


def test_scores_come_from_the_cache_the_second_time(embedded_model, monkeypatch):
    known_athletes(embedded_model)

    def refuse(*args, **kwargs):
        raise AssertionError("scored again instead of reading the cache")

    monkeypatch.setattr(helpers.scoring, "candidate_probs", refuse)
    monkeypatch.setattr("helpers.sports.candidate_probs", refuse)
    assert len(known_athletes(embedded_model, threshold=0.9)) < len(known_athletes(embedded_model, threshold=0.5))


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
