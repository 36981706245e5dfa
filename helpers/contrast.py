"""Clean prompts, subject-corrupted copies, and the logit-difference metric.

Patching methods compare a model on a clean prompt with the same prompt whose subject was
replaced by random tokens of the same length (seeded). Prompts are grouped into batches of
equal token length, so positions line up and no padding is needed. The metric is the logit
difference between the true answer and the mean of the foils (the wrong answers), at the
last position; :func:`normalized_effect` maps it to 0 (corrupt) .. 1 (clean).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from helpers.models import LoadedModel
from helpers.scoring import first_token_ids


@dataclass
class ContrastBatch:
    """Equal-length clean and corrupted prompts with their answers."""

    clean: torch.Tensor  # (n, T) token ids, BOS first
    corrupt: torch.Tensor  # (n, T) the same with subject tokens replaced
    subject: torch.Tensor  # (n, T) bool, True at the subject's tokens
    answer: torch.Tensor  # (n,) first token of the true answer
    foils: torch.Tensor  # (n, k) first tokens of the wrong answers

    def __len__(self) -> int:
        return self.clean.shape[0]

    def _tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    def to(self, device: torch.device) -> ContrastBatch:
        return ContrastBatch(*(t.to(device) for t in self._tensors()))

    def rows(self, index: slice | torch.Tensor) -> ContrastBatch:
        """The prompts ``index`` selects, as a batch of their own (a few prompts to patch by hand)."""
        return ContrastBatch(*(t[index] for t in self._tensors()))

    def repeat(self, times: int) -> ContrastBatch:
        """The batch stacked ``times`` times, to patch many components in one forward pass."""
        return ContrastBatch(*(t.repeat(times, *[1] * (t.ndim - 1)) for t in self._tensors()))


def subject_span(tokenizer, prompt: str, subject: str) -> tuple[list[int], range]:
    """Token ids of ``prompt`` (with BOS) and the positions of ``subject``'s tokens in them."""
    start = prompt.find(subject)
    if start < 0:
        raise ValueError(f"Subject {subject!r} does not occur in prompt {prompt!r}")
    ids = tokenizer(prompt)["input_ids"]
    before = len(tokenizer(prompt[:start].rstrip(" ") if start else "")["input_ids"])
    through = len(tokenizer(prompt[: start + len(subject)])["input_ids"])
    if ids[:through] != tokenizer(prompt[: start + len(subject)])["input_ids"]:
        raise ValueError(f"Subject {subject!r} does not start on a token boundary in {prompt!r}")
    return ids, range(before, through)


def ordinary_token_ids(tokenizer) -> np.ndarray:
    """Vocabulary ids that are not special or placeholder tokens (the corruption's alphabet)."""
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    return np.array(sorted(i for t, i in vocab.items() if i not in special and not t.startswith("<")))


def contrast_batches(
    model: LoadedModel,
    prompts: Sequence[str],
    subjects: Sequence[str],
    answers: Sequence[str],
    foils: Sequence[Sequence[str]],
    *,
    seed: int,
    batch_size: int = 16,
) -> list[ContrastBatch]:
    """Group prompts by token length and corrupt each subject with random tokens (seeded)."""
    if not prompts:
        raise ValueError("No prompts to contrast")
    if not len(prompts) == len(subjects) == len(answers) == len(foils):
        raise ValueError("prompts, subjects, answers and foils must have the same length")
    tokenizer = model.tokenizer
    rng = np.random.default_rng(seed)
    alphabet = ordinary_token_ids(tokenizer)
    by_length: dict[int, list[tuple]] = defaultdict(list)
    for prompt, subject, answer, wrong in zip(prompts, subjects, answers, foils):
        ids, span = subject_span(tokenizer, prompt, subject)
        corrupt = list(ids)
        for position in span:
            corrupt[position] = int(rng.choice(alphabet))
        mask = [position in span for position in range(len(ids))]
        answer_id = first_token_ids(tokenizer, [answer])[0]
        foil_ids = first_token_ids(tokenizer, list(wrong))
        if answer_id in foil_ids:
            raise ValueError(f"Answer {answer!r} shares its first token with a foil in {list(wrong)}")
        by_length[len(ids)].append((ids, corrupt, mask, answer_id, foil_ids))
    batches = []
    for length in sorted(by_length):
        rows = by_length[length]
        for start in range(0, len(rows), batch_size):
            chunk = list(zip(*rows[start : start + batch_size]))
            batches.append(ContrastBatch(*(torch.tensor(column) for column in chunk)).to(model.device))
    return batches


def logit_diff(logits: torch.Tensor, batch: ContrastBatch) -> torch.Tensor:
    """Last-position logit of the answer minus the mean logit of the foils, per prompt."""
    last = logits[:, -1, :] if logits.ndim == 3 else logits
    answer = last.gather(1, batch.answer[:, None])[:, 0]
    return answer - last.gather(1, batch.foils).mean(dim=1)


def normalized_effect(patched: float | np.ndarray, clean: float, corrupt: float) -> np.ndarray:
    """Map a mean metric to 0 (corrupted run) .. 1 (clean run)."""
    if abs(clean - corrupt) < 1e-6:
        raise ValueError("Clean and corrupted runs give the same metric; the corruption changes nothing")
    return (np.asarray(patched) - corrupt) / (clean - corrupt)
