import copy
from dataclasses import replace

import numpy as np
import pytest

import torch

from helpers.prompts import sports_fact_prompt
import helpers.scoring as scoring
from helpers import packing
from helpers.kernels import OneDNNLinear
from helpers.models import LoadedModel
from helpers.scoring import candidate_probs, first_token_ids, last_token_logits, renormalize
from tests.conftest import tiny_gemma_config
from transformers import Gemma3ForCausalLM

PROMPTS = ["Fact: Tiger Woods plays the sport of", "Hello", "The official language of France is the language called"]
ANSWERS = ["basketball", "baseball", "golf"]


def test_batched_left_padding_matches_one_prompt_at_a_time(tiny_model):
    batched = candidate_probs(tiny_model, PROMPTS, ANSWERS, batch_size=3, progress=False)
    single = np.concatenate([candidate_probs(tiny_model, [p], ANSWERS, progress=False) for p in PROMPTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (3, 3)
    assert np.all(batched > 0) and np.all(batched.sum(axis=1) <= 1 + 1e-6)


def test_candidates_per_prompt_match_shared_candidates(tiny_model):
    shared = candidate_probs(tiny_model, PROMPTS, ANSWERS, progress=False)
    per_prompt = candidate_probs(tiny_model, PROMPTS, [ANSWERS[::-1]] * 3, progress=False)
    np.testing.assert_allclose(shared, per_prompt[:, ::-1], atol=1e-6)


def test_probability_is_the_softmax_of_the_full_vocabulary(tiny_model):
    import torch

    tokens = tiny_model.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.inference_mode():
        expected = tiny_model.hf_model(**tokens).logits[0, -1].softmax(-1)
    ids = first_token_ids(tiny_model.tokenizer, ANSWERS)
    got = candidate_probs(tiny_model, PROMPTS[:1], ANSWERS, progress=False)[0]
    np.testing.assert_allclose(got, expected[ids].numpy(), rtol=1e-4)


def test_renormalize_rows_sum_to_one():
    np.testing.assert_allclose(renormalize(np.array([[1.0, 3.0], [2.0, 2.0]])), [[0.25, 0.75], [0.5, 0.5]])


def test_bad_inputs(tiny_model):
    with pytest.raises(ValueError, match="No prompts"):
        candidate_probs(tiny_model, [], ANSWERS)
    with pytest.raises(ValueError, match="share a first token"):
        candidate_probs(tiny_model, PROMPTS, ["golf", "golf course"], progress=False)
    with pytest.raises(ValueError, match="same number"):
        candidate_probs(tiny_model, PROMPTS[:2], [["a", "b"], ["a"]], progress=False)
    with pytest.raises(ValueError, match="empty"):
        first_token_ids(tiny_model.tokenizer, [" "])


@pytest.mark.parametrize("window", [64, 16])  # 16: shorter than the batch, so the plain batch is used
@pytest.mark.parametrize("path", ["packed_last_hidden", "_hidden_after_shared_prefix"])
def test_shared_prefix_gives_the_same_logits_and_gradients(gemma_tokenizer, window, path, monkeypatch):
    """Packed (in packs of at most 30 tokens: several packs) or on the prefix's cache, against the plain batch."""
    torch.manual_seed(0)
    model = LoadedModel("tiny", Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), sliding_window=window)).eval(),
                        gemma_tokenizer, "test")
    calls, groups = [], []
    original = getattr(scoring, path)
    monkeypatch.setattr(scoring, path, lambda *a: calls.append(1) or original(*a))
    split = packing.pack_groups
    monkeypatch.setattr(packing, "pack_groups", lambda *a: groups.append(split(*a, max_tokens=30)) or groups[-1])
    prompts = [sports_fact_prompt(name) for name in ("Alice Smith", "Bo", "Chen Wei Long", "Dmitri", "Eve", "Farid Al Amin")]
    weight = model.hf_model.model.layers[0].mlp.down_proj.weight
    results = []
    for share in (True, False):
        weight.requires_grad_(True)
        weight.grad = None
        logits = last_token_logits(model, prompts, share_prefix=share, packed=path == "packed_last_hidden").float()
        logits.log_softmax(-1)[:, 7].sum().backward()
        results.append((logits.detach(), weight.grad.clone()))
    assert len(calls) == (1 if window == 64 else 0)
    if calls and path == "packed_last_hidden":
        assert len(groups[0]) > 1
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-3)


