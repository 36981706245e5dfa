"""Packed batches: the prompts of a batch laid end to end in one sequence, their shared prefix once.

A batch of prompts that share a token prefix (the sports prompt's one-shot example, 13 of its
~21 tokens) can run as one sequence ``prefix, rest_1, rest_2, ...``: each rest keeps the
positions it has in its own prompt (``shared, shared + 1, ...``) and attends, through a
block-diagonal causal mask, to the prefix and to its own earlier tokens only. Every token then
sees exactly the keys it sees in its own prompt, so the last token of each rest has its prompt's
final hidden state, to within rounding. Nothing is padded and the prefix runs once, in the same
matrix products as the rests.

On a CPU (2-core AMD EPYC, one thread, float32) this beat the padded batch that runs the prefix
first and the rests on its broadcast key/value cache (:func:`helpers.scoring.last_token_hidden`):
1.1-1.2x for a training step's 32 sports prompts with gradients, 1.3-1.4x for a relearning step's
16 and for 32 scored without gradients (``scripts/benchmark_packing.py``, medians of 7; runs vary
by about 10 %). The whole cpu book did not get measurably faster (chapter 04: 2500 s against 2515).
The mask is dense, so attention costs grow with the square of the packed length: long packs
are split (:func:`pack_groups`), and batches without a shared prefix keep the padded batch,
which was as fast or faster for them (paraphrases, multiple choice, CounterFact prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

PACK_TOKENS = 256  # the most tokens one packed sequence holds (scripts/benchmark_packing.py)
PREFIX = -1  # the segment number of the shared prefix


@dataclass(frozen=True)
class Pack:
    """One packed sequence: its tokens, their positions and segments, and where each prompt ends."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]  # PREFIX for the shared prefix, else the prompt's index within the pack
    ends: list[int]  # the index of each prompt's last token

    def __len__(self) -> int:
        return len(self.tokens)


def pack(ids: Sequence[Sequence[int]], shared: int) -> Pack:
    """Token sequences that share their first ``shared`` tokens, packed: the prefix once, then each rest."""
    if not ids:
        raise ValueError("No sequences to pack")
    if any(len(seq) <= shared or list(seq[:shared]) != list(ids[0][:shared]) for seq in ids):
        raise ValueError(f"Every sequence must start with the same {shared} tokens and go on after them")
    tokens, positions, segments, ends = list(ids[0][:shared]), list(range(shared)), [PREFIX] * shared, []
    for index, seq in enumerate(ids):
        rest = list(seq[shared:])
        tokens += rest
        positions += range(shared, shared + len(rest))
        segments += [index] * len(rest)
        ends.append(len(tokens) - 1)
    return Pack(tokens, positions, segments, ends)


def attention_mask(packed: Pack, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """The additive mask (1, 1, L, L) of a pack: 0 where a token may attend (the prefix, and its own segment up
    to itself), the dtype's lowest value elsewhere."""
    segments = torch.tensor(packed.segments, device=device)
    order = torch.arange(len(packed), device=device)
    allowed = ((segments[None, :] == PREFIX) | (segments[None, :] == segments[:, None])) & (order[None, :] <= order[:, None])
    mask = torch.zeros(len(packed), len(packed), dtype=dtype, device=device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def pack_groups(ids: Sequence[Sequence[int]], shared: int, max_tokens: int | None = None) -> list[list[int]]:
    """The sequences' indices split, in order, into groups whose packs hold at most ``max_tokens`` tokens
    (:data:`PACK_TOKENS` by default; a sequence longer than that alone gets a group of its own)."""
    max_tokens = PACK_TOKENS if max_tokens is None else max_tokens
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    groups: list[list[int]] = []
    length = max_tokens + 1
    for index, seq in enumerate(ids):
        rest = len(seq) - shared
        if length + rest > max_tokens:
            groups.append([])
            length = shared
        groups[-1].append(index)
        length += rest
    return groups
