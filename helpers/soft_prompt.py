"""The soft-prompt attack: a learned universal prefix that tries to bring forgotten facts back.

``n_vectors`` free embedding vectors are inserted between BOS and the fact prompt's tokens
and trained with Adam, all model weights frozen, to maximize log P(true) on the relearned
half of the forget set (:func:`helpers.relearning.relearning_split`); P(true) is measured on
the held-out half, before (no prefix), at the prefix's random start and after training.
Probabilities follow the task's convention:
renormalized over the candidate answers for sports, over the full vocabulary for
CounterFact; the training objective is the log of that same probability.

The prefix lives in the space of the model's input embeddings, i.e. the output of its
embedding module: Gemma3 multiplies token embeddings by sqrt(d_model) there, and uses
``inputs_embeds`` as given. Each vector is trained in units of the mean token-embedding norm
(so one learning rate suits any model) and projected after every step to a norm of at most
``max_norm`` such units.

Whether the attack is read at all follows :func:`helpers.relearning.is_informative`, applied to
what the *training* did: mean P(true) on the trained half with the trained prefix must exceed
its value with the untrained random start by at least ``INFORMATIVE_MARGIN``. The start is the
baseline, not the plain prompt, because a random prefix alone can move P(true) (it shifts
every position of an edit tuned on the plain prompt): an attack that barely left its start
would otherwise pass for one that worked.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from helpers.models import LoadedModel
from helpers.precision import CHOICES, Precision
from helpers.relearning import is_informative, preserved_flags, relearning_split, split_p_true
from helpers.scoring import broadcast, final_hidden, first_token_ids, shared_prefix_length, unembed
from helpers.tasks import EditTask


@dataclass(frozen=True)
class SoftPromptConfig:
    """Hyper-parameters of the soft-prompt attack."""

    n_vectors: int = 8
    max_norm: float = 1.0  # per vector, in units of the mean token-embedding norm
    steps: int = 50
    learning_rate: float = 1e-2  # Adam, on the vectors in units of the mean token-embedding norm
    batch_size: int = 16  # facts per step (and per evaluation batch)
    precision: str = "auto"  # "bfloat16": autocast matmuls to bf16; "auto": where the hardware has native bf16

    def __post_init__(self) -> None:
        checks = {
            "n_vectors": self.n_vectors >= 1, "max_norm": self.max_norm > 0, "steps": self.steps >= 1,
            "learning_rate": 0 < self.learning_rate < 10, "batch_size": self.batch_size >= 1,
            "precision": self.precision in CHOICES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SoftPromptConfig values out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


# Each embedding matrix's mean norm by id(matrix): the matrix (weakly), the state it was computed in, the value.
_EMBEDDING_NORMS: dict[int, tuple[weakref.ref, tuple, float]] = {}


def mean_embedding_norm(model: LoadedModel, chunk: int = 16384) -> float:
    """Mean norm over the vocabulary of the embedding module's outputs (scaling included).

    Gemma's 262,144 embeddings take about half a second to pass, and every attack asks again, so
    the value is kept per embedding matrix until the matrix changes: an in-place update bumps its
    version counter, a cast or a swapped ``.data`` changes its dtype or storage.
    """
    embedding = model.hf_model.get_input_embeddings()
    weight = embedding.weight
    state = (weight._version, weight.dtype, weight.data_ptr())
    kept = _EMBEDDING_NORMS.get(id(weight))
    if kept is not None and kept[0]() is weight and kept[1] == state:
        return kept[2]
    n = embedding.num_embeddings
    with torch.no_grad():
        norms = [embedding(torch.arange(start, min(start + chunk, n), device=model.device)).float().norm(dim=-1)
                 for start in range(0, n, chunk)]
    value = float(torch.cat(norms).mean())
    _EMBEDDING_NORMS[id(weight)] = (weakref.ref(weight), state, value)
    return value


PREFIX_MARK = -1  # stands for a prefix vector in the token lists that decide the shared part


def prefixed_logits(
    model: LoadedModel, prompts: Sequence[str], prefix: torch.Tensor, *, share_prefix: bool = True,
) -> torch.Tensor:
    """Last-position logits (n, vocab) of the prompts with ``prefix`` (k, d) inserted after BOS.

    Each row is ``[BOS, prefix, prompt tokens]``, left-padded, positions counted from BOS. The part
    every row shares (BOS, the prefix, and the start the prompts have in common, such as the sports
    prompt's one-shot example) runs once and its key/value cache serves every row, by the rule of
    :func:`helpers.scoring.shared_prefix_length`; ``share_prefix=False`` runs the whole padded batch
    (the same logits and gradients, to float rounding). ``k = 0`` gives the plain prompts.
    """
    tokenizer = model.tokenizer
    ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    if any(seq[0] != tokenizer.bos_token_id for seq in ids):
        raise ValueError("The tokenizer must start every prompt with BOS")
    embed = model.hf_model.get_input_embeddings()
    rows = []
    for seq in ids:
        tokens = embed(torch.tensor(seq, device=model.device))
        rows.append(torch.cat([tokens[:1], prefix.to(tokens.dtype), tokens[1:]]))
    marked = [seq[:1] + [PREFIX_MARK] * len(prefix) + seq[1:] for seq in ids]  # the token rule sees the prefix
    shared = shared_prefix_length(model, marked) if share_prefix and not model.bridge_built else 0
    embeds, attention_mask = _left_padded_embeddings([row[shared:] for row in rows])
    position_ids = shared + (attention_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {"inputs_embeds": embeds, "position_ids": position_ids}
    if shared:
        cache = model.hf_model.base_model(inputs_embeds=rows[0][None, :shared], use_cache=True).cache
        attention_mask = torch.cat([attention_mask.new_ones(len(rows), shared), attention_mask], 1)
        inputs |= {"cache": broadcast(cache, len(rows)), "use_cache": True}
    hidden = final_hidden(model, attention_mask=attention_mask, **inputs)
    return unembed(model, hidden[:, -1]).float()


def _left_padded_embeddings(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, width, d) embeddings left-padded with zeros, and their (n, width) attention mask."""
    width = max(len(row) for row in rows)
    embeds = torch.stack([F.pad(row, (0, 0, width - len(row), 0)) for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=embeds.device)
    return embeds, mask


def true_log_probs(
    model: LoadedModel, logits: torch.Tensor, true: Sequence[str], candidates: tuple[str, ...] | None,
) -> torch.Tensor:
    """log P(true) per row: over the candidates' first tokens if given, else over the vocabulary."""
    if candidates is None:
        targets = torch.tensor(first_token_ids(model.tokenizer, true), device=logits.device)
        return logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]
    candidate_logits = logits[:, first_token_ids(model.tokenizer, candidates)]
    indices = torch.tensor([candidates.index(answer) for answer in true], device=logits.device)
    return candidate_logits.log_softmax(-1).gather(1, indices[:, None])[:, 0]


def prefixed_p_true(
    model: LoadedModel, frame: pd.DataFrame, candidates: tuple[str, ...] | None, prefix: torch.Tensor, batch_size: int = 16,
) -> float:
    """Mean P(true) on ``frame``'s fact prompts with ``prefix`` inserted after BOS."""
    with torch.no_grad():
        log_probs = [
            true_log_probs(model, prefixed_logits(model, part.prompt.tolist(), prefix), part.true.tolist(), candidates)
            for part in (frame.iloc[start : start + batch_size] for start in range(0, len(frame), batch_size))
        ]
    return float(torch.cat(log_probs).exp().mean())


def initial_units(model: LoadedModel, config: SoftPromptConfig, seed: int) -> torch.Tensor:
    """The prefix's random start (seeded), in units of the mean token-embedding norm: each vector of norm min(1, max_norm)."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(config.n_vectors, model.hf_model.config.get_text_config().hidden_size, generator=generator)
    return (start / start.norm(dim=-1, keepdim=True) * min(1.0, config.max_norm)).to(model.device)


def train_soft_prompt(
    model: LoadedModel, frame: pd.DataFrame, candidates: tuple[str, ...] | None, config: SoftPromptConfig,
    *, seed: int, progress: bool = True,
) -> torch.Tensor:
    """A prefix (n_vectors, d) maximizing mean log P(true) on ``frame``; the model is untouched."""
    if frame.empty:
        raise ValueError("No facts to train the soft prompt on")
    scale = mean_embedding_norm(model)
    rng = np.random.default_rng(seed)
    units = initial_units(model, config, seed).requires_grad_(True)
    optimizer = torch.optim.Adam([units], lr=config.learning_rate)
    with preserved_flags(model):
        model.hf_model.eval()
        for parameter in model.hf_model.parameters():
            parameter.requires_grad_(False)
        precision = Precision(model, config.precision)
        for _ in tqdm(range(config.steps), desc="soft prompt", disable=not progress, unit="step"):
            facts = frame.iloc[rng.permutation(len(frame))[: config.batch_size]]
            with precision.active():
                logits = prefixed_logits(model, facts.prompt.tolist(), units * scale)
            loss = -true_log_probs(model, logits, facts.true.tolist(), candidates).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                units.mul_((config.max_norm / units.norm(dim=-1, keepdim=True)).clamp(max=1.0))
    return (units * scale).detach()


def soft_prompt_attack(
    model: LoadedModel, task: EditTask, config: SoftPromptConfig, *, seed: int, progress: bool = True,
    before: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Train a soft prompt on the relearned half of the forget set; P(true) before and after.

    ``..._before`` is the plain fact prompt, ``..._start`` has the untrained random prefix and
    ``..._after`` the trained one. The held-out half gives ``soft_prompt_p_true_*`` and
    ``soft_prompt_error`` (1 - P(true) after); the trained half gives ``soft_prompt_train_p_true_*``.
    ``soft_prompt_informative`` applies :func:`helpers.relearning.is_informative` to the trained
    half, from the start to after training: only then does the held-out number say anything
    about the edit. ``before``, when given, is :func:`helpers.relearning.split_p_true` of this
    model with this seed (the plain prompts' P(true), which the relearning attacks measure too).
    """
    learned, held_out = relearning_split(task, seed)
    prefix = train_soft_prompt(model, learned, task.candidates, config, seed=seed, progress=progress)
    start = initial_units(model, config, seed) * mean_embedding_norm(model)
    before, train_before = before or split_p_true(model, task, seed)
    fit = {name: prefixed_p_true(model, half, task.candidates, vectors, config.batch_size)
           for name, half, vectors in (("start", held_out, start), ("train_start", learned, start),
                                       ("after", held_out, prefix), ("train_after", learned, prefix))}
    return {
        "soft_prompt_p_true_before": before,
        "soft_prompt_p_true_start": fit["start"],
        "soft_prompt_p_true_after": fit["after"],
        "soft_prompt_error": 1 - fit["after"],
        "soft_prompt_train_p_true_before": train_before,
        "soft_prompt_train_p_true_start": fit["train_start"],
        "soft_prompt_train_p_true_after": fit["train_after"],
        "soft_prompt_informative": is_informative(fit["train_start"], fit["train_after"]),
    }
