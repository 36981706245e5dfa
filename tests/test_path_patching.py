"""Path patching checked against brute-force activation patching on a tiny 4-layer Gemma3.

The brute force freezes every component downstream of the patched one (or between it and
the receiver) at its corrupted value, one component at a time, which is the definition of
a direct path; for the authors' head variant it freezes the later attention layers only and
lets the MLPs recompute. The fast implementations must give the same logit differences.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers.contrast import contrast_batches, logit_diff
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from helpers.path_patching import (
    head_direct_metrics, head_effects, head_metrics_mlps_recomputed, mlp_effects, mlp_path_metrics, mlps_above,
    select_fact_lookup, top_heads,
)
from tests.conftest import tiny_gemma_config

N_LAYERS = 4


@pytest.fixture(scope="module")
def model4(gemma_tokenizer) -> LoadedModel:
    torch.manual_seed(1)
    hf = Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), N_LAYERS)).eval()
    return LoadedModel("tiny-gemma3-4", hf, gemma_tokenizer, EMBEDDED_ARCHITECTURE_ID)


@pytest.fixture(scope="module")
def batch(model4):
    subjects = ["Michael Jordan", "Tom Brady", "Babe Ruth"]
    prompts = [f"Fact: {s} plays the sport of" for s in subjects]
    batches = contrast_batches(model4, prompts, subjects, ["basketball", "football", "baseball"],
                               [["golf"]] * 3, seed=0)
    assert len(batches) == 1  # the three prompts have the same length
    return batches[0]


def cached(model, tokens, names):
    with torch.inference_mode():
        return model.bridge.run_with_cache(tokens, names_filter=names)[1]


def brute_force_head(model, batch, layer, head, recompute_mlps=False):
    names = [f"blocks.{l}.hook_{k}_out" for l in range(N_LAYERS) for k in ("attn", "mlp")]
    corrupt = cached(model, batch.corrupt, names)
    clean_z = cached(model, batch.clean, [f"blocks.{layer}.attn.hook_z"])[f"blocks.{layer}.attn.hook_z"]

    def patch_head(z, hook):
        z = z.clone()
        z[:, :, head] = clean_z[:, :, head]
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", patch_head)]
    frozen = [f"blocks.{layer}.hook_mlp_out"] + [n for n in names if int(n.split(".")[1]) > layer]
    if recompute_mlps:
        frozen = [n for n in frozen if "attn" in n]
    hooks += [(name, lambda act, hook, name=name: corrupt[name]) for name in frozen]
    with torch.inference_mode():
        return logit_diff(model.bridge.run_with_hooks(batch.corrupt, fwd_hooks=hooks), batch)


def brute_force_mlp(model, batch, mlp, receiver):
    names = [f"blocks.{l}.hook_{k}_out" for l in range(N_LAYERS) for k in ("attn", "mlp")]
    corrupt = cached(model, batch.corrupt, names)
    clean = cached(model, batch.clean, [f"blocks.{mlp}.hook_mlp_out"])
    hooks = [(f"blocks.{mlp}.hook_mlp_out", lambda act, hook: clean[f"blocks.{mlp}.hook_mlp_out"])]
    between = [n for n in names if mlp < int(n.split(".")[1]) < receiver]
    hooks += [(name, lambda act, hook, name=name: corrupt[name]) for name in between]
    with torch.inference_mode():
        return logit_diff(model.bridge.run_with_hooks(batch.corrupt, fwd_hooks=hooks), batch)


def test_head_direct_paths_match_brute_force(model4, batch):
    patched, clean, corrupt = head_direct_metrics(model4, batch)
    assert patched.shape == (N_LAYERS, 2, len(batch))
    assert not torch.allclose(clean, corrupt)
    for layer in range(N_LAYERS):
        for head in range(2):
            torch.testing.assert_close(patched[layer, head], brute_force_head(model4, batch, layer, head), atol=2e-4, rtol=1e-3)


def test_head_paths_with_mlps_recomputed_match_brute_force(model4, batch):
    patched, clean, corrupt = head_metrics_mlps_recomputed(model4, batch)
    assert patched.shape == (N_LAYERS, 2, len(batch))
    torch.testing.assert_close((clean, corrupt), head_direct_metrics(model4, batch)[1:])
    for layer in range(N_LAYERS):
        for head in range(2):
            expected = brute_force_head(model4, batch, layer, head, recompute_mlps=True)
            torch.testing.assert_close(patched[layer, head], expected, atol=2e-4, rtol=1e-3)


def test_recomputed_mlps_change_the_head_effects(model4, batch):
    """Heads below the last layer reach the output through later MLPs too: the variants differ there."""
    frozen, recomputed = head_direct_metrics(model4, batch)[0], head_metrics_mlps_recomputed(model4, batch)[0]
    assert not torch.allclose(frozen[:-1], recomputed[:-1], atol=1e-4)
    with pytest.raises(ValueError, match="head_paths must be one of"):
        head_effects(model4, [batch], head_paths="all")


def test_mlp_paths_into_receiver_match_brute_force(model4, batch):
    receiver = 3
    patched, _, _ = mlp_path_metrics(model4, batch, receiver)
    assert patched.shape == (receiver, len(batch))
    for mlp in range(receiver):
        torch.testing.assert_close(patched[mlp], brute_force_mlp(model4, batch, mlp, receiver), atol=2e-4, rtol=1e-3)


def test_mlp_path_effect_differs_from_total_effect(model4, batch):
    """The path excludes what MLP 0 does through layers 1-2: it is not the total effect."""
    patched, _, _ = mlp_path_metrics(model4, batch, 3)
    clean = cached(model4, batch.clean, ["blocks.0.hook_mlp_out"])["blocks.0.hook_mlp_out"]
    with torch.inference_mode():
        total = logit_diff(model4.bridge.run_with_hooks(
            batch.corrupt, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: clean)]), batch)
    assert not torch.allclose(patched[0], total, atol=1e-4)


def test_selection_rules():
    effects = np.array([[0.0, 0.5], [-0.7, 0.1]])
    assert top_heads(effects, 2) == [(1, 0), (0, 1)]
    assert mlps_above(np.array([0.01, -0.03, 0.2]), 0.02) == [1, 2]
    with pytest.raises(ValueError, match="k must lie in"):
        top_heads(effects, 5)
    with pytest.raises(ValueError, match="receiver_layer must lie in"):
        mlp_path_metrics(SimpleNamespace(n_layers=N_LAYERS), None, 0)


def test_selection_follows_the_paper_rule_for_each_variant(model4, batch):
    selections = select_fact_lookup(model4, [[batch]], top_k_heads=1, mlp_threshold=0.0)
    assert set(selections) == {"frozen", "mlps_recomputed"}
    for paths, selection in selections.items():
        heads = head_effects(model4, [batch], paths)
        assert selection.extraction_heads == top_heads(heads, 1)
        assert selection.receiver_layer == selection.extraction_heads[0][0]
        effects = mlp_effects(model4, [batch], selection.receiver_layer)
        np.testing.assert_allclose(selection.mlp_means, effects)
        assert selection.mlps == mlps_above(effects, 0.0)
    with pytest.raises(ValueError, match="No corruptions"):
        select_fact_lookup(model4, [], top_k_heads=1, mlp_threshold=0.0)
