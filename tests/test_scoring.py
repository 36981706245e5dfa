import numpy as np
import pytest

from helpers.scoring import candidate_probs, first_token_ids, renormalize

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
