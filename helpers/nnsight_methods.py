"""Path patching's head step and attribution patching again, written with nnsight's tracing API.

:mod:`helpers.path_patching` and :mod:`helpers.tracing` run through the TransformerLens bridge's
hook points and compute every head at once from cached activations. This module does the same
steps the way an nnsight user writes them: open ``with lm.trace(tokens):``, read a module's
``.input`` or ``.output`` where the forward pass reaches it, overwrite it in place, ``.save()``
what is needed after the block, and open ``with metric.backward():`` to read gradients. The
results equal the bridge helpers' to float32 rounding (``tests/test_nnsight.py``).

Both libraries wrap the same Hugging Face model, and both change its modules in place:

- building the TransformerLens bridge replaces the decoder's modules by the bridge's wrappers
  (each keeps the original module inside);
- nnsight installs a controller as each module's ``forward``. Outside a trace it calls the
  module's own forward and nothing else: no hooks, no copies of the weights.

So nnsight must wrap the model *after* the bridge is built, or it instruments modules that no
longer run. :func:`wrap` builds the bridge first; after it, the bridge, the Hugging Face forward
and the helpers give exactly what they gave before (a test checks it).

**Remote execution.** For models too large for this machine, nnsight can run the same traces on
the NDIF servers (https://ndif.us), which hold the weights of several large open models: load
the model by its hub id, ``lm = TransformersModel("meta-llama/Meta-Llama-3.1-8B",
task="text-generation")`` (only the configuration is downloaded), register an API key once
(``nnsight.CONFIG.set_default_api_key(key)``) and pass ``remote=True`` to the functions below.
It is off by default, and nothing in the book or the tests uses the network: the tests run the
remote code path with ``remote="local"``, which serializes each request and runs it in this
process.
"""

from __future__ import annotations

import torch
from nnsight import TransformersModel

from helpers.contrast import ContrastBatch, logit_diff
from helpers.kernels import weights_frozen
from helpers.models import LoadedModel
from helpers.path_patching import HEAD_PATHS


def wrap(model: LoadedModel) -> TransformersModel:
    """nnsight's view of ``model`` (the same weights), made after its TransformerLens bridge."""
    _ = model.bridge  # building the bridge replaces modules: nnsight must see the ones that run
    return TransformersModel(model.hf_model, tokenizer=model.tokenizer, task="text-generation")


def _shape(lm: TransformersModel) -> tuple[int, int]:
    """Number of layers and of attention heads per layer."""
    config = lm.config.get_text_config()
    return config.num_hidden_layers, config.num_attention_heads


def mlp_out(layer):
    """What a decoder layer's MLP adds to the residual stream (Gemma normalizes it first)."""
    return layer.post_feedforward_layernorm.output if hasattr(layer, "pre_feedforward_layernorm") else layer.mlp.output


