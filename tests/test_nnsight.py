"""The nnsight versions of path patching's head step and attribution patching against the bridge helpers.

On a tiny 4-layer Gemma3 (fast) and, marked ``model``, on the embedded model. nnsight and the
TransformerLens bridge wrap the same Hugging Face model: wrapping must leave the weights, the
hooks and every later forward pass as they were.
"""

import pytest
import torch

from helpers.contrast import contrast_batches
from helpers.models import LoadedModel
from helpers.nnsight_methods import attribution_metrics, head_path_metrics, wrap
from helpers.path_patching import HEAD_PATHS
from helpers.tracing import attribution_batch
from tests.conftest import make_tiny_model

SUBJECTS = ["Michael Jordan", "Tom Brady", "Babe Ruth"]
# float32 rounding: the two libraries add the same numbers in another order
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def tiny_model(gemma_tokenizer) -> LoadedModel:
    return make_tiny_model(gemma_tokenizer, 4, seed=1, name="tiny-gemma3-4")


def sports_batch(model: LoadedModel):
    prompts = [f"Fact: {s} plays the sport of" for s in SUBJECTS]
    batches = contrast_batches(model, prompts, SUBJECTS, ["basketball", "football", "baseball"], [["golf"]] * 3, seed=0)
    assert len(batches) == 1  # the three prompts have the same length
    return batches[0]


def model_state(model: LoadedModel, batch) -> dict:
    """What wrapping must not change: weights, gradient flags, hooks and the outputs of both libraries."""
    _ = model.bridge  # built first: it adds modules and hooks of its own
    modules = list(model.hf_model.modules())
    with torch.inference_mode():
        logits = model.hf_model(batch.corrupt).logits
        _, cache = model.bridge.run_with_cache(batch.clean, names_filter=["blocks.1.attn.hook_z", "blocks.2.hook_mlp_out"])
    return {
        "weights": {name: p.detach().clone() for name, p in model.hf_model.named_parameters()},
        "requires_grad": [p.requires_grad for p in model.hf_model.parameters()],
        "grads": [p.grad for p in model.hf_model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in modules],
        "logits": logits,
        "cache": dict(cache),
        "heads": HEAD_PATHS["mlps_recomputed"](model, batch)[0],
        "attribution": attribution_batch(model, batch)[:2],
    }


@pytest.fixture(scope="module")
def wrapped(gemma_tokenizer):
    """The tiny model, its state before nnsight wrapped it, the nnsight model, and a batch."""
    model = tiny_model(gemma_tokenizer)
    batch = sports_batch(model)
    before = model_state(model, batch)
    return model, before, wrap(model), batch


@pytest.mark.parametrize("head_paths", list(HEAD_PATHS))
def test_head_paths_agree_with_the_bridge(wrapped, head_paths):
    model, _, lm, batch = wrapped
    expected = HEAD_PATHS[head_paths](model, batch)
    got = head_path_metrics(lm, batch, head_paths)
    assert got[0].shape == (model.n_layers, 2, len(batch))
    assert not torch.allclose(got[1], got[2])  # the corruption changes the metric
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)


def test_attribution_agrees_with_the_bridge(wrapped):
    model, _, lm, batch = wrapped
    got, expected = attribution_metrics(lm, batch), attribution_batch(model, batch)
    assert got[0].shape == (len(batch), model.n_layers, 2) and got[1].shape == (len(batch), model.n_layers)
    assert got[0].abs().max() > 1e-3  # a real signal, well above rounding
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, **TOLERANCE)


def test_wrapping_disturbs_neither_the_model_nor_the_bridge(wrapped):
    model, before, lm, batch = wrapped
    head_path_metrics(lm, batch, "frozen")
    attribution_metrics(lm, batch)
    after = model_state(model, batch)
    for name, weight in before["weights"].items():
        assert torch.equal(weight, after["weights"][name]), name
    assert after["requires_grad"] == before["requires_grad"] and all(before["requires_grad"])
    assert all(grad is None for grad in after["grads"])  # the backward pass left no gradient on the weights
    assert after["hooks"] == before["hooks"]
    torch.testing.assert_close(after["logits"], before["logits"], atol=0, rtol=0)
    for name, value in before["cache"].items():
        torch.testing.assert_close(after["cache"][name], value, atol=0, rtol=0)
    torch.testing.assert_close(after["heads"], before["heads"], atol=0, rtol=0)
    torch.testing.assert_close(after["attribution"], before["attribution"], atol=0, rtol=0)


def test_wrap_builds_the_bridge_first(gemma_tokenizer):
    """nnsight instruments the modules it sees; the bridge must have replaced them already."""
    model = tiny_model(gemma_tokenizer)
    assert not model.bridge_built
    lm = wrap(model)
    assert model.bridge_built
    batch = sports_batch(model)
    torch.testing.assert_close(head_path_metrics(lm, batch)[0], HEAD_PATHS["frozen"](model, batch)[0], **TOLERANCE)


def test_the_remote_code_path_runs_locally(wrapped):
    """``remote="local"`` serializes each request as for NDIF and runs it here: no network."""
    model, _, lm, batch = wrapped
    torch.testing.assert_close(attribution_metrics(lm, batch, remote="local"), attribution_metrics(lm, batch), **TOLERANCE)


def test_unknown_head_paths_are_refused(wrapped):
    _, _, lm, batch = wrapped
    with pytest.raises(ValueError, match="head_paths must be one of"):
        head_path_metrics(lm, batch, "all")


@pytest.mark.model
def test_the_embedded_model_agrees_in_both_libraries(embedded_model):
    batch = sports_batch(embedded_model)
    lm = wrap(embedded_model)
    torch.testing.assert_close(
        head_path_metrics(lm, batch, "mlps_recomputed"), HEAD_PATHS["mlps_recomputed"](embedded_model, batch), **TOLERANCE)
    torch.testing.assert_close(attribution_metrics(lm, batch), attribution_batch(embedded_model, batch), **TOLERANCE)
