"""Output tracing on a tiny random Gemma3: known answers for causal tracing and attribution patching."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM

from helpers.contrast import contrast_batches, logit_diff
from helpers.localization import Component, Localization, parameter_count
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from helpers.tracing import (
    CATEGORIES,
    EMBED_HOOK,
    PatchingScores,
    activation_patching,
    attribution_patching,
    budget_matched_pair,
    category_masks,
    causal_trace,
    comparison_table,
    control_localizations,
    metric_gradients,
    output_hook,
    run_patched,
    trace_batch,
    z_hook,
)
from tests.conftest import tiny_gemma_config

SUBJECTS = ["Michael Jordan", "Tom Brady", "Babe Ruth", "Serena Williams", "Peyton Manning", "Lionel Messi"]


def tiny_traced_model(gemma_tokenizer) -> LoadedModel:
    """A tiny random Gemma3 (seeded), its bridge not built yet.

    Its queries are zero, so every position attends uniformly to the ones before it and the
    subject reaches the last position.
    """
    config = tiny_gemma_config(len(gemma_tokenizer))
    config.initializer_range = 0.1
    torch.manual_seed(0)
    hf_model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in hf_model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    return LoadedModel("tiny-gemma3-traced", hf_model, gemma_tokenizer, EMBEDDED_ARCHITECTURE_ID)


@pytest.fixture(scope="module")
def traced_model(gemma_tokenizer) -> LoadedModel:
    """:func:`tiny_traced_model` of its own, bridge built (building it rewraps the modules in place)."""
    model = tiny_traced_model(gemma_tokenizer)
    assert model.bridge is not None
    return model


@pytest.fixture(scope="module")
def batches(traced_model):
    """Short prompts whose 'true answer' is the tiny model's own top token (so noise lowers it)."""
    prompts = [f"{s} plays the sport of" for s in SUBJECTS]
    raw = contrast_batches(traced_model, prompts, SUBJECTS, ["golf"] * 6, [["tennis"]] * 6, seed=0, batch_size=4)
    with torch.no_grad():
        tops = [run_patched(traced_model, b.clean)[0].topk(3).indices for b in raw]
    return [replace(b, answer=top[:, 0], foils=top[:, 1:]) for b, top in zip(raw, tops)]


def test_category_masks_follow_rome():
    subject = torch.zeros(3, 8, dtype=torch.bool)
    subject[0, 2:5] = True  # three subject tokens, three tokens after
    subject[1, 3] = True  # one subject token: first and last at once, no middle
    subject[2, 5:7] = True  # subject ends just before the last token: no further tokens
    masks = category_masks(subject)
    assert masks.shape == (3, len(CATEGORIES), 8)
    positions = [[m.nonzero().flatten().tolist() for m in row] for row in masks]
    assert positions[0] == [[2], [3], [4], [5], [6], [7]]
    assert positions[1] == [[3], [], [3], [4], [5, 6], [7]]
    assert positions[2] == [[5], [], [6], [7], [], [7]]


def test_restoring_every_output_everywhere_gives_the_clean_run(traced_model, batches):
    batch = batches[0]
    names = [output_hook(kind, layer) for kind in ("mlp", "attn") for layer in range(traced_model.n_layers)]
    everywhere = torch.ones_like(batch.subject)
    with torch.inference_mode():
        clean_logits, clean = run_patched(traced_model, batch.clean, record=[EMBED_HOOK, *names])
        noised = {EMBED_HOOK: (batch.subject, clean[EMBED_HOOK] + 3.0 * torch.randn_like(clean[EMBED_HOOK]))}
        noised_logits, _ = run_patched(traced_model, batch.clean, noised)
        restored_logits, _ = run_patched(traced_model, batch.clean, noised | {n: (everywhere, clean[n]) for n in names})
    assert not torch.allclose(noised_logits, clean_logits, atol=1e-3)
    torch.testing.assert_close(restored_logits, clean_logits, atol=1e-4, rtol=1e-4)


def test_zero_noise_changes_nothing(traced_model, batches):
    batch = batches[0]
    zero = torch.zeros(*batch.clean.shape, traced_model.hf_model.config.hidden_size)
    clean, noised, restored = trace_batch(traced_model, batch, zero)
    torch.testing.assert_close(noised, clean)
    torch.testing.assert_close(restored, clean[:, None, None, None].expand_as(restored))


