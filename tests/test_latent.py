"""Latent probing: probes on synthetic hidden states whose content is known."""

import numpy as np
import pandas as pd
import pytest

from helpers.counterfact import load_counterfact
from helpers.latent import (
    AthleteStates,
    blocks_at_paper_depth,
    decoded_shares,
    fit_layer_probes,
    latent_metrics,
    latent_shares,
    paper_depth_layer,
    probe_training_set,
    prompt_states,
    task_states,
)
from helpers.probes import last_token_residuals
from helpers.prompts import SPORT_ANSWERS, SPORTS
from helpers.tasks import counterfact_edit, sports_athlete_edit, sports_sport_edit

ATHLETES = pd.DataFrame({"athlete": [f"Athlete {i}" for i in range(60)], "sport": [SPORTS[i % 3] for i in range(60)]})
D_MODEL, N_LAYERS = 8, 2


def encode(sports, seed=0):
    """Layer 0: noise; layer 1: a direction per sport answer (plus noise)."""
    rng = np.random.default_rng(seed)
    signal = np.stack([np.eye(D_MODEL)[SPORT_ANSWERS.index(s)] * 5 for s in sports])
    return {0: rng.normal(size=(len(sports), D_MODEL)), 1: signal + rng.normal(scale=0.1, size=(len(sports), D_MODEL))}


def states_of(task, sport_of) -> AthleteStates:
    """Synthetic states of every task athlete, encoding ``sport_of(row)``."""
    rows = pd.concat([task.forget_train, task.forget_eval, task.maintain_train, task.maintain_eval]).drop_duplicates("subject")
    return AthleteStates(tuple(rows.subject), encode([sport_of(r) for r in rows.itertuples()]))


def test_the_papers_probe_depth_on_other_models():
    """Gemma-7B's hidden_states[8] is after 8 of 28 blocks (our layer 7); 18 blocks: after 5 (layer 4)."""
    assert (blocks_at_paper_depth(28), paper_depth_layer(28)) == (8, 7)
    assert (blocks_at_paper_depth(18), paper_depth_layer(18)) == (5, 4)
    assert blocks_at_paper_depth(7) == 2 and blocks_at_paper_depth(1) == 1 and paper_depth_layer(2) == 0
    with pytest.raises(ValueError, match="n_layers"):
        blocks_at_paper_depth(0)


def test_probes_decode_the_sport_the_states_encode():
    labels = [SPORTS[i % 3] for i in range(30)]
    probes = fit_layer_probes(encode(labels), labels, seed=0)
    true, new = ["basketball", "football", "baseball"], ["football", "baseball", "basketball"]
    shares = decoded_shares(probes, encode(true, seed=1), true, new).set_index("layer")
    assert shares.loc[1, "share_true"] == 1.0 and shares.loc[1, "share_new"] == 0.0
    moved = decoded_shares(probes, encode(new, seed=2), true, new).set_index("layer")
    assert moved.loc[1, "share_true"] == 0.0 and moved.loc[1, "share_new"] == 1.0


def test_sports_a_probe_never_saw_are_not_measurable():
    labels = [SPORTS[i % 2] for i in range(20)]  # basketball and baseball only
    probes = fit_layer_probes(encode(labels), labels)
    shares = decoded_shares(probes, encode(["basketball", "football"]), ["basketball", "football"], ["golf", "golf"])
    assert (shares.share_true[shares.layer == 1] == 1.0).all()  # over the basketball player only
    assert shares.share_new.isna().all()
    assert decoded_shares(probes, encode(["football"]), ["football"], None)[["share_true", "share_new"]].isna().all().all()


def test_latent_metrics_of_an_output_only_edit_and_of_a_deep_edit():
    task = sports_athlete_edit(ATHLETES, 6, seed=0, n_maintain=12)
    edited = set(task.forget_eval.subject)
    new_of = dict(zip(task.forget_eval.subject, task.forget_eval.new))
    original = states_of(task, lambda r: r.true)
    deep = states_of(task, lambda r: new_of[r.subject] if r.subject in edited else r.true)
    metrics = latent_metrics(task, original, deep)
    assert metrics["latent_original_true_L1"] == 0.0 and metrics["latent_original_new_L1"] == 1.0
    assert metrics["latent_edited_true_L1"] == 0.0 and metrics["latent_edited_new_L1"] == 1.0
    assert set(metrics) == {f"latent_{p}_{a}_{s}" for p in ("original", "edited") for a in ("true", "new") for s in ("L0", "L1", "mean")}
    assert metrics["latent_edited_new_mean"] == pytest.approx((metrics["latent_edited_new_L0"] + 1.0) / 2)
    shallow = latent_metrics(task, original, original)  # the edit left the hidden states alone
    assert shallow["latent_original_true_L1"] == 1.0 and shallow["latent_edited_new_L1"] == 0.0


def test_sport_edit_probes_and_golf():
    task = sports_sport_edit(ATHLETES, "baseball", seed=0, n_maintain=15)
    assert set(probe_training_set(task, "original").subject) >= set(task.forget_train.subject)
    assert not set(probe_training_set(task, "edited").subject) & set(task.forget_train.subject)
    original = states_of(task, lambda r: r.true)
    shares = latent_shares(task, original, original).set_index(["probe", "layer"])  # hidden states left alone
    assert shares.share_new.isna().all()  # no probe ever saw a golfer
    assert shares.loc[("original", 1), "share_true"] == 1.0  # the baseball players are still read as such
    assert shares.loc["edited", "share_true"].isna().all()  # the maintained athletes play no baseball


def test_states_of_a_real_model(tiny_model):
    task = sports_athlete_edit(ATHLETES.head(12), 3, seed=0, n_maintain=3)
    states = task_states(tiny_model, task, layers=[1])
    assert len(states.subjects) == 9 and set(states.states) == {1} and states.states[1].shape == (9, 64)
    prompts = task.maintain_eval.prompt.tolist()
    np.testing.assert_allclose(
        states.of(task.maintain_eval.subject.tolist())[1], last_token_residuals(tiny_model, prompts, progress=False)[:, 1], atol=1e-5
    )
    assert set(prompt_states(tiny_model, prompts)) == {0, 1}


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_layer_probes(encode(["golf"] * 4), ["golf"] * 4)
    with pytest.raises(ValueError, match="shape"):
        fit_layer_probes(encode(SPORTS), list(SPORTS) * 2)
    probes = fit_layer_probes(encode(SPORTS * 4), list(SPORTS) * 4)
    with pytest.raises(ValueError, match="one true and one new"):
        decoded_shares(probes, encode(SPORTS), list(SPORTS), ["golf"])
    with pytest.raises(ValueError, match="No states for the probed layers"):
        decoded_shares(probes, {0: encode(SPORTS)[0]}, list(SPORTS))
    with pytest.raises(ValueError, match="No hidden states for the athletes"):
        AthleteStates(("a",), {0: np.zeros((1, 2))}).of(["b"])
    task = sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)
    with pytest.raises(ValueError, match="variant must be"):
        probe_training_set(task, "future")
    with pytest.raises(ValueError, match="Layers \\[5\\] do not exist"):
        prompt_states(tiny_model, ["x"], layers=[5])
    with pytest.raises(ValueError, match="sports tasks only"):
        task_states(tiny_model, counterfact_edit(load_counterfact().head(20), 2, seed=0, n_maintain=2))
