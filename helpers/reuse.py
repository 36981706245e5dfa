"""Reuse of frozen activations: the layers below the lowest edited one run once per prompt.

When only layers ``start`` and above change (a localized edit, its training, the ``full``
relearning attack), the residual stream entering layer ``start`` is the same at every step
and for every localization that starts at or above ``start``. Inside :func:`reusing`, the
forward passes of :mod:`helpers.scoring` (:func:`~helpers.scoring.last_token_logits`,
:func:`~helpers.scoring.final_hidden` given token ids) take that residual stream from a cache
and run only the layers from ``start`` on, with Hugging Face's own masks, rotary embeddings and
key/value cache: the layers below are swapped for pass-through modules for the duration of the
call (:func:`layers_from`). The upper layers, the final norm and the unembedding still run,
with gradients.

The cache holds, per token sequence, the residual stream entering ``start`` (``len x d_model``
floats; filled a batch at a time, a prefix that the batch shares run once) and, per shared
prompt prefix, its key/value cache of the lower layers (which Hugging Face reads to size the
attention masks of the shared-prefix path). It is exact by construction:

- reuse is refused (``ValueError``) when a parameter below ``start`` requires gradients;
- entries are keyed by the identity and in-place version counter of every parameter below
  ``start`` (and the autocast dtype): an optimizer step, a ``copy_`` or a swapped weight
  below ``start`` makes them unreachable, so they are recomputed, never reused stale.

Memory is bounded: entries are evicted, least recently used first, beyond :data:`MAX_BYTES`.

Reuse pays only when the frozen layers are a large enough share of the model: the cache's
bookkeeping (keys, padding, the pass-through swap) costs about as much as a few layers. With the
frozen layers below :data:`MIN_FROZEN_SHARE` of the model, :func:`reusing` runs the full forward
pass (``scripts/benchmark_reuse.py``, float32, 2 cores, before packed batches: training from layer 2
of 18 was 0.94x as fast with reuse, from layer 10 1.27x as fast). With packed batches, on one thread
as in the grid's workers, 50 steps from layer 10 were 1.20x as fast (four alternating repeats, 95%
interval 1.03-1.37): the upper layers' forward and backward passes and the unembedding, a third of
a step's products, still run. A run's measurements score each prompt once, so there the cache is
filled as it is read and gains nothing (1.01x, interval 0.92-1.10); the ``full`` attack's training
is what reuses it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from helpers import scoring
from helpers.models import LoadedModel

MAX_BYTES = 512 * 2**20  # the cache of all models and layers together
MIN_FROZEN_SHARE = 0.25  # reuse only when the layers below `start` are at least this share of the model
_ACTIVE: dict[int, int] = {}  # id(hf_model) -> the layer its forward passes start from inside `reusing`
_STORE: OrderedDict[tuple, tuple] = OrderedDict()  # key -> states or cache layers, least recently used first
_sizes: dict[tuple, int] = {}


class _PassThrough(nn.Module):
    """Stands for a frozen decoder layer whose output is already in the cache."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


@contextmanager
def reusing(model: LoadedModel, start: int, *, enabled: bool = True) -> Iterator[None]:
    """Inside, :mod:`helpers.scoring` runs ``model`` from layer ``start`` on cached residual streams.

    ``enabled=False``, or a ``start`` below :data:`MIN_FROZEN_SHARE` of the layers (``start=0``
    included), changes nothing: the full forward pass runs.
    """
    if not 0 <= start < model.n_layers:
        raise ValueError(f"start must lie in 0..{model.n_layers - 1}, got {start}")
    key, previous = id(model.hf_model), _ACTIVE.get(id(model.hf_model))
    if enabled and start > 0 and start >= MIN_FROZEN_SHARE * model.n_layers and not model.bridge_built:
        _ACTIVE[key] = start
    try:
        yield
    finally:
        if previous is None:
            _ACTIVE.pop(key, None)
        else:
            _ACTIVE[key] = previous


def active_start(model: LoadedModel) -> int | None:
    """The layer ``model``'s forward passes start from (inside :func:`reusing`), or None."""
    return _ACTIVE.get(id(model.hf_model))


