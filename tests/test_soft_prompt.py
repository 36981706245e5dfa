"""The soft-prompt attack on a tiny Gemma3: the prefixed forward pass, the norm bound, frozen weights."""

import math

import pandas as pd
import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers.finetune import answer_logits
from helpers.localization import named_weights
from helpers.models import LoadedModel
from helpers.prompts import SPORTS, sports_fact_prompt
from helpers.records import answer_probabilities
from helpers.relearning import relearning_split
from helpers.soft_prompt import (
    SoftPromptConfig,
    initial_units,
    mean_embedding_norm,
    prefixed_logits,
    prefixed_p_true,
    soft_prompt_attack,
    train_soft_prompt,
    true_log_probs,
)
from helpers.tasks import sports_athlete_edit, sports_sport_edit
from tests.conftest import tiny_gemma_config
from tests.test_relearning import ATHLETES, fresh_tiny

# Three lengths (left padding), the first longer than the tiny model's sliding window.
PROMPTS = [sports_fact_prompt("Alice Smith-Johnson"), "Fact: Bo plays", "Hello"]


@pytest.fixture()
def task():
    return sports_athlete_edit(ATHLETES, 6, seed=0, n_maintain=3)


def test_an_empty_prefix_gives_the_plain_prompts_logits(tiny_model):
    empty = torch.zeros(0, tiny_model.hf_model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(prefixed_logits(tiny_model, PROMPTS, empty), answer_logits(tiny_model, PROMPTS))


def test_a_prefix_in_a_padded_batch_matches_each_prompt_alone(tiny_model):
    prefix = torch.randn(3, tiny_model.hf_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = prefixed_logits(tiny_model, PROMPTS, prefix)
        alone = torch.cat([prefixed_logits(tiny_model, [p], prefix) for p in PROMPTS])
        # The prefix sits right after BOS: the same as embedding [BOS] + prefix + tokens by hand.
        ids = tiny_model.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
        embeds = tiny_model.hf_model.get_input_embeddings()(ids)
        by_hand = tiny_model.hf_model(inputs_embeds=torch.cat([embeds[:, :1], prefix[None], embeds[:, 1:]], 1)).logits[:, -1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[1:2], by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(alone, answer_logits(tiny_model, PROMPTS).detach())


def test_p_true_follows_the_records_convention(tiny_model, task):
    frame = task.forget_eval
    empty = torch.zeros(0, tiny_model.hf_model.config.hidden_size)
    expected = answer_probabilities(tiny_model, frame, frame.true.tolist(), task.candidates).mean()
    assert prefixed_p_true(tiny_model, frame, task.candidates, empty, batch_size=4) == pytest.approx(expected, rel=1e-5)
    # Over the full vocabulary when there are no candidates (CounterFact).
    full = answer_probabilities(tiny_model, frame, frame.true.tolist(), None).mean()
    assert prefixed_p_true(tiny_model, frame, None, empty) == pytest.approx(full, rel=1e-5)
    # Equal logits: 1/3 over the three sports, 1/vocabulary without candidates.
    logits = torch.zeros(2, len(tiny_model.tokenizer))
    uniform = torch.ones(2)
    torch.testing.assert_close(true_log_probs(tiny_model, logits, ["football", "baseball"], SPORTS), -uniform * math.log(3))
    torch.testing.assert_close(true_log_probs(tiny_model, logits, ["Paris", "baseball"], None), -uniform * math.log(logits.shape[1]))


def test_training_respects_the_norm_bound_and_leaves_the_model_untouched(tiny_model, task):
    weights = {n: p.detach().clone() for n, p in named_weights(tiny_model).items()}
    flags = [p.requires_grad for p in tiny_model.hf_model.parameters()]
    learned, _ = relearning_split(task, seed=0)
    config = SoftPromptConfig(n_vectors=3, max_norm=0.5, steps=5, learning_rate=0.5)
    prefix = train_soft_prompt(tiny_model, learned, task.candidates, config, seed=0, progress=False)
    assert prefix.shape == (3, tiny_model.hf_model.config.hidden_size) and not prefix.requires_grad
    bound = 0.5 * mean_embedding_norm(tiny_model)
    assert prefix.norm(dim=-1).max() <= bound * (1 + 1e-5)
    assert prefix.norm(dim=-1).min() >= bound * 0.99  # a large learning rate pushes every vector to the bound
    assert all(torch.equal(p, weights[n]) for n, p in named_weights(tiny_model).items())
    assert all(p.grad is None for p in tiny_model.hf_model.parameters())
    assert flags == [p.requires_grad for p in tiny_model.hf_model.parameters()]
    assert not tiny_model.hf_model.training


def test_the_mean_embedding_norm_includes_gemmas_scaling(tiny_model):
    weight = tiny_model.hf_model.get_input_embeddings().weight
    expected = weight.detach().norm(dim=-1).mean() * tiny_model.hf_model.config.hidden_size ** 0.5
    assert mean_embedding_norm(tiny_model) == pytest.approx(float(expected), rel=1e-4)


def test_the_kept_embedding_norm_follows_every_change_of_the_matrix(tiny_model):
    weight = tiny_model.hf_model.get_input_embeddings().weight
    original = weight.detach().clone()
    first = mean_embedding_norm(tiny_model)
    try:
        with torch.no_grad():
            weight.mul_(2)  # in place, as an optimizer step
        assert mean_embedding_norm(tiny_model) == pytest.approx(2 * first, rel=1e-5)
        weight.data = original * 3  # a swapped tensor, as mixed-precision training does
        assert mean_embedding_norm(tiny_model) == pytest.approx(3 * first, rel=1e-5)
    finally:
        weight.data = original
    assert mean_embedding_norm(tiny_model) == pytest.approx(first, rel=1e-6)


def test_the_attack_raises_p_true_when_one_sport_is_the_answer(gemma_tokenizer):
    # A universal prefix can favour one answer: with every athlete playing basketball it must
    # raise P(true) on the trained half and on the held-out half.
    model = fresh_tiny(gemma_tokenizer, initializer_range=0.1)  # logits large enough to move
    many = pd.concat([ATHLETES, ATHLETES.assign(athlete=ATHLETES.athlete + " Jr")])
    task = sports_sport_edit(many, "basketball", seed=0, n_maintain=2)
    config = SoftPromptConfig(n_vectors=4, max_norm=1.0, steps=20, learning_rate=0.1)
    result = soft_prompt_attack(model, task, config, seed=0, progress=False)
    _, held_out = relearning_split(task, seed=0)
    before = answer_probabilities(model, held_out, held_out.true.tolist(), task.candidates).mean()
    assert result["soft_prompt_p_true_before"] == pytest.approx(before)
    assert result["soft_prompt_error"] == pytest.approx(1 - result["soft_prompt_p_true_after"])
    assert result["soft_prompt_train_p_true_after"] > result["soft_prompt_train_p_true_before"] + 0.3
    assert result["soft_prompt_p_true_after"] > result["soft_prompt_p_true_before"] + 0.3
    assert result["soft_prompt_informative"] is True
    # The trained half's numbers are those of the plain and the prefixed prompts on that half.
    learned, _ = relearning_split(task, seed=0)
    plain = answer_probabilities(model, learned, learned.true.tolist(), task.candidates).mean()
    assert result["soft_prompt_train_p_true_before"] == pytest.approx(plain)


def test_a_prefix_that_stays_at_its_random_start_is_uninformative(task, gemma_tokenizer):
    model = fresh_tiny(gemma_tokenizer, initializer_range=0.1)
    config = SoftPromptConfig(n_vectors=2, steps=1, learning_rate=1e-6)  # training barely moves the prefix
    result = soft_prompt_attack(model, task, config, seed=0, progress=False)
    assert result["soft_prompt_train_p_true_after"] == pytest.approx(result["soft_prompt_train_p_true_start"], abs=1e-3)
    assert result["soft_prompt_p_true_after"] == pytest.approx(result["soft_prompt_p_true_start"], abs=1e-3)
    assert result["soft_prompt_informative"] is False
    # The start is the seeded random prefix, whatever it does to P(true) by itself.
    start = initial_units(model, config, seed=0) * mean_embedding_norm(model)
    learned, _ = relearning_split(task, seed=0)
    assert prefixed_p_true(model, learned, task.candidates, start) == pytest.approx(result["soft_prompt_train_p_true_start"])


def test_bad_inputs(tiny_model, task):
    with pytest.raises(ValueError, match="n_vectors=0"):
        SoftPromptConfig(n_vectors=0)
    with pytest.raises(ValueError, match="max_norm=0, steps=0"):
        SoftPromptConfig(max_norm=0, steps=0)
    with pytest.raises(ValueError, match="learning_rate=0, batch_size=0"):
        SoftPromptConfig(learning_rate=0, batch_size=0)
    with pytest.raises(ValueError, match="No facts"):
        train_soft_prompt(tiny_model, task.forget_train.head(0), task.candidates, SoftPromptConfig(), seed=0)
    one = type(task)(task.name, task.mode, task.forget_train.head(1), task.forget_eval.head(1), task.maintain_train,
                     task.maintain_eval, task.candidates)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        soft_prompt_attack(tiny_model, one, SoftPromptConfig(), seed=0)


@pytest.mark.parametrize("window", [64, 16])  # 16: shorter than the batch, so the whole padded batch runs
def test_the_shared_part_runs_once_with_the_same_logits_and_gradients(gemma_tokenizer, window, monkeypatch):
    torch.manual_seed(0)
    model = LoadedModel("tiny", Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), sliding_window=window)).eval(),
                        gemma_tokenizer, "test")
    prefixes = []  # the inputs_embeds of every forward pass: one is the shared part alone
    monkeypatch.setattr(model.hf_model.model, "forward", _spy(model.hf_model.model.forward, prefixes))
    prompts = [sports_fact_prompt(name) for name in ("Alice Smith", "Bo", "Chen Wei Long")]
    results = []
    for share in (True, False):
        prefix = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        logits = prefixed_logits(model, prompts, prefix, share_prefix=share)
        logits.log_softmax(-1)[:, 7].sum().backward()
        results.append((logits.detach(), prefix.grad))
    one_row = [length for rows, length in prefixes if rows == 1]  # BOS, the 3 vectors and the one-shot example
    assert (len(one_row) == 1 and one_row[0] > 4) if window == 64 else not one_row, prefixes
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-3)


def _spy(forward, seen: list):
    def spied(*args, **kwargs):
        seen.append(tuple(kwargs["inputs_embeds"].shape[:2]))
        return forward(*args, **kwargs)
    return spied
