"""Probability of candidate answers at the last prompt position, batched.

Every later notebook scores answers through :func:`candidate_probs`: prompts are sorted
by length, left-padded into batches, and only the last position's logits are computed
(the 262k-token unembedding dominates the cost of a small model's forward pass).
An answer is scored by the probability of its first token, written with a leading space.

Prompts that share a token prefix (the one-shot example of the sports prompt is 13 of its
~21 tokens) run the prefix once: on a CPU the batch is packed into one sequence, the prefix
and then every prompt's rest, with a block-diagonal causal mask (:mod:`helpers.packing`);
elsewhere the prefix runs first and every prompt's rest runs on its broadcast key/value cache.
Both are the same computation, gradients included, on less than half the tokens (tests check
the logits and the gradients against the plain batch).

The unembedding is applied here to a 2-D (rows, d_model) matrix (:func:`unembed`): Hugging
Face's ``logits_to_keep`` slices the hidden states into a non-contiguous 3-D tensor, which
sends the 262k-row matrix product down PyTorch's slow batched path (4x slower forward, 8x
backward, measured on this CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers import packing, reuse
from helpers.models import LoadedModel

if TYPE_CHECKING:
    import pandas as pd


def first_token_ids(tokenizer, answers: Sequence[str]) -> list[int]:
    """The id of the first token of ``" " + answer`` for each answer."""
    ids = []
    for answer in answers:
        if not answer or not answer.strip():
            raise ValueError("An answer to score is empty")
        ids.append(tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"][0])
    return ids


MIN_SHARED_PREFIX = 4  # tokens; a shorter shared prefix is not worth running once


def last_token_logits(
    model: LoadedModel, prompts: Sequence[str], *, share_prefix: bool = True, packed: bool = True,
) -> torch.Tensor:
    """Logits at the last position of each prompt (one batch), shape (n, vocab): :func:`unembed` of :func:`last_token_hidden`.

    Where a TransformerLens bridge has been built, the full model computes them (the bridge's
    hooks run inside its forward pass), on the plain batch.
    """
    if model.bridge_built:
        ids = [model.tokenizer(p)["input_ids"] for p in prompts]
        input_ids, attention_mask, position_ids = _left_padded(model, ids, offset=0)
        output = model.hf_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1)
        return output.logits[:, -1, :]
    return unembed(model, last_token_hidden(model, prompts, share_prefix=share_prefix, packed=packed))


def last_token_hidden(
    model: LoadedModel, prompts: Sequence[str], *, share_prefix: bool = True, packed: bool = True,
) -> torch.Tensor:
    """The final (normalized) hidden state at the last position of each prompt (one batch), shape (n, d_model).

    With ``share_prefix``, a token prefix common to all prompts is computed once (see the
    module doc): in packed sequences where :func:`packs` (``packed=False``: on the prefix's
    broadcast cache). The plain batch is used when a TransformerLens bridge has been built (it
    breaks Hugging Face's cache) and when the padded batch is longer than a sliding attention
    window (the window would then count the padding between prefix and rest).
    """
    ids = [model.tokenizer(p)["input_ids"] for p in prompts]
    shared = shared_prefix_length(model, ids)
    if share_prefix and shared and not model.bridge_built:
        if packed and packs(model):
            return packed_last_hidden(model, ids, shared)
        return _hidden_after_shared_prefix(model, ids, shared)
    input_ids, attention_mask, position_ids = _left_padded(model, ids, offset=0)
    start = reuse.active_start(model)
    if start is not None:
        hidden = reuse.final_hidden(model, start, ids, attention_mask=attention_mask, position_ids=position_ids)
    else:
        hidden = final_hidden(model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return hidden[:, -1]


def final_hidden(model: LoadedModel, **inputs) -> torch.Tensor:
    """The last layer's (normalized) hidden states, (batch, positions, d_model), without logits.

    Inside :func:`helpers.reuse.reusing`, unpadded ``input_ids`` (and no other input) start from
    the cached residual stream of the frozen lower layers.
    """
    start = reuse.active_start(model)
    if start is not None and set(inputs) == {"input_ids"}:
        return reuse.final_hidden(model, start, inputs["input_ids"].tolist())
    return model.hf_model.base_model(**inputs).last_hidden_state


VOCAB_BLOCK = 4096  # unembedding rows per matrix product on a CPU (scripts/benchmark_kernels.py)
MAX_BLOCKED_ROWS = 64  # hidden states; the blocked product gained 1.1-4x for 2-64 rows, broke even at 128, lost at 256+


class VocabBlockedLinear(torch.autograd.Function):
    """``hidden @ weight.T`` for a few rows of ``hidden`` and a tall ``weight`` (the unembedding), with its gradients.

    The forward pass multiplies ``weight`` by ``hidden.T`` one block of :data:`VOCAB_BLOCK`
    vocabulary rows at a time: the same products as ``F.linear``, whose single call for a few
    rows against a 262k-row matrix is 1.1-4x slower on a CPU (``scripts/benchmark_kernels.py``
    measures both). The backward pass is ``F.linear``'s own (``grad @ weight``): the transposed
    product that is faster for 12 rows or more was 20x slower for 2 to 8 rows.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight)
        out = hidden.new_empty(weight.shape[0], hidden.shape[0])
        for start in range(0, weight.shape[0], VOCAB_BLOCK):
            torch.mm(weight[start : start + VOCAB_BLOCK], hidden.T, out=out[start : start + VOCAB_BLOCK])
        return out.T.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        hidden, weight = ctx.saved_tensors
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.T @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight


