"""Output tracing: causal tracing (ROME) and attribution patching, and localizations from them.

Both methods score a component by what it does to the model's *output*, the paper's
"output-tracing" baselines:

- **Causal tracing** (Meng et al., 2022): add Gaussian noise to the subject's token
  embeddings, then restore one component's clean output (the MLP or the attention output
  of one layer) at one group of positions, and measure how much of P(correct answer)
  comes back.
- **Attribution patching** (Nanda, 2023): a first-order estimate of activation patching.
  The change in the logit-difference metric when a component's activation goes from its
  clean to its subject-corrupted value is estimated as (corrupt - clean) x gradient, for
  every attention head and MLP from one forward and one backward pass.

Scores become localizations as in the paper: head scores are summed per attention layer,
then whole components are added by |score| until the fact-lookup parameter budget is used
(:func:`helpers.localization.budget_matched`).

Every run goes through the TransformerLens bridge's hook points and the Hugging Face
forward with ``logits_to_keep=1``: only the last position's logits are computed. A causal-tracing
restoration at layer L starts from the noised run's residual stream entering L, which it
equals below L (:func:`helpers.reuse.layers_from` skips the layers below): about half the
layers of all restorations run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.contrast import ContrastBatch, logit_diff, normalized_effect
from helpers.kernels import weights_frozen
from helpers.localization import (
    Component,
    Localization,
    all_mlps,
    budget_matched,
    nonlocalized,
    random_matrices,
    random_mlps,
)
from helpers.models import LoadedModel
from helpers.precision import Precision
from helpers.reuse import layers_from

EMBED_HOOK = "hook_embed"
# ROME's position categories: prompts of different lengths are averaged category by category.
CATEGORIES = (
    "first subject token", "middle subject tokens", "last subject token",
    "first token after the subject", "further tokens", "last token",
)
TRACED = ("mlp", "attn")  # the outputs causal tracing restores, in the order of its arrays

Patch = tuple[torch.Tensor, torch.Tensor]  # (mask, values): where mask is True, use values


def output_hook(kind: str, layer: int) -> str:
    """The bridge hook of a layer's MLP or attention output (what it adds to the residual stream)."""
    if kind not in TRACED:
        raise ValueError(f"kind must be one of {TRACED}, got {kind!r}")
    return f"blocks.{layer}.hook_{kind}_out"


def z_hook(layer: int) -> str:
    """The bridge hook of a layer's per-head attention results, shape (batch, pos, heads, d_head)."""
    return f"blocks.{layer}.attn.hook_z"


