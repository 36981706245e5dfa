import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info

from helpers.localization import parameter_count
from helpers.probes import (
    FULL_PROMPT,
    NAME_ONLY,
    athlete_residuals,
    fact_lookup_layers,
    fact_lookup_localization,
    fact_lookup_rule,
    last_token_residuals,
    name_only_curve,
    probe_accuracy_by_layer,
    probe_accuracy_figure,
    probe_texts,
    rule_sensitivity,
    sample_per_sport,
    stratified_splits,
)

TEXTS = ["Michael Jordan", "Fact: Tiger Woods plays the sport of golf\nFact: Derek Jeter plays the sport of", "Tom Brady"]
GEMMA_7B_NAME_ONLY = [0.44, 0.48, 0.63, 0.85, 0.97, 0.97, 1.0]
SPORTS = ("basketball", "baseball", "football")


def synthetic_residuals(n_per_sport: int = 30, n_layers: int = 4, informative_from: int = 2, seed: int = 0):
    """Noise at early layers; from ``informative_from`` on, each sport has its own mean."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(SPORTS, n_per_sport)
    features = rng.normal(size=(len(labels), n_layers, 10)).astype(np.float32)
    class_means = 4 * np.eye(3, 10)[[SPORTS.index(s) for s in labels]]
    features[:, informative_from:] += class_means[:, None, :]
    return features, labels


def test_residuals_have_one_row_per_text_and_layer_and_ignore_padding(tiny_model):
    batched = last_token_residuals(tiny_model, TEXTS, batch_size=3, progress=False)
    single = np.concatenate([last_token_residuals(tiny_model, [t], progress=False) for t in TEXTS])
    assert batched.shape == (3, tiny_model.n_layers, 64)
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_residuals_are_the_layer_outputs_before_the_final_norm(tiny_model):
    tokens = tiny_model.tokenizer(TEXTS[0], return_tensors="pt")
    with torch.inference_mode():
        output = tiny_model.hf_model.get_decoder()(**tokens, output_hidden_states=True)
    residuals = torch.from_numpy(last_token_residuals(tiny_model, TEXTS[:1], progress=False))
    torch.testing.assert_close(residuals[0, 0], output.hidden_states[1][0, -1])
    final_norm = tiny_model.hf_model.get_decoder().norm
    with torch.inference_mode():
        torch.testing.assert_close(final_norm(residuals[:, -1]), output.last_hidden_state[:, -1], atol=1e-5, rtol=1e-4)


def test_probe_inputs_are_the_fact_prompt_and_the_name_after_bos(tiny_model):
    texts = probe_texts(["Michael Jordan"])
    assert texts[FULL_PROMPT][0].endswith("Fact: Michael Jordan plays the sport of")
    ids = tiny_model.tokenizer(texts[NAME_ONLY][0])["input_ids"]
    assert ids[0] == tiny_model.tokenizer.bos_token_id
    assert tiny_model.tokenizer.decode(ids[1:]) == "Michael Jordan"
    residuals = athlete_residuals(tiny_model, pd.DataFrame({"athlete": ["Michael Jordan", "Tom Brady"]}), batch_size=2)
    assert set(residuals) == {FULL_PROMPT, NAME_ONLY}
    assert all(r.shape == (2, tiny_model.n_layers, 64) for r in residuals.values())


def test_probes_decode_the_sport_only_where_it_is_encoded():
    features, labels = synthetic_residuals()
    results = probe_accuracy_by_layer({NAME_ONLY: features, FULL_PROMPT: features}, labels, seeds=[0, 1, 2])
    assert list(results.columns) == ["input", "layer", "seed", "accuracy"]
    assert len(results) == 2 * 4 * 3
    curve = name_only_curve(results)
    assert curve[[0, 1]].max() < 0.6 and curve[[2, 3]].min() > 0.9
    # One split per seed, shared by both inputs: identical features give identical accuracies.
    by_input = results.pivot_table(index=["layer", "seed"], columns="input", values="accuracy")
    np.testing.assert_array_equal(by_input[NAME_ONLY], by_input[FULL_PROMPT])


def test_probe_fits_run_on_one_blas_thread_and_the_pools_are_restored(monkeypatch):
    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before, during = blas_threads(), []
    fit = LogisticRegression.fit

    def recording_fit(self, *args, **kwargs):
        during.append(max(blas_threads()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    features, labels = synthetic_residuals()
    probe_accuracy_by_layer({NAME_ONLY: features}, labels, seeds=[0])
    assert during and set(during) == {1}
    assert blas_threads() == before


def test_splits_are_seeded_stratified_and_disjoint():
    _, labels = synthetic_residuals()
    first, again = stratified_splits(labels, seeds=[3], test_fraction=0.3), stratified_splits(labels, seeds=[3], test_fraction=0.3)
    (train, test), (train_again, _) = first[0], again[0]
    np.testing.assert_array_equal(train, train_again)
    assert not set(train) & set(test) and len(test) == 27
    assert pd.Series(labels[test]).value_counts().to_dict() == {s: 9 for s in SPORTS}


def test_probe_input_errors():
    features, labels = synthetic_residuals(n_per_sport=5)
    with pytest.raises(ValueError, match="at least 2 sports"):
        stratified_splits(np.array(["golf"] * 10), seeds=[0], test_fraction=0.3)
    with pytest.raises(ValueError, match="at least 4 athletes"):
        stratified_splits(np.array(["a"] * 10 + ["b"] * 3), seeds=[0], test_fraction=0.3)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_splits(labels, seeds=[0], test_fraction=1.0)
    with pytest.raises(ValueError, match="at least one seed"):
        stratified_splits(labels, seeds=[], test_fraction=0.3)
    with pytest.raises(ValueError, match="distinct"):
        stratified_splits(labels, seeds=[1, 1], test_fraction=0.3)
    with pytest.raises(ValueError, match="shape"):
        probe_accuracy_by_layer({NAME_ONLY: features[:-1]}, labels, seeds=[0])


def test_sample_per_sport_is_seeded_and_checks_its_input():
    athletes = pd.DataFrame({"athlete": [f"a{i}" for i in range(30)], "sport": list(SPORTS) * 10})
    sample = sample_per_sport(athletes, 4, seed=1)
    assert sample.sport.value_counts().to_dict() == {s: 4 for s in SPORTS}
    pd.testing.assert_frame_equal(sample, sample_per_sport(athletes, 4, seed=1))
    assert not sample.equals(sample_per_sport(athletes, 4, seed=2))
    assert len(sample_per_sport(athletes, None, seed=0)) == len(sample_per_sport(athletes, 0, seed=0)) == 30
    with pytest.raises(ValueError, match="empty"):
        sample_per_sport(athletes.iloc[:0], 4, seed=0)
    with pytest.raises(ValueError, match="n_per_sport"):
        sample_per_sport(athletes, -1, seed=0)


def test_rule_on_the_papers_gemma_7b_curve_gives_mlps_2_to_6():
    assert fact_lookup_layers(GEMMA_7B_NAME_ONLY) == [2, 3, 4, 5, 6]


def test_rule_parameters_move_the_band_ends():
    assert fact_lookup_layers(GEMMA_7B_NAME_ONLY, margin=0.1) == [2, 3, 4]  # done once >= 0.9
    assert fact_lookup_layers(GEMMA_7B_NAME_ONLY, rise_fraction=0.5) == [3, 4, 5, 6]  # started once > 0.72
    # The end is searched from the start on, so a large margin cannot end the band before it starts.
    assert fact_lookup_layers([0.4, 0.5, 0.9, 1.0], rise_fraction=0.9, margin=0.5) == [3]


# A curve that climbs twice, like gemma-3-270m's: the band ends where the first climb levels off.
TWO_STEPS = [0.54, 0.56, 0.62, 0.70, 0.75, 0.75, 0.78, 0.77, 0.76, 0.77, 0.78, 0.80, 0.86, 0.85]


def test_band_ends_where_the_first_climb_levels_off():
    assert fact_lookup_layers(TWO_STEPS) == [2, 3, 4, 5, 6]
    assert fact_lookup_layers(TWO_STEPS, patience=1) == [2, 3, 4]  # layer 5 gains nothing
    assert fact_lookup_layers(TWO_STEPS, min_gain=None) == list(range(2, 13))  # only the margin ends it


def test_rule_errors():
    with pytest.raises(ValueError, match="never rises"):
        fact_lookup_layers([0.9, 0.8, 0.9])
    with pytest.raises(ValueError, match="at least 2 layers"):
        fact_lookup_layers([0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        fact_lookup_layers([0.5, 1.5])
    with pytest.raises(ValueError, match="rise_fraction"):
        fact_lookup_layers(GEMMA_7B_NAME_ONLY, rise_fraction=1.0)
    with pytest.raises(ValueError, match="margin"):
        fact_lookup_layers(GEMMA_7B_NAME_ONLY, margin=-0.1)
    with pytest.raises(ValueError, match="patience"):
        fact_lookup_layers(GEMMA_7B_NAME_ONLY, patience=0)


def test_fact_lookup_localization_holds_the_chosen_mlps(tiny_model):
    curve = pd.Series([0.4, 0.9], index=[0, 1])
    localization = fact_lookup_localization(tiny_model, curve, rise_fraction=0.2, margin=0.05)
    assert localization.name == "fact_lookup" and localization.ids == ["mlp.1"]
    assert localization.rule == fact_lookup_rule(rise_fraction=0.2, margin=0.05) and "0.2" in localization.rule
    assert localization.n_parameters == parameter_count(tiny_model, localization.components)
    assert localization.scores == pytest.approx({"mlp.1": 0.5})
    with pytest.raises(ValueError, match="one accuracy per layer"):
        fact_lookup_localization(tiny_model, pd.Series([0.4, 0.6, 0.9]))


def test_figure_has_one_line_per_input():
    features, labels = synthetic_residuals()
    results = probe_accuracy_by_layer({NAME_ONLY: features, FULL_PROMPT: features}, labels, seeds=[0, 1])
    fig = probe_accuracy_figure(results, band=[2, 3], baseline=1 / 3)
    assert sorted(trace.name for trace in fig.data) == sorted([FULL_PROMPT, NAME_ONLY])
    assert all(trace.error_y.array is not None for trace in fig.data)


def test_rule_sensitivity_lists_the_band_per_parameter_pair():
    table = rule_sensitivity(TWO_STEPS, min_gains=[None, 0.02], margins=[0.02, 0.1])
    assert table.loc["off", 0.02] == "2-12" and table.loc[0.02, 0.02] == "2-6" and table.loc["off", 0.1] == "2-6"
    assert table.shape == (2, 2)


def test_right_padding_is_refused(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.tokenizer, "padding_side", "right")
    with pytest.raises(ValueError, match="pad on the left"):
        last_token_residuals(tiny_model, TEXTS, progress=False)
