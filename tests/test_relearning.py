"""Relearning attacks on a tiny Gemma3: the split, what trains, and that the model is left as it was."""

import pandas as pd
import pytest
import torch

from transformers import Gemma3ForCausalLM

import helpers.relearning as relearning
from helpers.finetune import TrainingConfig, restored, retain_chunks, train_localized
from helpers.kernels import OneDNNLinear
from helpers.localization import Component, Localization, named_weights
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from helpers.prompts import SPORTS
from helpers.records import answer_probabilities
from helpers.relearning import (
    ATTACKS, INFORMATIVE_MARGIN, RelearnConfig, attack_fit, is_informative, lora_adapter, relearn, relearning_split,
    split_p_true,
)
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack
from helpers.tasks import counterfact_edit, sports_athlete_edit, sports_sport_edit
from tests.conftest import tiny_gemma_config

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
TEXT = ["The river flows slowly through the green valley towards the distant sea. " * 20]
SMALL = dict(batch_size=4, retain_batch_size=2, retain_positions=4)


def fresh_tiny(tokenizer, initializer_range: float = 0.02) -> LoadedModel:
    """A tiny random Gemma3 of this module's own (seeded)."""
    config = tiny_gemma_config(len(tokenizer))
    config.initializer_range = initializer_range
    torch.manual_seed(0)
    return LoadedModel("tiny-gemma3", Gemma3ForCausalLM(config).eval(), tokenizer, EMBEDDED_ARCHITECTURE_ID)


@pytest.fixture(scope="module")
def bridged_model(gemma_tokenizer) -> LoadedModel:
    """A tiny model wrapped by a TransformerLens bridge (which rewraps its modules in place)."""
    model = fresh_tiny(gemma_tokenizer)
    assert model.bridge is not None
    return model


@pytest.fixture(scope="module")
def lively_model(gemma_tokenizer) -> LoadedModel:
    """A tiny model with larger random weights, whose logits (and so probabilities) can move."""
    return fresh_tiny(gemma_tokenizer, initializer_range=0.1)


def make_setup(model):
    task = sports_athlete_edit(ATHLETES, 6, seed=0, n_maintain=3)
    localization = Localization.build("mlp1", model, [Component("mlp", 1)], "test")
    return model, task, localization, retain_chunks(model, TEXT, 16)


@pytest.fixture()
def setup(tiny_model):
    return make_setup(tiny_model)


def state(model):
    """Weights, module tree and requires_grad flags, to compare bit for bit."""
    weights = {n: p.detach().clone() for n, p in named_weights(model).items()}
    modules = [(n, type(m).__name__, id(m)) for n, m in model.hf_model.named_modules()]
    flags = {n: p.requires_grad for n, p in model.hf_model.named_parameters()}
    return weights, modules, flags, sorted(vars(model.hf_model))


def assert_same(before, after):
    weights, modules, flags, attributes = before
    assert list(weights) == list(after[0]) and all(torch.equal(weights[n], after[0][n]) for n in weights)
    assert modules == after[1] and flags == after[2] and attributes == after[3]


def test_split_is_disjoint_covering_and_seeded(setup):
    _, task, *_ = setup
    learned, held_out = relearning_split(task, seed=1)
    assert not set(learned.subject) & set(held_out.subject)
    assert set(learned.subject) | set(held_out.subject) == set(task.forget_train.subject)
    assert (len(learned), len(held_out)) == (3, 3)
    assert learned.equals(relearning_split(task, seed=1)[0])
    assert not learned.equals(relearning_split(task, seed=2)[0])
    # Sports-Sport-Edit: both forget halves together, re-split; an odd count leaves the extra one held out.
    many = pd.concat([ATHLETES, ATHLETES.assign(athlete=ATHLETES.athlete + " Jr")])
    sport = sports_sport_edit(many, "baseball", seed=0, n_maintain=2)
    learned, held_out = relearning_split(sport, seed=0)
    assert set(learned.subject) | set(held_out.subject) == set(sport.forget_train.subject) | set(sport.forget_eval.subject)
    assert len(learned) + len(held_out) == 8 and not set(learned.subject) & set(held_out.subject)


def test_split_keeps_the_facts_of_one_subject_together():
    facts = pd.DataFrame({
        "subject": ["Paris", "Paris", "Rome", "Oslo"], "prompt": ["{} is in", "{} speaks", "{} is in", "{} is in"],
        "target_true": ["France", "French", "Italy", "Norway"], "target_new": ["Spain", "German", "Peru", "Chile"],
        "mcq_wrong_options": [["a", "b", "c"]] * 4, "paraphrase_prompts": [[]] * 4, "neighborhood_prompts": [[]] * 4,
    })
    task = counterfact_edit(pd.concat([facts, facts.assign(subject=facts.subject + "x")]), 4, seed=3, n_maintain=1)
    for seed in range(5):
        learned, held_out = relearning_split(task, seed)
        assert not set(learned.subject) & set(held_out.subject)
        assert len(learned) + len(held_out) == 4


