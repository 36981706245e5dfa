"""Path patching for CounterFact: extraction heads, then the MLPs that feed them.

Both steps run the model on the subject-corrupted prompt and restore one component's clean
output along one path only (Goldowsky-Dill et al., 2023; Wang et al., 2022):

1. **Extraction heads**: a head's clean output reaches the final residual stream directly.
   Two variants (``head_paths``): ``"frozen"`` leaves every later component at its corrupted
   value; the residual stream is a sum of component outputs, so this equals the corrupted
   final residual plus the change in the head's layer output (its attention output after
   ``o_proj`` and, in Gemma, the post-attention norm), computed for every head at once from
   cached activations. ``"mlps_recomputed"`` is the authors' form (``direct_includes_mlps``):
   later attention layers keep their corrupted outputs but the MLPs from the head's layer on
   run on the patched residual stream, so a head also counts through what later MLPs make of
   its output. Only the last position changes then, and it is recomputed from cached
   activations too.
2. **Fact-lookup MLPs**: an MLP's clean output reaches the residual stream read by the
   earliest extraction head (``blocks.{R}.hook_resid_pre``) directly, with the components
   between them left corrupted; layers ``R`` onwards then run normally. One TransformerLens
   hook adds the MLP's clean-minus-corrupted output to that residual stream, and the final
   residual's last position is unembedded for the answer and foil tokens only.

Effects are normalized logit differences: 0 is the corrupted run, 1 the clean run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.contrast import ContrastBatch, logit_diff, normalized_effect
from helpers.models import LoadedModel


def attention_output(model: LoadedModel, layer: int, z: torch.Tensor) -> torch.Tensor:
    """A layer's attention output from per-head results ``z`` (..., heads, d_head)."""
    block = model.hf_model.get_decoder().layers[layer]
    out = block.self_attn.o_proj(z.flatten(-2))
    # Gemma 2/3 normalize the attention output before adding it to the residual stream;
    # in Llama-style blocks `post_attention_layernorm` is the pre-MLP norm instead.
    if hasattr(block, "pre_feedforward_layernorm"):
        out = block.post_attention_layernorm(out)
    return out


def unembed(model: LoadedModel, final_residual: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``token_ids`` (n, k) from final residual vectors (..., n, d_model)."""
    normed = model.hf_model.get_decoder().norm(final_residual)
    weights = model.hf_model.get_output_embeddings().weight[token_ids]  # (n, k, d)
    logits = torch.einsum("...nd,nkd->...nk", normed, weights)
    cap = getattr(model.hf_model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _candidates(batch: ContrastBatch) -> torch.Tensor:
    return torch.cat([batch.answer[:, None], batch.foils], dim=1)


def one_head_clean(z_clean: torch.Tensor, z_corrupt: torch.Tensor) -> torch.Tensor:
    """(H, n, H, dh): for each head h, the corrupted head outputs ``z_corrupt`` (n, H, dh) with head h's clean."""
    n_heads = z_clean.shape[1]
    patched = z_corrupt.expand(n_heads, *z_corrupt.shape).clone()
    heads = torch.arange(n_heads)
    patched[heads, :, heads] = z_clean.transpose(0, 1)
    return patched


def head_direct_metrics(model: LoadedModel, batch: ContrastBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit differences (layers, heads, n) with one head's clean output on its direct path.

    Also returns the clean and corrupted logit differences (n,).
    """
    n_layers = model.n_layers
    final = f"blocks.{n_layers - 1}.hook_resid_post"
    names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)] + [final]
    with torch.inference_mode():
        clean_logits, clean = model.bridge.run_with_cache(batch.clean, names_filter=names)
        corrupt_logits, corrupt = model.bridge.run_with_cache(batch.corrupt, names_filter=names)
        candidates = _candidates(batch)
        residual = corrupt[final][:, -1]  # (n, d)
        per_layer = []
        for layer in range(n_layers):
            z_clean, z_corrupt = clean[names[layer]][:, -1], corrupt[names[layer]][:, -1]  # (n, H, dh)
            patched = one_head_clean(z_clean, z_corrupt)
            delta = attention_output(model, layer, patched) - attention_output(model, layer, z_corrupt)
            logits = unembed(model, residual + delta, candidates)  # (H, n, 1 + k)
            per_layer.append(logits[..., 0] - logits[..., 1:].mean(-1))
        return torch.stack(per_layer), logit_diff(clean_logits, batch), logit_diff(corrupt_logits, batch)


def mlp_output(model: LoadedModel, layer: int, resid_mid: torch.Tensor) -> torch.Tensor:
    """What a layer's MLP adds to the residual stream ``resid_mid`` (after the attention output)."""
    block = model.hf_model.get_decoder().layers[layer]
    if hasattr(block, "pre_feedforward_layernorm"):  # Gemma 2/3: normed before and after the MLP
        return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(resid_mid)))
    return block.mlp(block.post_attention_layernorm(resid_mid))