def _blocked_unembedding(head: torch.nn.Module, hidden: torch.Tensor) -> bool:
    """Whether :class:`VocabBlockedLinear` computes ``head(hidden)``: at most :data:`MAX_BLOCKED_ROWS` rows,
    a bias-free float32 head on a CPU, no autocast, and PyTorch's own kernels (oneDNN's single product,
    :class:`helpers.kernels.OneDNNLinear`, is faster than the blocked ones: ``scripts/benchmark_kernels.py``)."""
    return (type(head) is torch.nn.Linear and head.bias is None and hidden.device.type == "cpu"
            and hidden.dim() == 2 and len(hidden) <= MAX_BLOCKED_ROWS
            and hidden.dtype == head.weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


def unembed(model: LoadedModel, hidden: torch.Tensor, *, blocked: bool = True) -> torch.Tensor:
    """Logits of a (rows, d_model) matrix of final hidden states, with the model's logit soft-capping.

    On a CPU in float32, for up to :data:`MAX_BLOCKED_ROWS` rows (a batch's last positions, a
    training step's), the product runs in vocabulary blocks (:class:`VocabBlockedLinear`);
    ``blocked=False`` calls the head module itself (the same logits, to within rounding).
    """
    head = model.hf_model.get_output_embeddings()
    if blocked and _blocked_unembedding(head, hidden):
        logits = VocabBlockedLinear.apply(hidden, head.weight)
    else:
        logits = head(hidden)
    return _soft_capped(model, logits)


def _soft_capped(model: LoadedModel, logits: torch.Tensor) -> torch.Tensor:
    cap = getattr(model.hf_model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


LOSS_VOCAB_BLOCK = 8192  # vocabulary rows per block of next_token_loss: a block's logits stay ~16 MB for 512 rows


def next_token_loss(model: LoadedModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the logits of ``hidden`` (rows, d_model) against ``targets`` (rows,), without the
    (rows, vocabulary) logits: the vocabulary is unembedded :data:`LOSS_VOCAB_BLOCK` rows at a time and a running
    log-sum-exp kept. The same value as ``F.cross_entropy(unembed(model, hidden), targets, reduction="sum")`` to
    within rounding; for 512 rows of a 262k vocabulary it never allocates the 0.5 GB logits and their log-softmax.
    No gradient (an evaluation's loss)."""
    head = model.hf_model.get_output_embeddings()
    bias = getattr(head, "bias", None)
    log_norm = torch.full((len(hidden),), float("-inf"), device=hidden.device)
    target_logit = torch.zeros(len(hidden), device=hidden.device)
    with torch.no_grad():
        for start in range(0, head.weight.shape[0], LOSS_VOCAB_BLOCK):
            stop = start + LOSS_VOCAB_BLOCK
            block = torch.nn.functional.linear(hidden, head.weight[start:stop], None if bias is None else bias[start:stop])
            block = _soft_capped(model, block).float()
            log_norm = torch.logaddexp(log_norm, block.logsumexp(dim=-1))
            inside = (targets >= start) & (targets < stop)
            target_logit[inside] = block[inside, targets[inside] - start]
    return (log_norm - target_logit).sum()


def shared_prefix_length(model: LoadedModel, ids: list[list[int]]) -> int:
    """The length of the token prefix that every sequence shares, or 0 where running it once does not pay or is
    not exact: a prefix shorter than :data:`MIN_SHARED_PREFIX`, a sequence that is nothing but the prefix, or a
    padded batch longer than a sliding attention window (the window would count the padding between prefix and rest)."""
    shared = _common_prefix_length(ids)
    window = getattr(model.hf_model.config, "sliding_window", None) or float("inf")
    if shared >= MIN_SHARED_PREFIX and min(map(len, ids)) > shared and max(map(len, ids)) + shared <= window:
        return shared
    return 0


def _common_prefix_length(ids: list[list[int]]) -> int:
    shortest = min(map(len, ids))
    for i in range(shortest):
        if any(seq[i] != ids[0][i] for seq in ids):
            return i
    return shortest


def _left_padded(model: LoadedModel, ids: list[list[int]], offset: int) -> tuple[torch.Tensor, ...]:
    """Left-padded token ids, attention mask, and positions that start at ``offset`` for real tokens."""
    width = max(map(len, ids))
    pad = model.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(seq)) + seq for seq in ids], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(seq)) + [1] * len(seq) for seq in ids], device=model.device)
    # Left padding shifts the real tokens; give them the positions they have unpadded.
    position_ids = offset + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def _hidden_after_shared_prefix(model: LoadedModel, ids: list[list[int]], shared: int) -> torch.Tensor:
    """Run the shared prefix once, then every prompt's rest on top of its (broadcast) cache; the last positions' states."""
    start = reuse.active_start(model)
    if start is not None:
        cache = reuse.prefix_cache(model, start, ids[0][:shared])
    else:
        prefix = torch.tensor([ids[0][:shared]], device=model.device)
        cache = model.hf_model.base_model(input_ids=prefix, use_cache=True).cache
    broadcast(cache, len(ids))
    input_ids, rest_mask, position_ids = _left_padded(model, [seq[shared:] for seq in ids], offset=shared)
    attention_mask = torch.cat([torch.ones(len(ids), shared, dtype=rest_mask.dtype, device=model.device), rest_mask], 1)
    inputs = {"attention_mask": attention_mask, "position_ids": position_ids, "cache": cache, "use_cache": True}
    if start is not None:
        hidden = reuse.final_hidden(model, start, ids, drop=shared, **inputs)
    else:
        hidden = final_hidden(model, input_ids=input_ids, **inputs)
    return hidden[:, -1]


