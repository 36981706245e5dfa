"""Shared fixtures: a tiny random Gemma3 model (fast) and the embedded model (once per session)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may need the hub

import pytest
import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

import helpers.precision as precision
from helpers.book import load_profile
from helpers.kernels import use_onednn
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel, embedded_model_folder, load_model

# The ci profile's sample of candidates; the ci book scores it first, so tests that use it read the cache.
CI_CANDIDATES = load_profile("ci")["n_candidates"]


@pytest.fixture(autouse=True)
def float32_unless_asked(request, monkeypatch):
    """Unit tests behave alike on every CPU: ``auto`` resolves to float32 and nothing is forced.

    Tests that need bf16 ask for it by name. The notebook tests keep the machine's own choice
    and a forcing ``MECHUNLEARN_PRECISION``, as ``make book`` would.
    """
    if request.node.get_closest_marker("notebooks") is None:
        monkeypatch.delenv(precision.FORCE_ENV, raising=False)
        monkeypatch.setattr(precision, "cpu_flags", lambda *args: frozenset())


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """The real Gemma-3 tokenizer, from the embedded model's cache folder."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_folder())
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_gemma_config(vocab_size: int, n_layers: int = 2, sliding_window: int = 16) -> Gemma3TextConfig:
    """A small Gemma3 (2 layers by default) with the real vocabulary."""
    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        sliding_window=sliding_window, layer_types=["sliding_attention"] * (n_layers - 1) + ["full_attention"],
        architectures=["Gemma3ForCausalLM"],  # TransformerLens picks its adapter by this name
    )


def make_tiny_model(tokenizer, n_layers: int = 2, *, seed: int = 0, name: str = "tiny-gemma3") -> LoadedModel:
    """A randomly initialized Gemma3 of ``n_layers`` in memory, with the real tokenizer (seeded), on oneDNN's
    linear kernels as :func:`~helpers.models.load_model` puts a model on a CPU."""
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_gemma_config(len(tokenizer), n_layers)).eval()
    use_onednn(model)
    return LoadedModel(name, model, tokenizer, EMBEDDED_ARCHITECTURE_ID)


@pytest.fixture(scope="session")
def tiny_model(gemma_tokenizer) -> LoadedModel:
    """A randomly initialized 2-layer Gemma3 in memory, with the real tokenizer (seeded)."""
    return make_tiny_model(gemma_tokenizer)


@pytest.fixture(scope="session")
def embedded_model() -> LoadedModel:
    """The embedded Gemma-3-270M (float32, CPU)."""
    return load_model()