def test_causal_trace_known_answers(traced_model, batches):
    trace = causal_trace(traced_model, batches, noise_scale=3.0, seed=0, progress=False)
    assert trace.mlp.shape == trace.attn.shape == (traced_model.n_layers, len(CATEGORIES))
    assert trace.p_clean > trace.p_noised and trace.n_prompts == len(SUBJECTS)
    # The last layer's output at earlier positions is read by no later layer: no effect at all.
    np.testing.assert_allclose(trace.mlp[-1, :-1], 0.0, atol=1e-5)
    np.testing.assert_allclose(trace.attn[-1, :-1], 0.0, atol=1e-5)
    assert np.abs(trace.attn[:, -1]).max() > 0.05  # restoring attention at the last token does something
    scores = trace.component_scores()
    assert scores[Component("mlp", 0)] == pytest.approx(np.nanmax(trace.mlp[0]))
    assert len(scores) == 2 * traced_model.n_layers


def test_causal_trace_is_seeded(traced_model, batches):
    first, again, other = (causal_trace(traced_model, batches, seed=s, progress=False) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.mlp, again.mlp)
    assert not np.allclose(first.mlp, other.mlp)


def test_bf16_causal_trace_stays_close_to_float32(traced_model, batches):
    exact = causal_trace(traced_model, batches, seed=0, progress=False)
    fast = causal_trace(traced_model, batches, seed=0, precision="bfloat16", progress=False)
    assert not np.array_equal(exact.mlp, fast.mlp)  # bf16 products really ran
    assert (exact.precision, fast.precision) == ("float32", "bfloat16")  # auto: float32 in the unit tests
    assert fast.settings()["precision"] == "bfloat16"
    np.testing.assert_allclose(fast.mlp, exact.mlp, atol=0.03)
    np.testing.assert_allclose(fast.attn, exact.attn, atol=0.03)
    assert all(p.dtype == torch.float32 for p in traced_model.hf_model.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        causal_trace(traced_model, batches, precision="int8", progress=False)


def test_a_bf16_trace_on_a_model_without_its_bridge_leaves_float32_weights(gemma_tokenizer, traced_model, batches):
    """The bridge is built on first use; a bf16 trace must not build it on the bf16 copies."""
    fresh = tiny_traced_model(gemma_tokenizer)
    assert not fresh.bridge_built
    fast = causal_trace(fresh, batches, seed=0, precision="bfloat16", progress=False)
    np.testing.assert_allclose(fast.mlp, causal_trace(traced_model, batches, seed=0, progress=False).mlp, atol=0.03)
    exact = causal_trace(fresh, batches, seed=0, progress=False)  # float32 products: no bf16 weight left behind
    np.testing.assert_allclose(exact.mlp, causal_trace(traced_model, batches, seed=0, progress=False).mlp, atol=1e-5)


def test_attribution_is_exact_to_first_order(traced_model, batches):
    """A tiny change of one MLP's or one head's activation: the estimate must equal the exact change."""
    batch = batches[0]
    metric, clean, grads = metric_gradients(traced_model, batch)
    generator = torch.Generator().manual_seed(0)
    for name, head in ((output_hook("mlp", 0), None), (z_hook(0), 1), (z_hook(1), 0)):
        delta = 1e-3 * torch.randn(clean[name].shape, generator=generator)
        if head is not None:
            delta[..., [h for h in range(delta.shape[2]) if h != head], :] = 0
        patch = {name: (torch.ones(clean[name].shape[:-1], dtype=torch.bool), clean[name] + delta)}
        with torch.inference_mode():
            exact = logit_diff(run_patched(traced_model, batch.clean, patch)[0], batch) - metric
        estimate = (delta * grads[name]).sum(dim=tuple(range(1, delta.ndim)))
        assert exact.abs().max() > 1e-3  # well above float32 rounding
        torch.testing.assert_close(estimate, exact, rtol=0.02, atol=2e-5)


def test_attribution_tracks_exact_patching(traced_model, batches):
    estimated = attribution_patching(traced_model, batches, progress=False)
    exact = activation_patching(traced_model, batches, progress=False)
    assert estimated.heads.shape == exact.heads.shape == (traced_model.n_layers, 2)
    assert np.corrcoef(estimated.flat(), exact.flat())[0, 1] > 0.5


def test_scores_sum_heads_per_attention_layer():
    scores = PatchingScores(heads=np.array([[1.0, -2.0], [3.0, 4.0]]), mlps=np.array([0.5, -0.1]), n_prompts=1)
    assert scores.component_scores() == {
        Component("attn", 0): -1.0, Component("attn", 1): 7.0, Component("mlp", 0): 0.5, Component("mlp", 1): -0.1,
    }


def test_budget_matched_localizations_stay_within_one_component(tiny_model):
    patching = PatchingScores(heads=np.array([[0.9, 0.1], [0.0, 0.2]]), mlps=np.array([0.3, -0.8]), n_prompts=1)
    scores = patching.component_scores()
    largest = max(parameter_count(tiny_model, [c]) for c in scores)
    budget = parameter_count(tiny_model, [Component("mlp", 0)]) + 1
    full, mlps = budget_matched_pair("attribution_patching", tiny_model, scores, budget, "attribution patching")
    assert (full.name, mlps.name) == ("attribution_patching", "attribution_patching_mlps")
    assert full.components[0] in (Component("attn", 0), Component("mlp", 1))
    for localization in (full, mlps):
        assert budget <= localization.n_parameters < budget + largest
    assert all(c.kind == "mlp" for c in mlps.components)


def test_controls_match_the_fact_lookup_budget(tiny_model):
    fact_lookup = Localization.build("fact_lookup", tiny_model, [Component("mlp", 1)], "test", {})
    controls = {c.name: c for c in control_localizations(tiny_model, fact_lookup, seed=0)}
    assert list(controls) == ["random_matrices", "random_mlps", "all_mlps", "nonlocalized"]
    assert len(controls["random_mlps"].components) == 1
    assert len(controls["all_mlps"].components) == tiny_model.n_layers
    assert len(controls["nonlocalized"].components) == 2 * tiny_model.n_layers
    assert controls["random_matrices"].n_parameters >= fact_lookup.n_parameters
    matrices = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {c.matrix for c in controls["random_matrices"].components} <= matrices
    table = comparison_table([fact_lookup, *controls.values()], fact_lookup, tiny_model).set_index("localization")
    assert table.loc["fact_lookup", ["share of budget", "share inside the fact-lookup set"]].tolist() == [1.0, 1.0]
    assert table.loc["all_mlps", "share inside the fact-lookup set"] == pytest.approx(1 / tiny_model.n_layers)


def test_bad_inputs(traced_model, batches):
    for scale in (0.0, -1.0):
        with pytest.raises(ValueError, match="noise_scale must be positive"):
            causal_trace(traced_model, batches, noise_scale=scale, progress=False)
    with pytest.raises(ValueError, match="No prompt batches"):
        causal_trace(traced_model, [], progress=False)
    with pytest.raises(ValueError, match="No prompt batches"):
        attribution_patching(traced_model, [], progress=False)
    with pytest.raises(ValueError, match="at least one subject token"):
        category_masks(torch.zeros(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="kind must be one of"):
        output_hook("resid", 0)
    unchanged = replace(batches[0], corrupt=batches[0].clean)
    with pytest.raises(ValueError, match="corruption changes nothing"):
        attribution_patching(traced_model, [unchanged], progress=False)


def test_restorations_from_the_noised_layers_equal_the_full_runs(traced_model, batches):
    """Starting each restoration at its layer from the noised run gives today's full-run results."""
    noise = torch.randn(*batches[0].clean.shape, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    noise = noise * batches[0].subject[..., None]
    full = trace_batch(traced_model, batches[0], noise, max_rows=8, reuse_noised=False)
    reused = trace_batch(traced_model, batches[0], noise, max_rows=8)
    for got, want in zip(reused, full):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    fast, slow = (causal_trace(traced_model, batches, seed=0, progress=False, reuse_noised=r) for r in (True, False))
    np.testing.assert_allclose(fast.mlp, slow.mlp, atol=1e-4)
    np.testing.assert_allclose(fast.attn, slow.attn, atol=1e-4)