def packs(model: LoadedModel) -> bool:
    """Whether prompts with a shared prefix run packed (:mod:`helpers.packing`): on a CPU, with an attention that
    takes a custom mask (on a GPU the padded batch's extra tokens cost little)."""
    return model.device.type == "cpu" and model.hf_model.config._attn_implementation in ("eager", "sdpa")


def packed_last_hidden(model: LoadedModel, ids: list[list[int]], shared: int) -> torch.Tensor:
    """The last positions' final states (n, d_model) of token sequences that share their first ``shared`` tokens
    (0: none), run in packed sequences of at most :data:`helpers.packing.PACK_TOKENS` tokens."""
    start = reuse.active_start(model)
    dtype = model.hf_model.get_input_embeddings().weight.dtype
    states = []
    for group in packing.pack_groups(ids, shared):
        sequences = [ids[i] for i in group]
        packed = packing.pack(sequences, shared)
        inputs = {"position_ids": torch.tensor([packed.positions], device=model.device),
                  "attention_mask": packing.attention_mask(packed, dtype, model.device)}
        if start is not None:
            hidden = reuse.packed_final_hidden(model, start, sequences, shared, **inputs)
        else:
            hidden = final_hidden(model, input_ids=torch.tensor([packed.tokens], device=model.device), **inputs)
        states.append(hidden[0, packed.ends])
    return torch.cat(states)