def edited_start(model: LoadedModel) -> int:
    """The lowest decoder layer with a parameter that requires gradients (the edited one, inside
    :func:`helpers.finetune.restored`); 0 when the embeddings do or when nothing does."""
    decoder = model.hf_model.get_decoder()
    if any(p.requires_grad for p in decoder.embed_tokens.parameters()):
        return 0
    trained = [i for i, layer in enumerate(decoder.layers) if any(p.requires_grad for p in layer.parameters())]
    return trained[0] if trained else 0


def lower_parameters(model: LoadedModel, start: int) -> list[nn.Parameter]:
    """The parameters the residual stream entering layer ``start`` depends on (embeddings, layers below)."""
    decoder = model.hf_model.get_decoder()
    modules = [decoder.embed_tokens, *decoder.layers[:start]]
    return [p for module in modules for p in module.parameters()]


def _version_key(model: LoadedModel, start: int) -> tuple:
    """What the cached states of layer ``start`` depend on; refuses reuse below a trained weight."""
    parameters = lower_parameters(model, start)
    trained = [p for p in parameters if p.requires_grad]
    if trained:
        raise ValueError(f"Cannot reuse activations entering layer {start}: {len(trained)} parameters below it require gradients")
    autocast = torch.get_autocast_dtype(model.device.type) if torch.is_autocast_enabled(model.device.type) else None
    return (id(model.hf_model), start, autocast, tuple((id(p), p._version) for p in parameters))


@contextmanager
def layers_from(model: LoadedModel, start: int) -> Iterator[None]:
    """Swap the decoder layers below ``start`` for pass-throughs while inside: a forward pass given
    ``inputs_embeds`` then takes them as the residual stream entering layer ``start``."""
    decoder = model.hf_model.get_decoder()
    layers = decoder.layers
    decoder.layers = nn.ModuleList([_PassThrough() for _ in range(start)] + list(layers[start:]))
    try:
        yield
    finally:
        decoder.layers = layers


def _nbytes(item) -> int:
    """Bytes of a tensor, or of a key/value cache layer's keys and values."""
    tensors = [item] if isinstance(item, torch.Tensor) else [item.keys, item.values]
    return sum(t.numel() * t.element_size() for t in tensors)


def _remember(key: tuple, value: tuple) -> None:
    _STORE[key] = value
    _sizes[key] = sum(map(_nbytes, value))
    while sum(_sizes.values()) > MAX_BYTES and len(_STORE) > 1:
        oldest, _ = _STORE.popitem(last=False)
        del _sizes[oldest]


def cache_bytes() -> int:
    """Bytes the cache holds now."""
    return sum(_sizes.values())


def clear() -> None:
    """Empty the cache."""
    _STORE.clear()
    _sizes.clear()


def _left_pad(model: LoadedModel, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and unpadded positions of ``sequences``."""
    width = max(map(len, sequences))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences], device=model.device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=model.device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@contextmanager
def _cacheable() -> Iterator[None]:
    """No autograd graph, and ordinary tensors even inside ``inference_mode`` (a later training step can use them)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


class _Entering(Exception):
    """Stops a forward pass once the residual stream entering the cached layer is read."""

    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def _entering(model: LoadedModel, start: int, **inputs) -> torch.Tensor:
    """The residual stream entering layer ``start`` of one forward pass of ``inputs``; the layers from ``start`` on never run."""
    def stop(module, args, kwargs):
        raise _Entering((args[0] if args else kwargs["hidden_states"]).detach())

    handle = model.hf_model.get_decoder().layers[start].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with _cacheable():
            model.hf_model.base_model(**inputs)
    except _Entering as entering:
        return entering.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"Layer {start} never ran")