def run_patched(
    model: LoadedModel, tokens: torch.Tensor,
    patches: Mapping[str, Patch] | None = None, record: Sequence[str] = (), *, start: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Last-position logits (n, vocab) of a run with patched activations, and recorded ones.

    With ``start`` given, ``tokens`` is the residual stream entering layer ``start`` (n, T, d_model)
    and only the layers from ``start`` on run (only their hooks fire).

    ``patches[hook] = (mask, values)`` replaces the hook's activation by ``values`` where
    ``mask`` is True; ``mask`` has one dimension less than the activation (it selects rows,
    positions and, for ``hook_z``, heads). Recorded activations are keyed by the hook name
    asked for (the bridge reports aliases under other names) and are taken after patching.
    """
    patches = patches or {}
    recorded: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable:
        def hook(activation: torch.Tensor, hook) -> torch.Tensor:
            if name in patches:
                mask, values = patches[name]
                activation = torch.where(mask[..., None], values.to(activation.dtype), activation)
            if name in record:
                recorded[name] = activation
            return activation

        return hook

    hooks = [(name, hook_for(name)) for name in dict.fromkeys([*patches, *record])]
    if start is not None:
        with model.bridge.hooks(fwd_hooks=hooks), layers_from(model, start):
            logits = model.hf_model(inputs_embeds=tokens, logits_to_keep=1).logits[:, -1]
    else:
        with model.bridge.hooks(fwd_hooks=hooks):
            logits = model.hf_model(input_ids=tokens, logits_to_keep=1).logits[:, -1]
    return logits, recorded


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _repeat(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` copies of a batch tensor, one after the other along the first axis."""
    return tensor.repeat(copies, *[1] * (tensor.ndim - 1))


def one_patch_per_copy(
    variants: Sequence[tuple[str, torch.Tensor]], sources: Mapping[str, torch.Tensor],
) -> dict[str, Patch]:
    """Patches for one copy of a batch per variant: copy i takes ``sources[hook_i]`` where ``mask_i`` is True.

    ``variants[i] = (hook_i, mask_i)``; ``sources[hook]`` is the batch's activation to patch in
    (n, T, ...) and ``mask_i`` selects its rows, positions (and heads), shape (n, T[, heads]).
    """
    patches = {}
    for name in dict.fromkeys(name for name, _ in variants):
        nowhere = torch.zeros(sources[name].shape[:-1], dtype=torch.bool, device=sources[name].device)
        mask = torch.cat([variant_mask if variant == name else nowhere for variant, variant_mask in variants])
        patches[name] = (mask, _repeat(sources[name], len(variants)))
    return patches


def _check_batches(batches: Sequence[ContrastBatch]) -> None:
    if not batches:
        raise ValueError("No prompt batches given (the prompt list is empty)")


# --- Causal tracing ---------------------------------------------------------------------


def category_masks(subject: torch.Tensor) -> torch.Tensor:
    """Which positions fall in each of ROME's :data:`CATEGORIES`, shape (n, categories, T).

    ``subject`` (n, T) marks each prompt's subject tokens (one contiguous span). A category
    can be empty (a one-token subject has no middle tokens); positions before the subject
    belong to none (the noise does not reach them).
    """
    if subject.ndim != 2 or not subject.any(dim=1).all():
        raise ValueError("subject must be an (n, T) mask with at least one subject token per prompt")
    length = subject.shape[1]
    position = torch.arange(length, device=subject.device)[None]
    first = subject.int().argmax(dim=1)[:, None]
    last = length - 1 - subject.flip(1).int().argmax(dim=1)[:, None]
    return torch.stack([
        position == first,
        (position > first) & (position < last),
        position == last,
        position == last + 1,
        (position > last + 1) & (position < length - 1),
        (position == length - 1).expand_as(subject),
    ], dim=1)


def subject_embedding_std(model: LoadedModel, batches: Sequence[ContrastBatch]) -> float:
    """Standard deviation of the embedding-layer outputs over all subject tokens of the data."""
    _check_batches(batches)
    embed = model.hf_model.get_input_embeddings()
    with torch.inference_mode():
        values = torch.cat([embed(batch.clean)[batch.subject] for batch in batches])
    return values.float().std().item()


def trace_batch(
    model: LoadedModel, batch: ContrastBatch, noise: torch.Tensor, *, max_rows: int = 256, reuse_noised: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P(correct answer) on one batch: clean (n,), noised (n,), restored (n, 2, layers, categories).

    ``noise`` (n, T, d_model) is added to the embeddings at the subject tokens. Each
    restoration puts one layer's clean MLP or attention output back at every position of
    one category of the noised run; many restorations run side by side as extra rows of
    one forward pass (at most ``max_rows`` rows). With ``reuse_noised``, the restorations at
    layer L start from the noised run's residual stream entering L (below L they equal the
    noised run); ``False`` runs every restoration from the embeddings.
    """
    n = len(batch)
    categories = category_masks(batch.subject)
    names = [output_hook(kind, layer) for kind in TRACED for layer in range(model.n_layers)]
    variants = [(name, categories[:, category]) for name in names for category in range(len(CATEGORIES))]
    with torch.inference_mode():
        clean_logits, clean = run_patched(model, batch.clean, record=[EMBED_HOOK, *names])
        noised = (batch.subject, clean[EMBED_HOOK] + noise)
        with _layer_inputs(model) as entering:
            noised_logits, _ = run_patched(model, batch.clean, {EMBED_HOOK: noised})
        if reuse_noised:
            restored = _restorations_from_noised_layers(model, batch, variants, clean, entering, max_rows)
        else:
            restored = _restorations_from_embeddings(model, batch, variants, clean, noised, max_rows)
    restored = restored.T.reshape(n, len(TRACED), model.n_layers, len(CATEGORIES))
    return _answer_probs(clean_logits, batch.answer), _answer_probs(noised_logits, batch.answer), restored


@contextmanager
def _layer_inputs(model: LoadedModel) -> Iterator[dict[int, torch.Tensor]]:
    """While inside, record the residual stream entering every decoder layer (layer -> (n, T, d_model))."""
    entering: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> Callable:
        def hook(module, args, kwargs):
            entering[layer] = args[0] if args else kwargs["hidden_states"]
        return hook

    layers = model.hf_model.get_decoder().layers
    handles = [block.register_forward_pre_hook(keep(layer), with_kwargs=True) for layer, block in enumerate(layers)]
    try:
        yield entering
    finally:
        for handle in handles:
            handle.remove()


def _restorations_from_embeddings(
    model: LoadedModel, batch: ContrastBatch, variants: list[tuple[str, torch.Tensor]],
    clean: Mapping[str, torch.Tensor], noised: Patch, max_rows: int,
) -> torch.Tensor:
    """P(correct) of every restoration (variants, n), each run from the noised embeddings."""
    n, restored = len(batch), []
    for chunk in _chunks(variants, max(1, max_rows // n)):
        copies = len(chunk)
        patches = {EMBED_HOOK: (_repeat(noised[0], copies), _repeat(noised[1], copies))}
        logits, _ = run_patched(model, _repeat(batch.clean, copies), patches | one_patch_per_copy(chunk, clean))
        restored.append(_answer_probs(logits, _repeat(batch.answer, copies)).view(copies, n))
    return torch.cat(restored)


def _restorations_from_noised_layers(
    model: LoadedModel, batch: ContrastBatch, variants: list[tuple[str, torch.Tensor]],
    clean: Mapping[str, torch.Tensor], entering: Mapping[int, torch.Tensor], max_rows: int,
) -> torch.Tensor:
    """P(correct) of every restoration (variants, n): those at layer L run from the noised residual stream entering L."""
    n = len(batch)
    restored = torch.empty(len(variants), n, device=batch.answer.device)
    for layer in range(model.n_layers):
        at_layer = [i for i, (name, _) in enumerate(variants) if name in {output_hook(k, layer) for k in TRACED}]
        for rows in _chunks(at_layer, max(1, max_rows // n)):
            chunk = [variants[i] for i in rows]
            logits, _ = run_patched(model, _repeat(entering[layer], len(rows)), one_patch_per_copy(chunk, clean), start=layer)
            restored[rows] = _answer_probs(logits, _repeat(batch.answer, len(rows))).view(len(rows), n).to(restored.dtype)
    return restored


def _answer_probs(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(dim=-1).gather(1, answer[:, None])[:, 0]


@dataclass
class CausalTrace:
    """Normalized indirect effects, (p_restored - p_noised) / (p_clean - p_noised).

    ``mlp`` and ``attn`` have shape (layers, categories); each entry is the mean over the
    prompts that have that category (a ratio of means, which stays stable when a prompt's
    clean and noised probabilities are close). 1 means the restoration brings P(correct)
    fully back, 0 that it does nothing.
    """

    mlp: np.ndarray
    attn: np.ndarray
    noise_std: float
    p_clean: float
    p_noised: float
    n_prompts: int
    precision: str  # resolved: "float32" or "bfloat16"

    def settings(self) -> dict:
        """What produced these effects, stored with the localizations made from them."""
        return {"noise_std": self.noise_std, "n_prompts": self.n_prompts, "precision": self.precision}

    def component_scores(self) -> dict[Component, float]:
        """One score per MLP and attention layer: its largest effect over the position categories."""
        return {
            Component(kind, layer): float(np.nanmax(effects[layer]))
            for kind, effects in (("mlp", self.mlp), ("attn", self.attn))
            for layer in range(effects.shape[0])
        }


def causal_trace(
    model: LoadedModel, batches: Sequence[ContrastBatch], *,
    noise_scale: float = 3.0, seed: int = 0, max_rows: int = 256, precision: str = "auto", progress: bool = True,
    reuse_noised: bool = True,
) -> CausalTrace:
    """ROME's causal tracing of every MLP and attention output, averaged over the prompts.

    The noise added to each subject token's embedding is Gaussian with standard deviation
    ``noise_scale`` x the std of the embedding-layer outputs over all subject tokens of the
    data (ROME's choice, with ``noise_scale=3``), drawn once per prompt from ``seed``. The
    paper's authors' code used ``sqrt(3 * std)`` instead, which is smaller for any std above
    1/3; pass ``noise_scale`` to study the effect of the noise level.

    ``precision="bfloat16"`` runs the forward passes' matrix products in bf16
    (:class:`helpers.precision.Precision`), with effects within about 0.01 of float32 (a test
    bounds the difference): about 1.6x faster on a CPU with native bf16 (AVX512-BF16, AMX), far
    slower on one without. ``"auto"`` (the default) picks bf16 only where it is native; the
    trace records the precision that ran.

    ``reuse_noised`` starts each restoration from the noised run's residual stream at its layer
    (:func:`trace_batch`); ``False`` runs it from the embeddings (the same effects, slower).
    """
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be positive, got {noise_scale}")
    _check_batches(batches)
    noise_std = noise_scale * subject_embedding_std(model, batches)
    generator = torch.Generator().manual_seed(seed)
    _ = model.bridge  # build it on the float32 weights (built inside the bf16 context below, it would keep the copies)
    context = Precision(model, precision, trained=())
    clean, noised, restored, present = [], [], [], []
    for batch in tqdm(batches, desc="causal tracing", unit="batch", disable=not progress):
        shape = (*batch.clean.shape, model.hf_model.config.get_text_config().hidden_size)
        noise = torch.randn(shape, generator=generator).to(model.device) * noise_std
        with context.active():
            results = trace_batch(model, batch, noise * batch.subject[..., None], max_rows=max_rows, reuse_noised=reuse_noised)
        for store, result in zip((clean, noised, restored), results):
            store.append(result.cpu().numpy())
        present.append(category_masks(batch.subject).any(dim=2).cpu().numpy())
    clean, noised, restored, present = (np.concatenate(a) for a in (clean, noised, restored, present))
    if clean.mean() <= noised.mean():
        raise ValueError(
            f"The noise does not lower P(correct answer) (clean {clean.mean():.3g}, noised {noised.mean():.3g}); "
            "causal tracing needs facts the model knows, or a larger noise_scale"
        )
    gain = np.where(present[:, None, None, :], restored - noised[:, None, None, None], 0.0).sum(axis=0)
    gap = (present * (clean - noised)[:, None]).sum(axis=0)
    effects = gain / np.where(present.any(axis=0), gap, np.nan)
    return CausalTrace(
        mlp=effects[0], attn=effects[1], noise_std=noise_std,
        p_clean=float(clean.mean()), p_noised=float(noised.mean()), n_prompts=len(clean),
        precision=context.precision,
    )


# --- Attribution patching and exact activation patching -----------------------------------


@dataclass
class PatchingScores:
    """Share of the clean - corrupt logit-difference gap removed by corrupting one component.

    For each attention head (``heads``, shape (layers, heads)) and MLP (``mlps``, shape
    (layers,)): (mean clean metric - mean metric with only that component's activation set
    to its corrupted value) / (mean clean metric - mean corrupted metric), over all prompts,
    with activations summed over positions. Positive: the component carries what the
    corruption destroys.
    """

    heads: np.ndarray
    mlps: np.ndarray
    n_prompts: int

    def component_scores(self) -> dict[Component, float]:
        """The paper's reduction: head scores summed per attention layer, one score per MLP."""
        scores = {Component("attn", layer): float(s) for layer, s in enumerate(self.heads.sum(axis=1))}
        scores.update({Component("mlp", layer): float(s) for layer, s in enumerate(self.mlps)})
        return scores

    def flat(self) -> np.ndarray:
        """Every head's score then every MLP's, for comparing two methods component by component."""
        return np.concatenate([self.heads.ravel(), self.mlps])


def patching_hooks(model: LoadedModel) -> list[str]:
    """The hooks attribution patching differentiates: every layer's ``hook_z``, then every ``hook_mlp_out``."""
    layers = range(model.n_layers)
    return [z_hook(layer) for layer in layers] + [output_hook("mlp", layer) for layer in layers]


def _split(model: LoadedModel, per_hook: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-hook results (n,[heads]) in :func:`patching_hooks` order -> heads (n, L, H), MLPs (n, L)."""
    layers = model.n_layers
    return torch.stack(list(per_hook[:layers]), dim=1), torch.stack(list(per_hook[layers:]), dim=1)


def metric_gradients(
    model: LoadedModel, batch: ContrastBatch,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The clean run's logit differences (n,), and per patching hook its activation and gradient."""
    names = patching_hooks(model)
    with torch.enable_grad(), weights_frozen(model.hf_model):
        # The graph starts at the embeddings: the weights need no gradient (helpers/kernels.py says why they must not).
        embeddings = model.hf_model.get_input_embeddings()(batch.clean).detach().requires_grad_()
        every_position = torch.ones_like(batch.subject)
        logits, clean = run_patched(model, batch.clean, {EMBED_HOOK: (every_position, embeddings)}, names)
        metric = logit_diff(logits, batch)
        grads = torch.autograd.grad(metric.sum(), [clean[name] for name in names])
    return metric.detach(), {name: clean[name].detach() for name in names}, dict(zip(names, grads))


def attribution_batch(model: LoadedModel, batch: ContrastBatch) -> tuple[torch.Tensor, ...]:
    """Estimated metric changes for one batch: heads (n, L, H), MLPs (n, L), clean and corrupt (n,).

    Estimate = sum over positions (and d_head or d_model) of (corrupt - clean activation)
    x d(logit difference)/d(activation), the gradient taken on the clean run.
    """
    names = patching_hooks(model)
    with torch.inference_mode():
        corrupt_logits, corrupt = run_patched(model, batch.corrupt, record=names)
    clean_metric, clean, grads = metric_gradients(model, batch)
    with torch.no_grad():
        # Sum over positions and the activation's last axis: one number per head or MLP.
        estimates = [((corrupt[name] - clean[name]) * grads[name]).sum(dim=(1, -1)) for name in names]
    return (*_split(model, estimates), clean_metric, logit_diff(corrupt_logits, batch))


def activation_patching_batch(
    model: LoadedModel, batch: ContrastBatch, *, max_rows: int = 256,
) -> tuple[torch.Tensor, ...]:
    """Exact metric changes for one batch: heads (n, L, H), MLPs (n, L), clean and corrupt (n,).

    Each head's or MLP's corrupted activation (at every position) is patched into the clean
    run, one component per copy of the batch, many copies per forward pass.
    """
    names = patching_hooks(model)
    n, length = batch.clean.shape
    n_heads = model.hf_model.config.get_text_config().num_attention_heads
    head_ids = torch.arange(n_heads, device=batch.clean.device)
    variants = [
        (name, (head_ids == head).expand(n, length, n_heads))
        for name in names[: model.n_layers] for head in range(n_heads)
    ]
    variants += [(name, torch.ones_like(batch.subject)) for name in names[model.n_layers :]]
    with torch.inference_mode():
        corrupt_logits, corrupt = run_patched(model, batch.corrupt, record=names)
        clean_logits, _ = run_patched(model, batch.clean)
        metrics = []
        for chunk in _chunks(variants, max(1, max_rows // n)):
            copies = batch.repeat(len(chunk))
            logits, _ = run_patched(model, copies.clean, one_patch_per_copy(chunk, corrupt))
            metrics.append(logit_diff(logits, copies).view(len(chunk), n))
        clean_metric = logit_diff(clean_logits, batch)
        changes = (torch.cat(metrics) - clean_metric).T  # (n, variants)
        heads = changes[:, : model.n_layers * n_heads].reshape(n, model.n_layers, n_heads)
    return heads, changes[:, model.n_layers * n_heads :], clean_metric, logit_diff(corrupt_logits, batch)


def _patching_scores(
    per_batch: Callable[[ContrastBatch], tuple[torch.Tensor, ...]],
    batches: Sequence[ContrastBatch], desc: str, progress: bool,
) -> PatchingScores:
    _check_batches(batches)
    heads, mlps, clean, corrupt = (
        torch.cat(parts).float().cpu().numpy()
        for parts in zip(*(per_batch(batch) for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress)))
    )
    clean_mean, corrupt_mean = float(clean.mean()), float(corrupt.mean())

    def share_removed(change: np.ndarray) -> np.ndarray:
        return 1.0 - normalized_effect(clean_mean + change.mean(axis=0), clean_mean, corrupt_mean)

    return PatchingScores(heads=share_removed(heads), mlps=share_removed(mlps), n_prompts=len(clean))


def attribution_patching(
    model: LoadedModel, batches: Sequence[ContrastBatch], *, progress: bool = True,
) -> PatchingScores:
    """Attribution-patching scores of every head and MLP (one forward + backward per batch)."""
    return _patching_scores(partial(attribution_batch, model), batches, "attribution patching", progress)


def activation_patching(
    model: LoadedModel, batches: Sequence[ContrastBatch], *, max_rows: int = 256, progress: bool = True,
) -> PatchingScores:
    """Exact activation-patching scores of every head and MLP (the quantity attribution patching estimates)."""
    per_batch = partial(activation_patching_batch, model, max_rows=max_rows)
    return _patching_scores(per_batch, batches, "activation patching", progress)


# --- From scores to localizations ---------------------------------------------------------


def budget_matched_pair(
    name: str, model: LoadedModel, scores: Mapping[Component, float], budget: int, method: str,
    settings: Mapping | None = None,
) -> list[Localization]:
    """The paper's two localizations from one method's scores: all components, and MLPs only."""
    return [
        budget_matched(name, model, scores, budget, method=method, settings=settings),
        budget_matched(f"{name}_mlps", model, scores, budget, mlps_only=True, method=method, settings=settings),
    ]


def comparison_table(
    localizations: Sequence[Localization], fact_lookup: Localization, model: LoadedModel,
) -> pd.DataFrame:
    """One row per localization: components, size, share of the budget and of its weights inside the fact-lookup set."""
    return pd.DataFrame([
        {
            "localization": loc.name,
            "components": ", ".join(loc.ids) if len(loc.ids) <= 8 else f"{len(loc.ids)} components",
            "parameters (M)": loc.n_parameters / 1e6,
            "share of budget": loc.n_parameters / fact_lookup.n_parameters,
            "share inside the fact-lookup set": loc.overlap(fact_lookup, model),
        }
        for loc in localizations
    ])


def control_localizations(model: LoadedModel, fact_lookup: Localization, *, seed: int) -> list[Localization]:
    """The paper's controls at the fact-lookup budget: random matrices, random MLPs, all MLPs, everything."""
    n_mlps = len({c.layer for c in fact_lookup.components if c.kind == "mlp"})
    return [
        random_matrices("random_matrices", model, fact_lookup.n_parameters, seed),
        random_mlps("random_mlps", model, n_mlps, seed),
        all_mlps("all_mlps", model),
        nonlocalized("nonlocalized", model),
    ]