def head_path_metrics(
    lm: TransformersModel, batch: ContrastBatch, head_paths: str = "frozen", *, remote: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logit differences (layers, heads, n) with one head's clean output on its direct path.

    Also returns the clean and corrupted logit differences (n,), like
    :func:`helpers.path_patching.head_direct_metrics` (``"frozen"``) and
    :func:`helpers.path_patching.head_metrics_mlps_recomputed` (``"mlps_recomputed"``).
    One patched run per layer: the corrupted batch repeated once per head, copy ``h`` taking
    head ``h``'s clean result (the input of ``o_proj``) while every later attention output
    (and, for ``"frozen"``, every MLP output from the head's layer on) keeps its corrupted value.
    """
    if head_paths not in HEAD_PATHS:
        raise ValueError(f"head_paths must be one of {sorted(HEAD_PATHS)}, got {head_paths!r}")
    n_layers, n_heads = _shape(lm)
    layers, n = lm.model.layers, len(batch)
    with torch.inference_mode():
        with lm.trace(batch.clean, remote=remote):
            clean_z = [layers[layer].self_attn.o_proj.input for layer in range(n_layers)].save()
            clean = logit_diff(lm.lm_head.output, batch).save()
        with lm.trace(batch.corrupt, remote=remote):
            corrupt_attn, corrupt_mlp = [], []
            for layer in range(n_layers):
                corrupt_attn.append(layers[layer].self_attn.output[0])
                corrupt_mlp.append(mlp_out(layers[layer]))
            corrupt_attn.save()
            corrupt_mlp.save()
            corrupt = logit_diff(lm.lm_head.output, batch).save()
        d_head = clean_z[0].shape[-1] // n_heads
        copies = batch.repeat(n_heads)
        patched = []
        for layer in range(n_layers):
            with lm.trace(copies.corrupt, remote=remote):
                z = layers[layer].self_attn.o_proj.input  # (heads * n, T, heads * d_head)
                for head in range(n_heads):
                    dims = slice(head * d_head, (head + 1) * d_head)
                    z[head * n : (head + 1) * n, :, dims] = clean_z[layer][:, :, dims]
                if head_paths == "frozen":
                    mlp_out(layers[layer])[:] = corrupt_mlp[layer].repeat(n_heads, 1, 1)
                for later in range(layer + 1, n_layers):
                    layers[later].self_attn.output[0][:] = corrupt_attn[later].repeat(n_heads, 1, 1)
                    if head_paths == "frozen":
                        mlp_out(layers[later])[:] = corrupt_mlp[later].repeat(n_heads, 1, 1)
                metric = logit_diff(lm.lm_head.output, copies).save()
            patched.append(metric.view(n_heads, n))
    return torch.stack(patched), clean, corrupt


def attribution_metrics(
    lm: TransformersModel, batch: ContrastBatch, *, remote: bool | str = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimated metric changes for one batch: heads (n, L, H), MLPs (n, L), clean and corrupt (n,).

    As :func:`helpers.tracing.attribution_batch`: (corrupt - clean activation) x the gradient of
    the logit difference on the clean run, summed over positions (and d_head or d_model), for
    every head's result (the input of ``o_proj``) and every MLP output.
    """
    n_layers, n_heads = _shape(lm)
    layers = lm.model.layers
    with torch.inference_mode(), lm.trace(batch.corrupt, remote=remote):
        corrupt_z, corrupt_mlp = [], []
        for layer in range(n_layers):
            corrupt_z.append(layers[layer].self_attn.o_proj.input)
            corrupt_mlp.append(mlp_out(layers[layer]))
        corrupt_z.save()
        corrupt_mlp.save()
        corrupt = logit_diff(lm.lm_head.output, batch).save()
    with weights_frozen(lm), lm.trace(batch.clean, remote=remote):
        lm.model.embed_tokens.output.requires_grad_()  # the graph starts at the embeddings
        clean_z, clean_mlp = [], []
        for layer in range(n_layers):
            clean_z.append(layers[layer].self_attn.o_proj.input)
            clean_mlp.append(mlp_out(layers[layer]))
        metric = logit_diff(lm.lm_head.output, batch)
        with metric.sum().backward():  # gradients arrive in reverse order of the forward pass
            grad_z, grad_mlp = [None] * n_layers, [None] * n_layers
            for layer in reversed(range(n_layers)):
                grad_mlp[layer] = clean_mlp[layer].grad
                grad_z[layer] = clean_z[layer].grad
            grad_z.save()
            grad_mlp.save()
        clean_z = [z.detach() for z in clean_z].save()
        clean_mlp = [m.detach() for m in clean_mlp].save()
        clean = metric.detach().save()
    with torch.no_grad():
        heads = [
            ((after - before) * grad).unflatten(-1, (n_heads, -1)).sum(dim=(1, 3))  # (n, heads)
            for after, before, grad in zip(corrupt_z, clean_z, grad_z)
        ]
        mlps = [((after - before) * grad).sum(dim=(1, 2)) for after, before, grad in zip(corrupt_mlp, clean_mlp, grad_mlp)]
    return torch.stack(heads, dim=1), torch.stack(mlps, dim=1), clean, corrupt