def _compute_states(model: LoadedModel, start: int, sequences: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """The residual stream entering layer ``start`` for each sequence, (len, d_model), from one padded batch.

    A token prefix that all sequences share (a prompt's one-shot example) runs once, as in
    :func:`helpers.scoring.last_token_logits`: its own states come from the cache, and the rest of
    every sequence runs on its broadcast key/value cache.
    """
    shared = scoring.shared_prefix_length(model, [list(seq) for seq in sequences])
    if not shared:
        ids, mask, positions = _left_pad(model, sequences)
        hidden = _entering(model, start, input_ids=ids, attention_mask=mask, position_ids=positions)
        return [hidden[row, hidden.shape[1] - len(seq):].clone() for row, seq in enumerate(sequences)]
    prefix_state = states(model, start, [tuple(sequences[0][:shared])])[0]
    with _cacheable():
        cache = model.hf_model.base_model(input_ids=torch.tensor([sequences[0][:shared]], device=model.device), use_cache=True).cache
    scoring.broadcast(cache, len(sequences))
    ids, mask, positions = _left_pad(model, [seq[shared:] for seq in sequences])
    mask = torch.cat([torch.ones(len(sequences), shared, dtype=mask.dtype, device=model.device), mask], 1)
    hidden = _entering(model, start, input_ids=ids, attention_mask=mask, position_ids=positions + shared, cache=cache, use_cache=True)
    return [torch.cat([prefix_state, hidden[row, hidden.shape[1] - (len(seq) - shared):]]) for row, seq in enumerate(sequences)]


def states(model: LoadedModel, start: int, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The residual stream entering layer ``start`` of each token sequence, cached."""
    version = _version_key(model, start)
    keys = [(version, "state", tuple(seq)) for seq in sequences]
    found = {}
    for key in dict.fromkeys(keys):
        if key in _STORE:
            _STORE.move_to_end(key)
            found[key] = _STORE[key][0]
    missing = [key for key in dict.fromkeys(keys) if key not in found]
    if missing:
        for key, state in zip(missing, _compute_states(model, start, [k[2] for k in missing])):
            found[key] = state
            _remember(key, (state,))
    return [found[key] for key in keys]


def _lower_prefix_layers(model: LoadedModel, start: int, prefix: tuple[int, ...]) -> list:
    """The lower layers' key/value cache of a prompt prefix (copies that a caller may expand)."""
    key = (_version_key(model, start), "prefix", prefix)
    if key in _STORE:
        _STORE.move_to_end(key)
        layers = _STORE[key]
    else:
        with _cacheable():
            ids = torch.tensor([prefix], device=model.device)
            layers = tuple(model.hf_model.base_model(input_ids=ids, use_cache=True).cache.layers[:start])
        _remember(key, layers)
    return [copy.copy(layer) for layer in layers]


def _padded_states(model: LoadedModel, start: int, sequences: Sequence[Sequence[int]], drop: int) -> torch.Tensor:
    """(n, width, d_model): each sequence's states after its first ``drop`` tokens, left-padded with zeros."""
    rows = [state[drop:] for state in states(model, start, sequences)]
    width = max(len(r) for r in rows)
    padded = rows[0].new_zeros(len(rows), width, rows[0].shape[1])
    for i, row in enumerate(rows):
        padded[i, width - len(row):] = row
    return padded


def _from_layer(model: LoadedModel, start: int, embeds: torch.Tensor, **inputs):
    """Hugging Face's base model output for residual streams ``embeds`` entering layer ``start``."""
    with layers_from(model, start):
        return model.hf_model.base_model(inputs_embeds=embeds, **inputs)


def final_hidden(model: LoadedModel, start: int, sequences: Sequence[Sequence[int]], *, drop: int = 0, **inputs) -> torch.Tensor:
    """Final hidden states of ``sequences`` (left-padded) from layer ``start`` on; ``inputs`` go to Hugging Face.

    ``drop`` leaves out each sequence's first tokens, whose keys and values ``inputs["cache"]`` holds.
    """
    return _from_layer(model, start, _padded_states(model, start, sequences, drop), **inputs).last_hidden_state


def packed_final_hidden(model: LoadedModel, start: int, sequences: Sequence[Sequence[int]], shared: int, **inputs) -> torch.Tensor:
    """Final hidden states (1, L, d_model) of ``sequences`` packed as :func:`helpers.packing.pack` packs them (their
    first ``shared`` tokens once), from layer ``start`` on; ``inputs`` (the pack's positions and mask) go to Hugging Face."""
    rows = states(model, start, sequences)
    embeds = torch.cat([rows[0][:shared], *(row[shared:] for row in rows)])[None]
    return _from_layer(model, start, embeds, **inputs).last_hidden_state


def prefix_cache(model: LoadedModel, start: int, prefix: Sequence[int]):
    """The key/value cache of a prompt prefix: the lower layers' from the cache, the upper layers' computed now."""
    prefix = tuple(prefix)
    cache = _from_layer(model, start, states(model, start, [prefix])[0][None], use_cache=True).cache
    cache.layers[:start] = _lower_prefix_layers(model, start, prefix)
    return cache