@pytest.mark.parametrize("model_fixture", ["tiny_model", "bridged_model"])
@pytest.mark.parametrize("attack", ["lora", "full"])
def test_attacks_leave_the_edited_model_bit_identical(request, model_fixture, attack):
    model, task, localization, chunks = make_setup(request.getfixturevalue(model_fixture))
    config = RelearnConfig(steps=4, eval_every=2, learning_rate=1e-2, lora_rank=4, **SMALL)
    with restored(model, localization):
        train_localized(model, localization, task, chunks, TrainingConfig(steps=2, batch_size=4, retain_batch_size=0),
                        seed=0, progress=False)
        edited = state(model)
        curve = relearn(model, task, localization, chunks, config, attack=attack, seed=0, progress=False)
        assert_same(edited, state(model))
    assert list(curve.step) == [0, 2, 4] and set(curve.attack) == {attack}
    assert curve.relearn_error.tolist() == pytest.approx((1 - curve.p_true).tolist())
    assert curve.p_true.iloc[0] != curve.p_true.iloc[-1]  # the attack did change the model meanwhile


def test_lora_adapter_is_active_inside_and_gone_after(setup):
    model, task, *_ = setup
    ids = model.tokenizer(["Fact: hello"], return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model.hf_model(ids).logits
    before = state(model)
    with lora_adapter(model, rank=4, alpha=8, seed=0) as parameters:
        assert {p.requires_grad for p in model.hf_model.parameters() if all(p is not q for q in parameters)} == {False}
        assert len(parameters) == 2 * 7 * model.n_layers  # A and B for q, k, v, o, gate, up, down
        adapter = [m for name, m in model.hf_model.named_modules() if "lora_" in name and isinstance(m, torch.nn.Linear)]
        assert len(adapter) == len(parameters) and all(isinstance(m, OneDNNLinear) for m in adapter)  # on a CPU
        with torch.no_grad():
            assert torch.equal(model.hf_model(ids).logits, plain)  # B starts at zero
            for parameter in parameters:
                parameter.add_(0.1)
            assert not torch.allclose(model.hf_model(ids).logits, plain)
    assert_same(before, state(model))
    with torch.no_grad():
        assert torch.equal(model.hf_model(ids).logits, plain)


def test_relearning_trains_on_the_learned_half_only(setup, monkeypatch):
    model, task, localization, chunks = setup
    learned, held_out = relearning_split(task, seed=0)
    seen = []

    def recording_logits(model, *prompt_lists, **kwargs):
        seen.extend(prompt for prompts in prompt_lists for prompt in prompts)
        return original(model, *prompt_lists, **kwargs)

    original = relearning.joint_answer_logits
    monkeypatch.setattr(relearning, "joint_answer_logits", recording_logits)
    config = RelearnConfig(steps=3, eval_every=3, lora_rank=4, **SMALL)
    relearn(model, task, localization, chunks, config, attack="lora", seed=0, progress=False)
    assert set(seen) == set(learned.prompt) | set(task.maintain_train.prompt)
    assert not set(seen) & set(held_out.prompt)


def test_step_zero_measures_each_half_of_the_unattacked_model(setup):
    model, task, localization, chunks = setup
    learned, held_out = relearning_split(task, seed=0)
    config = RelearnConfig(steps=1, eval_every=1, lora_rank=4, **SMALL)
    first = relearn(model, task, localization, chunks, config, attack="full", seed=0, progress=False).iloc[0]
    own = {name: answer_probabilities(model, half, half.true.tolist(), task.candidates).mean()
           for name, half in (("held_out", held_out), ("learned", learned))}
    assert first.p_true == pytest.approx(own["held_out"], abs=1e-5)
    assert first.relearn_error == pytest.approx(1 - own["held_out"], abs=1e-5)
    assert first.p_true_learned == pytest.approx(own["learned"], abs=1e-5)


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_shared_step_zero_gives_the_curve_each_attack_measures_itself(setup, attack):
    model, task, localization, chunks = setup
    config = RelearnConfig(steps=2, eval_every=1, lora_rank=4, **SMALL)
    before = split_p_true(model, task, seed=0)
    own = relearn(model, task, localization, chunks, config, attack=attack, seed=0, progress=False)
    shared = relearn(model, task, localization, chunks, config, attack=attack, seed=0, progress=False, before=before)
    pd.testing.assert_frame_equal(own, shared, atol=1e-6, rtol=0)
    assert (own.p_true.iloc[0], own.p_true_learned.iloc[0]) == pytest.approx(before, abs=1e-6)


@pytest.mark.parametrize(("attack", "learning_rate"), [("lora", 3e-2), ("full", 1e-1)])
def test_relearning_raises_p_true_on_the_learned_half(lively_model, attack, learning_rate):
    model, task, _, chunks = make_setup(lively_model)
    localization = Localization.build("mlps", model, [Component("mlp", 0), Component("mlp", 1)], "test")
    config = RelearnConfig(steps=10, eval_every=5, learning_rate=learning_rate, lora_rank=8, lora_alpha=16, batch_size=4,
                           retain_batch_size=0)
    curve = relearn(model, task, localization, chunks, config, attack=attack, seed=0, progress=False)
    assert list(curve.step) == [0, 5, 10] and curve.loss.isna().iloc[0]
    assert curve.loss.iloc[-1] < curve.loss.iloc[1]
    assert curve.p_true_learned.iloc[-1] > curve.p_true_learned.iloc[0] + 0.2
    fit = attack_fit(curve)
    assert fit["informative"] is True
    assert (fit["train_p_true_before"], fit["train_p_true_after"]) == (curve.p_true_learned.iloc[0], curve.p_true_learned.iloc[-1])
    assert (fit["p_true_before"], fit["p_true_after"]) == (curve.p_true.iloc[0], curve.p_true.iloc[-1])


@pytest.mark.parametrize("attack", ["lora", "full"])
def test_an_attack_that_cannot_move_is_uninformative(lively_model, attack):
    model, task, localization, chunks = make_setup(lively_model)
    config = RelearnConfig(steps=2, eval_every=2, learning_rate=1e-9, lora_rank=4, batch_size=4, retain_batch_size=0)
    fit = attack_fit(relearn(model, task, localization, chunks, config, attack=attack, seed=0, progress=False))
    assert abs(fit["train_p_true_after"] - fit["train_p_true_before"]) < 1e-3
    assert fit["informative"] is False


def test_the_informative_rule():
    assert is_informative(0.10, 0.10 + INFORMATIVE_MARGIN + 1e-9)
    assert not is_informative(0.10, 0.10 + INFORMATIVE_MARGIN - 1e-3)
    assert not is_informative(0.60, 0.20)  # a fall is no fit
    assert is_informative(0.5, 0.625, margin=0.1) and not is_informative(0.5, 0.59, margin=0.1)
    with pytest.raises(ValueError, match="margin must lie in"):
        is_informative(0.1, 0.9, margin=0)
    with pytest.raises(ValueError, match="train_after=1.5"):
        is_informative(0.1, 1.5)
    with pytest.raises(ValueError, match="train_start=nan"):
        is_informative(float("nan"), 0.5)


def test_bad_inputs(setup):
    model, task, localization, chunks = setup
    with pytest.raises(ValueError, match="steps=0"):
        RelearnConfig(steps=0)
    with pytest.raises(ValueError, match="eval_every=30"):
        RelearnConfig(steps=20, eval_every=30)
    with pytest.raises(ValueError, match="lora_rank=0, precision=fp8"):
        RelearnConfig(lora_rank=0, precision="fp8")
    with pytest.raises(ValueError, match="attack must be one of"):
        relearn(model, task, localization, chunks, RelearnConfig(), attack="prompt", seed=0)
    with pytest.raises(ValueError, match="pass it"):
        relearn(model, task, None, chunks, RelearnConfig(), attack="full", seed=0)
    with pytest.raises(ValueError, match="retain_positions=16"):
        relearn(model, task, localization, chunks[:, :8], RelearnConfig(), attack="lora", seed=0)
    one = type(task)(task.name, task.mode, task.forget_train.head(1), task.forget_eval.head(1), task.maintain_train,
                     task.maintain_eval, task.candidates)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        relearning_split(one, seed=0)


@pytest.mark.model
def test_attacks_on_the_embedded_model_leave_it_identical(embedded_model):
    famous = pd.DataFrame({
        "athlete": ["Michael Jordan", "LeBron James", "Kobe Bryant", "Tom Brady", "Peyton Manning", "Babe Ruth",
                    "Derek Jeter", "Shaquille O'Neal", "Joe Montana", "Barry Bonds"],
        "sport": ["basketball", "basketball", "basketball", "football", "football", "baseball", "baseball",
                  "basketball", "football", "baseball"],
    })
    task = sports_athlete_edit(famous, 4, seed=0, n_maintain=2)
    localization = Localization.build("mlp3", embedded_model, [Component("mlp", 3)], "test")
    chunks = retain_chunks(embedded_model, TEXT, 16)
    before = state(embedded_model)
    curve = relearn(embedded_model, task, localization, chunks,
                    RelearnConfig(steps=1, eval_every=1, lora_rank=8, batch_size=2, retain_batch_size=1, retain_positions=4),
                    attack="lora", seed=0, progress=False)
    soft = soft_prompt_attack(embedded_model, task, SoftPromptConfig(n_vectors=2, steps=1), seed=0, progress=False)
    assert_same(before, state(embedded_model))
    _, held_out = relearning_split(task, seed=0)
    expected = answer_probabilities(embedded_model, held_out, held_out.true.tolist(), task.candidates).mean()
    assert curve.p_true.iloc[0] == pytest.approx(expected) == soft["soft_prompt_p_true_before"]
    assert expected > 0.5  # the model knows these athletes
