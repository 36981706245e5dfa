"""Packed batches: the layout, the mask, the split into packs, and the hidden states of a tiny Gemma3."""

import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers import packing
from helpers.kernels import use_onednn
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from helpers.packing import PREFIX, attention_mask, pack, pack_groups
from helpers.prompts import sports_fact_prompt
from helpers.scoring import last_token_hidden, packed_last_hidden, packs, shared_prefix_length
from tests.conftest import tiny_gemma_config

IDS = [[2, 7, 8, 5, 6], [2, 7, 8, 9], [2, 7, 8, 3, 4, 1]]  # three sequences sharing their first three tokens


def test_the_prefix_once_then_each_rest_at_its_own_positions():
    packed = pack(IDS, 3)
    assert packed.tokens == [2, 7, 8, 5, 6, 9, 3, 4, 1]
    assert packed.positions == [0, 1, 2, 3, 4, 3, 3, 4, 5]
    assert packed.segments == [PREFIX] * 3 + [0, 0, 1, 2, 2, 2]
    assert packed.ends == [4, 5, 8]
    assert [packed.tokens[end] for end in packed.ends] == [seq[-1] for seq in IDS]


def test_each_token_attends_to_the_prefix_and_its_own_earlier_tokens_only():
    packed = pack(IDS, 3)
    mask = attention_mask(packed, torch.float32)
    assert mask.shape == (1, 1, 9, 9)
    allowed = (mask[0, 0] == 0).nonzero().tolist()
    for query in range(len(packed)):
        keys = [key for q, key in allowed if q == query]
        # what the token sees in its own sequence: the prefix, then its own tokens up to itself
        own = [k for k in range(len(packed)) if packed.segments[k] == packed.segments[query] and k <= query]
        expected = sorted(set(range(3)) & set(range(query + 1)) | set(own))
        assert keys == expected
        assert [packed.positions[k] for k in keys] == list(range(packed.positions[query] + 1))
    assert mask.min() == torch.finfo(torch.float32).min


def test_packs_hold_at_most_the_limit_and_keep_the_order():
    ids = [[1, 2] + [3] * n for n in (4, 5, 1, 9, 2, 2)]
    groups = pack_groups(ids, 2, max_tokens=10)
    assert [i for group in groups for i in group] == list(range(6))
    for group in groups:
        assert len(group) == 1 or 2 + sum(len(ids[i]) - 2 for i in group) <= 10
    assert groups == [[0], [1, 2], [3], [4, 5]]  # 4 + 5 would be 11 tokens with the prefix; 9 alone is 11 anyway


@pytest.mark.parametrize("bad", [[], [[2, 7, 8]], [[2, 7, 8, 1], [2, 9, 8, 1]]])
def test_sequences_that_cannot_be_packed_are_refused(bad):
    with pytest.raises(ValueError, match="No sequences|same 3 tokens"):
        pack(bad, 3)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_packed_states_equal_each_prompt_run_alone(gemma_tokenizer, monkeypatch, shared_prefix, attention):
    """Packed sequences, several of them, against every prompt in a forward pass of its own; prompts without a
    shared prefix pack too (each with its own BOS), though the book runs them as a padded batch."""
    torch.manual_seed(0)
    config = tiny_gemma_config(len(gemma_tokenizer), n_layers=3, sliding_window=64)
    config._attn_implementation = attention
    model = LoadedModel("tiny", Gemma3ForCausalLM(config).eval(), gemma_tokenizer, EMBEDDED_ARCHITECTURE_ID)
    use_onednn(model.hf_model)
    monkeypatch.setattr(packing, "PACK_TOKENS", 24)
    names = ("Alice Smith", "Bo", "Chen Wei Long", "Dmitri")
    prompts = [sports_fact_prompt(name) if shared_prefix else f"{name} plays which sport?" for name in names]
    ids = [model.tokenizer(prompt)["input_ids"] for prompt in prompts]
    shared = shared_prefix_length(model, ids)
    assert bool(shared) == shared_prefix and packs(model)
    with torch.no_grad():
        packed = packed_last_hidden(model, ids, shared)
        alone = torch.cat([last_token_hidden(model, [prompt]) for prompt in prompts])
    assert len(pack_groups(ids, shared)) > 1
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)
