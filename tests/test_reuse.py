"""Reused frozen activations give the full forward pass's logits, losses and gradients, and are never stale."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import Gemma3ForCausalLM

from helpers import reuse
from helpers.evaluation import general_loss
from helpers.finetune import (
    TrainingConfig,
    restored,
    retain_chunks,
    retain_rows,
    train_localized,
)
from helpers.localization import Component, Localization
from helpers.models import EMBEDDED_ARCHITECTURE_ID, LoadedModel
from helpers.prompts import SPORTS
from helpers.scoring import candidate_probs, last_token_logits, unembed
from helpers.tasks import sports_athlete_edit
from tests.conftest import tiny_gemma_config

NAMES = ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid", "Jonas", "Kwame", "Lucia"]
ATHLETES = pd.DataFrame({"athlete": NAMES, "sport": [SPORTS[i % 3] for i in range(len(NAMES))]})
TEXT = ["The river flows slowly through the green valley towards the distant sea. " * 20]
PREFIX = "Fact: Tiger Woods plays the sport of golf\nFact:"
PROMPTS = [f"{PREFIX} {name} plays the sport of" for name in ("Alice Smith", "Boris", "Chen Li Wei")]
LOCALIZATIONS = {  # a localization starting at layer 0, one in the middle, one mixing attention and MLPs
    "first": [Component("mlp", 0), Component("mlp", 1)],
    "middle": [Component("mlp", 3), Component("mlp", 4)],
    "mixed": [Component("attn", 2, "o_proj"), Component("mlp", 3), Component("attn", 4)],
}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model(gemma_tokenizer) -> LoadedModel:
    """A 6-layer tiny Gemma3 (float32) with a window longer than the prompts, so the shared-prefix path runs."""
    torch.manual_seed(1)
    hf = Gemma3ForCausalLM(tiny_gemma_config(len(gemma_tokenizer), n_layers=6, sliding_window=64)).eval().requires_grad_(False)
    return LoadedModel("tiny-gemma3-6", hf, gemma_tokenizer, EMBEDDED_ARCHITECTURE_ID)


@pytest.fixture(autouse=True)
def empty_cache():
    reuse.clear()
    yield
    reuse.clear()


def localization(model, name):
    return Localization.build(name, model, LOCALIZATIONS[name], "test")


def loss_and_grads(model, loc, chunks, *, enabled, **path):
    """Last-token logits, a fact and a retain loss, and the gradients of the trained weights (``path``: how the
    shared prefix runs, :func:`helpers.scoring.last_token_logits`)."""
    with restored(model, loc) as trained, reuse.reusing(model, loc.start_layer, enabled=enabled):
        logits = last_token_logits(model, PROMPTS, **path)
        hidden, targets = retain_rows(model, chunks, 4, torch.Generator().manual_seed(0))
        retain = F.cross_entropy(unembed(model, hidden), targets)
        loss = logits.logsumexp(-1).mean() - logits[:, 7].mean() + retain
        loss.backward()
        return logits.detach(), retain.detach(), [p.grad.clone() for p in trained]


PATHS = {  # how the prompts' shared prefix runs
    "packed": {}, "prefix cache": {"packed": False}, "plain batch": {"share_prefix": False},
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(LOCALIZATIONS))
def test_logits_losses_and_gradients_equal_the_full_forward(model, name, path):
    """Reuse, on each path, against the full forward pass of the plain padded batch."""
    loc = localization(model, name)
    chunks = retain_chunks(model, TEXT, 16)[:3]
    full = loss_and_grads(model, loc, chunks, enabled=False, share_prefix=False)
    reused = loss_and_grads(model, loc, chunks, enabled=True, **PATHS[path])
    torch.testing.assert_close(reused[0], full[0], atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(reused[1], full[1], atol=TOLERANCE, rtol=TOLERANCE)
    for got, want in zip(reused[2], full[2]):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=1e-4)
    assert (reuse.cache_bytes() > 0) == (loc.start_layer > 0)


def test_states_cached_during_inference_serve_a_training_step(model):
    """The evaluations cache states under ``inference_mode``; a relearning step then backpropagates through them."""
    loc = localization(model, "middle")
    chunks = retain_chunks(model, TEXT, 16)[:3]
    with reuse.reusing(model, loc.start_layer), torch.inference_mode():
        last_token_logits(model, PROMPTS)
    reused = loss_and_grads(model, loc, chunks, enabled=True)
    full = loss_and_grads(model, loc, chunks, enabled=False)
    for got, want in zip(reused[2], full[2]):
        torch.testing.assert_close(got, want, atol=TOLERANCE, rtol=1e-4)


@pytest.mark.parametrize("name", ["middle", "mixed"])
def test_training_equals_the_full_forward(model, name):
    loc = localization(model, name)
    task = sports_athlete_edit(ATHLETES, 4, seed=0, n_maintain=4)
    chunks = retain_chunks(model, TEXT, 16)
    config = TrainingConfig(learning_rate=1e-2, steps=4, batch_size=4, retain_batch_size=2, retain_length=16, retain_positions=4)
    logs = {}
    for enabled in (False, True):
        with restored(model, loc) as trained:
            logs[enabled] = train_localized(model, loc, task, chunks, config, seed=0, progress=False, reuse_frozen=enabled)
            logs[enabled, "weights"] = [p.detach().clone() for p in trained]
    for curve in ("forget", "maintain", "retain", "total"):
        assert getattr(logs[True], curve) == pytest.approx(getattr(logs[False], curve), abs=1e-5)
    for got, want in zip(logs[True, "weights"], logs[False, "weights"]):  # Adam magnifies rounding in tiny gradients
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)


def test_reuse_is_refused_below_a_trained_weight(model):
    first = localization(model, "first")
    with restored(model, first), reuse.reusing(model, 3), pytest.raises(ValueError, match="below it require gradients"):
        last_token_logits(model, PROMPTS)


def test_a_changed_lower_weight_is_never_served_stale(model):
    """After an in-place change below the start layer, reuse recomputes: logits follow the new weights."""
    weight = model.hf_model.get_decoder().layers[1].mlp.down_proj.weight
    original = weight.detach().clone()
    try:
        with reuse.reusing(model, 3), torch.no_grad():
            before = last_token_logits(model, PROMPTS)
            weight.mul_(3.0)
            after = last_token_logits(model, PROMPTS)
        with torch.no_grad():
            full = last_token_logits(model, PROMPTS)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, full, atol=TOLERANCE, rtol=TOLERANCE)


def test_the_cache_stays_within_its_bound(model, monkeypatch):
    monkeypatch.setattr(reuse, "MAX_BYTES", 4096)
    with reuse.reusing(model, 3), torch.no_grad():
        last_token_logits(model, PROMPTS, share_prefix=False)
    assert 0 < reuse.cache_bytes() <= 4096 or len(reuse._STORE) == 1


def test_scores_and_the_general_loss_equal_the_full_forward(model):
    """What the evaluations compute (candidate probabilities, general loss) is the same from the cache."""
    prompts = PROMPTS + ["Fact: Boris Becker plays", "Some other prompt about a sport of"] * 3
    chunks = retain_chunks(model, TEXT, 16)
    with restored(model, localization(model, "mixed")):
        results = {}
        for enabled in (False, True):
            with reuse.reusing(model, 2, enabled=enabled):
                results[enabled] = (candidate_probs(model, prompts, ["golf", "tennis"], batch_size=4, progress=False),
                                    general_loss(model, chunks, max_tokens=None, batch_size=2))
    np.testing.assert_allclose(results[True][0], results[False][0], atol=1e-6)
    assert results[True][1] == pytest.approx(results[False][1], abs=1e-5)


def test_reuse_is_skipped_when_the_frozen_layers_are_a_small_share(model):
    """Below MIN_FROZEN_SHARE of the layers the bookkeeping costs more than the layers skipped: the full pass runs."""
    lowest = next(start for start in range(1, model.n_layers) if start >= reuse.MIN_FROZEN_SHARE * model.n_layers)
    with reuse.reusing(model, lowest - 1):
        assert reuse.active_start(model) is None
    with reuse.reusing(model, lowest):
        assert reuse.active_start(model) == lowest


def test_states_of_prompts_sharing_a_prefix_equal_each_prompt_run_alone(model):
    """The cache fill runs a shared prefix once; each prompt's states equal those of the prompt run by itself."""
    ids = [tuple(model.tokenizer(p)["input_ids"]) for p in PROMPTS]
    together = reuse.states(model, 3, ids)
    reuse.clear()
    for sequence, state in zip(ids, together):
        torch.testing.assert_close(state, reuse.states(model, 3, [sequence])[0], atol=TOLERANCE, rtol=TOLERANCE)