def test_nan_logits_stop_the_run(tiny_model):
    broken = replace(tiny_model, hf_model=copy.deepcopy(tiny_model.hf_model))
    with torch.no_grad():
        broken.hf_model.get_decoder().layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="Model 'tiny-gemma3' gave NaN logits for 2 of 2 prompts"):
        candidate_probs(broken, ["Fact: A plays", "Fact: B plays"], ["basketball", "golf"], progress=False)


@pytest.mark.parametrize("rows", [1, 5, 48])
def test_vocab_blocked_unembedding_matches_the_plain_product(rows, monkeypatch):
    """Logits and both gradients equal ``F.linear``'s, with a vocabulary that does not divide into whole blocks."""
    monkeypatch.setattr(scoring, "VOCAB_BLOCK", 64)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 32, generator=generator, requires_grad=True)
    hidden = torch.randn(rows, 32, generator=generator, requires_grad=True)
    target = torch.randn(rows, 1000, generator=generator)
    blocked = scoring.VocabBlockedLinear.apply(hidden, weight)
    plain = torch.nn.functional.linear(hidden, weight)
    torch.testing.assert_close(blocked, plain, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad((out * target).sum(), (hidden, weight)) for out in (blocked, plain)]
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-5)


def test_unembed_takes_the_blocked_path_only_for_float32_on_a_cpu_on_torch_kernels(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(scoring.VocabBlockedLinear, "apply", lambda *args: calls.append(1) or torch.nn.functional.linear(*args))
    hidden = torch.randn(3, tiny_model.hf_model.config.hidden_size)
    head = tiny_model.hf_model.get_output_embeddings()
    assert isinstance(head, OneDNNLinear)
    scoring.unembed(tiny_model, hidden)
    assert calls == []  # oneDNN's single product is faster than the blocked one
    monkeypatch.setattr(head, "__class__", torch.nn.Linear)  # as with MECHUNLEARN_LINEAR=torch
    reference = scoring.unembed(tiny_model, hidden, blocked=False)
    torch.testing.assert_close(scoring.unembed(tiny_model, hidden), reference)
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scoring.unembed(tiny_model, hidden)
    assert calls == [1]  # under autocast the head module runs


def test_unembed_of_many_rows_calls_the_head_module(tiny_model, monkeypatch):
    monkeypatch.setattr(scoring.VocabBlockedLinear, "apply", lambda *args: pytest.fail("blocked path taken"))
    hidden = torch.randn(scoring.MAX_BLOCKED_ROWS + 1, tiny_model.hf_model.config.hidden_size)
    assert scoring.unembed(tiny_model, hidden).shape[0] == scoring.MAX_BLOCKED_ROWS + 1


@pytest.mark.parametrize("cap", [None, 3.0])
def test_next_token_loss_is_the_cross_entropy_of_the_full_logits(tiny_model, monkeypatch, cap):
    """Summed over vocabulary blocks that do not divide the vocabulary, with targets in many blocks (the first and
    the last included), with and without the logit soft-capping of Gemma-2."""
    monkeypatch.setattr(scoring, "LOSS_VOCAB_BLOCK", 4099)
    monkeypatch.setattr(tiny_model.hf_model.config, "final_logit_softcapping", cap, raising=False)
    vocab = tiny_model.hf_model.get_output_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, tiny_model.hf_model.config.hidden_size, generator=generator)
    targets = torch.cat([torch.tensor([0, vocab - 1]), torch.randint(vocab, (22,), generator=generator)])
    full = torch.nn.functional.cross_entropy(scoring.unembed(tiny_model, hidden, blocked=False), targets, reduction="sum")
    torch.testing.assert_close(scoring.next_token_loss(tiny_model, hidden, targets), full, rtol=1e-5, atol=1e-4)