def head_metrics_mlps_recomputed(
    model: LoadedModel, batch: ContrastBatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`head_direct_metrics`, but with the MLPs from each head's layer on recomputed.

    Every later attention layer keeps its corrupted output, so only the last position's
    residual stream changes (MLPs act per position): it is rebuilt from the head's layer
    upwards, adding the corrupted attention outputs and recomputing each MLP, for every head
    at once.
    """
    n_layers = model.n_layers
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    resid_names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    with torch.inference_mode():
        clean_logits, clean = model.bridge.run_with_cache(batch.clean, names_filter=z_names)
        corrupt_logits, corrupt = model.bridge.run_with_cache(batch.corrupt, names_filter=z_names + resid_names)
        candidates = _candidates(batch)
        frozen = [attention_output(model, l, corrupt[z_names[l]][:, -1]) for l in range(n_layers)]  # (n, d) each
        per_layer = []
        for layer in range(n_layers):
            z_clean, z_corrupt = clean[z_names[layer]][:, -1], corrupt[z_names[layer]][:, -1]  # (n, H, dh)
            patched = one_head_clean(z_clean, z_corrupt)
            residual = corrupt[resid_names[layer]][:, -1] + attention_output(model, layer, patched)  # (H, n, d)
            residual = residual + mlp_output(model, layer, residual)
            for later in range(layer + 1, n_layers):
                residual = residual + frozen[later]
                residual = residual + mlp_output(model, later, residual)
            logits = unembed(model, residual, candidates)  # (H, n, 1 + k)
            per_layer.append(logits[..., 0] - logits[..., 1:].mean(-1))
        return torch.stack(per_layer), logit_diff(clean_logits, batch), logit_diff(corrupt_logits, batch)


def mlp_path_metrics(
    model: LoadedModel, batch: ContrastBatch, receiver_layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit differences (receiver_layer, n) with MLP m's clean output added at the receiver's input.

    Also returns the clean and corrupted logit differences (n,).
    """
    if not 0 < receiver_layer < model.n_layers:
        raise ValueError(f"receiver_layer must lie in 1..{model.n_layers - 1}, got {receiver_layer}")
    names = [f"blocks.{m}.hook_mlp_out" for m in range(receiver_layer)]
    receiver = f"blocks.{receiver_layer}.hook_resid_pre"
    with torch.inference_mode():
        clean_logits, clean = model.bridge.run_with_cache(batch.clean, names_filter=names)
        corrupt_logits, corrupt = model.bridge.run_with_cache(batch.corrupt, names_filter=names)
        # One forward for all MLPs: the corrupted batch repeated once per MLP, each copy
        # receiving its own MLP's clean-minus-corrupted output at the receiver. The bridge's
        # hooks also fire in the wrapped Hugging Face forward, which can skip the unembedding
        # of every position but the last.
        deltas = torch.cat([clean[name] - corrupt[name] for name in names])  # (M * n, T, d)
        with model.bridge.hooks(fwd_hooks=[(receiver, lambda resid, hook: resid + deltas)]):
            logits = model.hf_model(batch.corrupt.repeat(len(names), 1), logits_to_keep=1).logits
        patched = logit_diff(logits, batch.repeat(len(names))).unflatten(0, (len(names), len(batch)))
        return patched, logit_diff(clean_logits, batch), logit_diff(corrupt_logits, batch)


def _mean_normalized_effect(metrics: Callable[[ContrastBatch], tuple], batches: Sequence[ContrastBatch], desc: str) -> np.ndarray:
    """Average patched, clean and corrupted metrics over all prompts, then normalize."""
    if not batches:
        raise ValueError("No batches to patch")
    patched_sum, clean_sum, corrupt_sum, n = 0.0, 0.0, 0.0, 0
    for batch in tqdm(batches, desc=desc, unit="batch"):
        patched, clean, corrupt = metrics(batch)
        patched_sum = patched_sum + patched.sum(-1).cpu().numpy()
        clean_sum, corrupt_sum, n = clean_sum + clean.sum().item(), corrupt_sum + corrupt.sum().item(), n + len(batch)
    return normalized_effect(patched_sum / n, clean_sum / n, corrupt_sum / n)


HEAD_PATHS = {"frozen": head_direct_metrics, "mlps_recomputed": head_metrics_mlps_recomputed}


def head_effects(model: LoadedModel, batches: Sequence[ContrastBatch], head_paths: str = "frozen") -> np.ndarray:
    """Normalized direct effect of every attention head, shape (layers, heads).

    ``head_paths`` picks what a direct path leaves out: ``"frozen"`` (every later component)
    or ``"mlps_recomputed"`` (later attention only; the authors' form).
    """
    if head_paths not in HEAD_PATHS:
        raise ValueError(f"head_paths must be one of {sorted(HEAD_PATHS)}, got {head_paths!r}")
    metrics = HEAD_PATHS[head_paths]
    return _mean_normalized_effect(lambda b: metrics(model, b), batches, f"heads: direct paths ({head_paths})")


def mlp_effects(model: LoadedModel, batches: Sequence[ContrastBatch], receiver_layer: int) -> np.ndarray:
    """Normalized effect of each MLP below ``receiver_layer`` along its path into that layer."""
    return _mean_normalized_effect(
        lambda b: mlp_path_metrics(model, b, receiver_layer), batches, f"MLPs: paths into layer {receiver_layer}"
    )


def top_heads(effects: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest |effect|, as (layer, head), strongest first."""
    if not 0 < k <= effects.size:
        raise ValueError(f"k must lie in 1..{effects.size}, got {k}")
    flat = np.argsort(-np.abs(effects), axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(f, effects.shape)) for f in flat]


def mlps_above(effects: np.ndarray, threshold: float) -> list[int]:
    """The MLP layers whose |effect| exceeds ``threshold``."""
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    return [int(m) for m in np.flatnonzero(np.abs(effects) > threshold)]


@dataclass
class FactLookupSelection:
    """Both path-patching steps for one head-path variant, with the per-seed effects."""

    head_paths: str
    head_runs: np.ndarray  # (corruption seeds, layers, heads)
    extraction_heads: list[tuple[int, int]]  # strongest first
    receiver_layer: int  # the earliest extraction head's layer
    mlp_runs: np.ndarray  # (corruption seeds, receiver_layer)
    mlps: list[int]  # the fact-lookup MLPs

    @property
    def head_means(self) -> np.ndarray:
        return self.head_runs.mean(axis=0)

    @property
    def mlp_means(self) -> np.ndarray:
        return self.mlp_runs.mean(axis=0)


def select_fact_lookup(
    model: LoadedModel, corruptions: Sequence[Sequence[ContrastBatch]], *, top_k_heads: int, mlp_threshold: float,
    head_paths: Sequence[str] = tuple(HEAD_PATHS),
) -> dict[str, FactLookupSelection]:
    """The paper's rule for each head-path variant: the top-k heads by mean |direct effect|, then the
    MLPs below the earliest one whose mean |path effect| exceeds the threshold.

    ``corruptions`` holds one list of batches per corruption seed. The MLP step runs once per
    distinct receiver layer, so variants that agree on it share it.
    """
    if not corruptions:
        raise ValueError("No corruptions to patch")
    mlp_runs: dict[int, np.ndarray] = {}
    selections = {}
    for paths in head_paths:
        head_runs = np.stack([head_effects(model, batches, paths) for batches in corruptions])
        heads = top_heads(head_runs.mean(axis=0), top_k_heads)
        receiver = min(layer for layer, _ in heads)
        if receiver == 0:
            raise ValueError("An extraction head lies in layer 0, so no MLP lies below it; patch more facts or keep fewer heads")
        if receiver not in mlp_runs:
            mlp_runs[receiver] = np.stack([mlp_effects(model, batches, receiver) for batches in corruptions])
        runs = mlp_runs[receiver]
        selections[paths] = FactLookupSelection(paths, head_runs, heads, receiver, runs, mlps_above(runs.mean(axis=0), mlp_threshold))
    return selections