def broadcast(cache, rows: int):
    """A one-row key/value cache (a prefix's) viewed, not copied, as ``rows`` identical rows; returned for chaining."""
    for layer in cache.layers:
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    return cache


def candidate_probs(
    model: LoadedModel,
    prompts: Sequence[str],
    candidates: Sequence[str] | Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "scoring",
) -> np.ndarray:
    """Full-vocabulary probability of each candidate answer, shape (n_prompts, n_candidates).

    ``candidates`` is either one list shared by every prompt (``["basketball", ...]``) or a
    list per prompt (multiple-choice options that differ per question), all of one length.
    """
    if len(prompts) == 0:
        raise ValueError("No prompts to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    shared = all(isinstance(c, str) for c in candidates)
    per_prompt = [list(candidates)] * len(prompts) if shared else [list(c) for c in candidates]
    if len(per_prompt) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(per_prompt)} candidate lists")
    if len({len(c) for c in per_prompt}) != 1:
        raise ValueError("Every prompt needs the same number of candidate answers")
    token_ids = torch.tensor([_distinct_first_tokens(model.tokenizer, c) for c in per_prompt])

    lengths = [len(model.tokenizer(p)["input_ids"]) for p in prompts]
    order = np.argsort(lengths, kind="stable")
    probs = torch.empty(token_ids.shape, dtype=torch.float32)
    starts = range(0, len(prompts), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
            rows = order[start : start + batch_size]
            logits = last_token_logits(model, [prompts[i] for i in rows]).float()
            check_finite(model, logits, [prompts[i] for i in rows])
            vocab_probs = logits.softmax(dim=-1).cpu()
            probs[rows] = vocab_probs.gather(1, token_ids[rows])
    return probs.numpy()


def check_finite(model: LoadedModel, logits: torch.Tensor, prompts: Sequence[str]) -> None:
    """Stop when a prompt's logits hold NaN: broken weights would otherwise score every fact as unknown."""
    broken = torch.isnan(logits).any(dim=-1)
    if broken.any():
        raise FloatingPointError(
            f"Model {model.name!r} gave NaN logits for {int(broken.sum())} of {len(prompts)} prompts, e.g. "
            f"{prompts[int(broken.nonzero()[0])]!r}: its weights are broken (a corrupted cache?) or overflow in {model.hf_model.dtype}"
        )


def renormalize(probs: np.ndarray) -> np.ndarray:
    """Probabilities renormalized over the candidates of each row (the paper's sports score)."""
    return probs / probs.sum(axis=1, keepdims=True)


def _distinct_first_tokens(tokenizer, answers: list[str]) -> list[int]:
    ids = first_token_ids(tokenizer, answers)
    if len(set(ids)) != len(ids):
        raise ValueError(f"Candidate answers {answers} share a first token; they cannot be told apart")
    return ids


def fact_probabilities(
    model: LoadedModel, frame: pd.DataFrame, columns: Sequence[str], candidates: tuple[str, ...] | None,
    *, batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """P of each answer column (``"true"``, ``"new"``) per row of ``frame``'s prompts, from one scoring call.

    Sports tasks (``candidates`` given): renormalized over the candidates; CounterFact (``None``):
    the full-vocabulary probability of each row's answers.
    """
    prompts = frame.prompt.tolist()
    if candidates is None:
        probs = candidate_probs(model, prompts, frame[list(columns)].values.tolist(), batch_size=batch_size, progress=False)
        return {column: probs[:, i] for i, column in enumerate(columns)}
    probs = renormalize(candidate_probs(model, prompts, list(candidates), batch_size=batch_size, progress=False))
    rows = np.arange(len(frame))
    return {column: probs[rows, [candidates.index(a) for a in frame[column]]] for column in columns}


def answer_probabilities(model: LoadedModel, frame: pd.DataFrame, answers: list[str], candidates: tuple[str, ...] | None) -> np.ndarray:
    """P(answer) per row of ``frame``: renormalized over ``candidates`` (sports), else over the full vocabulary."""
    return fact_probabilities(model, frame.assign(answer=answers), ["answer"], candidates)["answer"]
