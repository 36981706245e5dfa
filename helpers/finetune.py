"""Localized fine-tuning: train only a localization's weights to edit or unlearn facts.

Each step minimizes the paper's loss, ``c_f * L_forget + L_maintain + L_retain``:

- ``L_forget``: for an edit, cross-entropy at the last prompt token toward the new answer;
  for unlearning, the authors' ``-log(1 - P(true))``, computed stably from the other tokens'
  probabilities and dropped for a fact once ``log P(true) < unlearn_floor`` (-5: the fact is
  already forgotten). It has no cap, so the surest facts get the largest push;
- ``L_maintain``: cross-entropy toward the true answer on other facts of the same kind;
- ``L_retain``: next-token loss on general text, estimated on a random subset of positions.

AdamW without weight decay, cosine schedule, gradient clipping. Only the localization's
parameters require gradients; :class:`restored` puts the original weights back in place
afterwards, so many runs share one loaded model. The trained weights are stepped in float32
even when the model holds bf16 weights (:class:`Float32Masters`; such a model computes in
bf16 and is left holding bf16 weights), so small updates add up instead of rounding away.

**Edits of matched strength.** A run trains until its edit is complete, or until the step cap
``steps`` (the cosine schedule spans the cap). Every ``check_every`` steps, and at the cap, one
batched scoring call measures the trained facts (``forget_train``; for Sports-Sport-Edit the
trained half) in the training format, with the task's probability convention
(:func:`helpers.scoring.fact_probabilities`). The written criterion: an edit is complete when
mean P(new) >= ``min_p_new`` (.9) and mean P(true) <= ``max_p_true`` (.1); unlearning when mean
P(true) <= ``max_p_true``. :func:`criterion_shortfall` says how far a check is from it (0 when
complete). The log keeps every check, the steps taken and whether the criterion was reached, so
localizations are compared at the same edit strength, not at the same number of steps. A
``checkpoint`` function, when given, measures more at every check (the robustness measures of
the strength curve, :mod:`helpers.robustness`); its values join the check's row of the log.

What makes it fast on a CPU, without changing the loss: only the last position's logits are
computed for the fact losses, and only the sampled positions' logits for the retain loss (the
262k-token unembedding dominates a small model's cost), as 2-D matrix products in vocabulary
blocks (:func:`helpers.scoring.unembed`); AdamW runs as one fused kernel (:func:`adamw`); a
prompt prefix shared by a batch runs once, the batch packed into one sequence without padding
(:func:`helpers.scoring.last_token_logits`, :mod:`helpers.packing`); layers
below the first trainable one build no autograd graph, because nothing below them requires gradients, and they run once per prompt and
general-text chunk, not once per step: the residual stream entering the lowest trained layer is
cached (:mod:`helpers.reuse`; ``reuse_frozen=False`` turns it off). ``precision="bfloat16"``
runs the matrix products in bf16 (:class:`helpers.precision.Precision`): faster than float32 on a
CPU with native bf16 (AVX512-BF16, AMX; by how much depends on the float32 kernels it is compared
with: ``book/run_it_yourself.md``) and far slower on one without, so the default ``"auto"``
picks it only where it is native (:func:`helpers.precision.resolve_precision`); the losses differ
by rounding (``scripts/benchmark_finetune.py`` measures both on the machine it runs on). The forget
and maintain prompts share one forward pass, and every loss term's rows one product with the unembedding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.precision import CHOICES, Precision
from helpers.reuse import reusing
from helpers.scoring import fact_probabilities, final_hidden, first_token_ids, last_token_hidden, last_token_logits, unembed
from helpers.tasks import MODES, EditTask
from helpers.validation import check_texts


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one fine-tuning run."""

    learning_rate: float = 1e-5
    forget_weight: float = 1.0  # c_f
    steps: int = 50  # the step cap: training stops earlier once the edit is complete
    batch_size: int = 16  # facts per step, for the forget and for the maintain loss
    retain_batch_size: int = 4  # general-text sequences per step
    retain_length: int = 64  # tokens per general-text sequence
    retain_positions: int = 16  # positions per sequence at which the retain loss is computed
    unlearn_floor: float = -5.0  # unlearning drops a fact once log P(true) is below this
    grad_clip: float = 1.0
    warmup_steps: int = 0
    precision: str = "auto"  # "bfloat16": autocast matmuls to bf16 (weights and optimizer stay fp32); "auto": where native
    check_every: int = 5  # steps between completeness checks (and one at the cap); 0: no check, train to the cap
    min_p_new: float = 0.9  # an edit is complete at mean P(new) >= this on the trained facts ...
    max_p_true: float = 0.1  # ... and mean P(true) <= this (unlearning: this alone)

    def __post_init__(self) -> None:
        checks = {
            "learning_rate": 0 < self.learning_rate < 1, "forget_weight": self.forget_weight > 0,
            "steps": self.steps >= 1, "batch_size": self.batch_size >= 1,
            "retain_batch_size": self.retain_batch_size >= 0, "retain_length": self.retain_length >= 2,
            "retain_positions": 1 <= self.retain_positions < self.retain_length,
            "unlearn_floor": self.unlearn_floor < 0, "grad_clip": self.grad_clip > 0,
            "warmup_steps": 0 <= self.warmup_steps < self.steps,
            "precision": self.precision in CHOICES, "check_every": self.check_every >= 0,
            "min_p_new": 0 < self.min_p_new < 1, "max_p_true": 0 < self.max_p_true < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TrainingConfig values out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


def adamw(parameters: Sequence[torch.nn.Parameter], learning_rate: float) -> torch.optim.AdamW:
    """AdamW without weight decay, PyTorch's fused kernel: the same update as the default loop to within
    rounding, about 5x faster on a CPU (94M float32 weights: 43 ms a step against 239, two cores)."""
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0, fused=True)


def answer_logits(model: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Last-position logits (n, vocab) in float32, with gradients (a shared prompt prefix runs once)."""
    return last_token_logits(model, list(prompts)).float()


def joint_answer_logits(
    model: LoadedModel, *prompt_lists: Sequence[str], extra: torch.Tensor | None = None, one_unembedding: bool = True,
) -> tuple[torch.Tensor, ...]:
    """:func:`answer_logits` of several prompt lists from one forward pass, then the logits of the ``extra`` hidden
    rows (the retain loss's, :func:`retain_rows`) when given, all in float32.

    The prompts' and the extra rows go through one product with the unembedding, so its 262k-row
    matrix is read once in the forward and once in the backward pass, not once per loss term;
    ``one_unembedding=False`` multiplies them apart (the same logits; ``scripts/benchmark_kernels.py`` times both).
    """
    sizes = [len(prompts) for prompts in prompt_lists]
    hidden = last_token_hidden(model, [prompt for prompts in prompt_lists for prompt in prompts])
    if extra is None:
        logits = unembed(model, hidden)
    elif one_unembedding:
        logits = unembed(model, torch.cat([hidden, extra.to(hidden.dtype)]))
    else:
        logits = torch.cat([unembed(model, hidden), unembed(model, extra)])
    return logits.float().split(sizes + ([len(extra)] if extra is not None else []))


def answer_loss(model: LoadedModel, logits: torch.Tensor, answers: Sequence[str]) -> torch.Tensor:
    """Mean cross-entropy of each answer's first token under last-position ``logits``."""
    targets = torch.tensor(first_token_ids(model.tokenizer, answers), device=logits.device)
    return F.cross_entropy(logits, targets)


def unlearning_loss(
    model: LoadedModel, logits: torch.Tensor, true_answers: Sequence[str], floor: float = -5.0
) -> torch.Tensor:
    """Mean over facts of ``-log(1 - P(true))`` under last-position ``logits``, 0 for facts with ``log P(true) < floor``.

    ``log(1 - P(true))`` is the log-sum-exp of every other token's log-probability, which stays
    finite and has a gradient however close P(true) is to 1.
    """
    targets = torch.tensor(first_token_ids(model.tokenizer, true_answers), device=logits.device)[:, None]
    log_probs = logits.log_softmax(-1)
    log_p = log_probs.gather(1, targets)[:, 0]
    log_rest = log_probs.scatter(1, targets, float("-inf")).logsumexp(-1)
    return torch.where(log_p < floor, torch.zeros_like(log_rest), -log_rest).mean()


def retain_chunks(model: LoadedModel, texts: Sequence[str], length: int) -> torch.Tensor:
    """General text cut into token sequences of ``length`` (BOS first), shape (n_chunks, length)."""
    texts = check_texts(texts, "the general text argument")
    ids = [i for text in texts for i in model.tokenizer(text, add_special_tokens=False)["input_ids"]]
    body = length - 1
    n = len(ids) // body
    if n == 0:
        raise ValueError(f"The general text has fewer than {body} tokens")
    chunks = torch.tensor(ids[: n * body]).view(n, body)
    bos = torch.full((n, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, chunks], dim=1)


def retain_rows(model: LoadedModel, chunks: torch.Tensor, n_positions: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The retain loss's inputs: final hidden states at ``n_positions`` random positions of each general-text
    sequence, flattened to (rows, d_model), and the next token at each. Its logits come from :func:`joint_answer_logits`."""
    length = chunks.shape[1]
    positions = torch.randperm(length - 1, generator=generator)[:n_positions].sort().values
    hidden = final_hidden(model, input_ids=chunks.to(model.device))[:, positions.to(model.device)]
    return hidden.flatten(0, 1), chunks[:, positions + 1].flatten().to(model.device)


@dataclass(frozen=True)
class StepLoss:
    """The terms of one step's loss, scalars that keep their gradients."""

    forget: torch.Tensor
    maintain: torch.Tensor
    retain: torch.Tensor
    total: torch.Tensor  # forget_weight * forget + maintain + retain


def step_loss(
    model: LoadedModel, mode: str, forget: pd.DataFrame, maintain: pd.DataFrame, general: torch.Tensor,
    config: TrainingConfig, generator: torch.Generator,
) -> StepLoss:
    """The paper's loss on one batch: ``c_f * L_forget + L_maintain + L_retain`` (the module doc).

    ``forget`` and ``maintain`` are task rows (``prompt``, ``true``, ``new``); ``mode`` is the
    task's (``"edit"``: toward ``new``; ``"unlearn"``: :func:`unlearning_loss`). ``general`` holds
    the step's general-text sequences, read at ``config.retain_positions`` positions drawn from
    ``generator`` (:func:`retain_rows`); without rows there is no retain loss. One forward pass runs the forget and
    maintain prompts, one product with the unembedding gives every term's logits (:func:`joint_answer_logits`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    retain_hidden, retain_targets = retain_rows(model, general, config.retain_positions, generator) if len(general) else (None, None)
    forget_logits, maintain_logits, *retain_logits = joint_answer_logits(model, forget.prompt, maintain.prompt, extra=retain_hidden)
    if mode == "edit":
        forget_loss = answer_loss(model, forget_logits, forget.new)
    else:
        forget_loss = unlearning_loss(model, forget_logits, forget.true, config.unlearn_floor)
    maintain_loss = answer_loss(model, maintain_logits, maintain.true)
    retain = F.cross_entropy(retain_logits[0], retain_targets) if retain_logits else torch.zeros((), device=model.device)
    return StepLoss(forget_loss, maintain_loss, retain, config.forget_weight * forget_loss + maintain_loss + retain)


@contextmanager
def restored(model: LoadedModel, localization: Localization) -> Iterator[list[torch.nn.Parameter]]:
    """Make only ``localization`` trainable; on exit, put its original weights back in place."""
    trainable = localization.set_trainable(model)
    originals = [p.detach().clone() for p in trainable]
    try:
        yield trainable
    finally:
        with torch.no_grad():
            for parameter, original in zip(trainable, originals):
                parameter.copy_(original)
                parameter.grad = None
        for parameter in model.hf_model.parameters():
            parameter.requires_grad_(False)


def weights_dtype(model: LoadedModel) -> str:
    """The dtype the model holds its weights in (``"float32"``, ``"bfloat16"``), from its embedding."""
    return str(model.hf_model.get_input_embeddings().weight.dtype).removeprefix("torch.")


class Float32Masters:
    """Float32 master copies of trained weights, for a model that holds its weights in bf16.

    AdamW moves a weight by about the learning rate per step, and near |w| = 0.03 a bf16 weight
    can only move in steps of 1.2e-4: updates at the paper's learning rates would round away
    one by one. Inside :meth:`training` the parameters hold their float32 masters, so the
    updates add up; outside they hold the masters rounded to their own dtype, so the model
    is evaluated in the dtype it was loaded in. For float32 weights nothing is copied.
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self.parameters = list(parameters)
        self.dtypes = [p.dtype for p in self.parameters]
        self.masters = [p.detach().float() for p in self.parameters]

    @contextmanager
    def training(self) -> Iterator[None]:
        """Swap the masters in for optimizer steps; on exit keep them and round the weights."""
        for parameter, master in zip(self.parameters, self.masters):
            parameter.data = master
        try:
            yield
        finally:
            self.masters = [p.data for p in self.parameters]
            for parameter, dtype in zip(self.parameters, self.dtypes):
                parameter.data = parameter.data.to(dtype)
                parameter.grad = None


def check_compute_dtype(model: LoadedModel, precision: Precision) -> None:
    """Float32 products need float32 weights: a bf16-loaded model must train under bf16 autocast."""
    dtype = weights_dtype(model)
    if precision.precision == "float32" and dtype != "float32":
        raise ValueError(
            f"The model holds its weights in {dtype}, so it cannot train in float32: load it with "
            f"dtype='float32', or train with precision='bfloat16' (its trained weights get a float32 master copy)"
        )


def criterion_shortfall(p_true: float, p_new: float | None, config: TrainingConfig) -> float:
    """How far mean P(true) and mean P(new) (None for unlearning) are from the completeness criterion; 0 when met."""
    shortfall = max(0.0, p_true - config.max_p_true)
    if p_new is not None:
        shortfall += max(0.0, config.min_p_new - p_new)
    return shortfall


def completeness_check(model: LoadedModel, task: EditTask, config: TrainingConfig, step: int) -> dict:
    """Mean P(true) (and P(new) for an edit) on the trained facts, in the training format, from one scoring call."""
    columns = ["true", "new"] if task.mode == "edit" else ["true"]
    probs = fact_probabilities(model, task.forget_train, columns, task.candidates)
    p_true = float(probs["true"].mean())
    p_new = float(probs["new"].mean()) if task.mode == "edit" else None
    shortfall = criterion_shortfall(p_true, p_new, config)
    return {"step": step, "p_true": p_true, "p_new": p_new, "shortfall": shortfall, "complete": shortfall == 0}


@dataclass
class TrainingLog:
    """Per-step losses, the completeness checks (:func:`completeness_check`) and the wall time of a run."""

    forget: list[float]
    maintain: list[float]
    retain: list[float]
    total: list[float]
    seconds: float
    checks: list[dict] = field(default_factory=list)
    check_seconds: float = 0.0  # the part of ``seconds`` spent on the checks
    checkpoint_seconds: float = 0.0  # the part of ``check_seconds`` spent in the ``checkpoint`` function

    @property
    def steps(self) -> int:
        """The optimizer steps taken."""
        return len(self.total)

    @property
    def reached(self) -> bool | None:
        """Whether the last check met the criterion (None when no check ran)."""
        return self.checks[-1]["complete"] if self.checks else None

    def to_dict(self) -> dict:
        return asdict(self)


Checkpoint = Callable[[LoadedModel, EditTask], dict[str, float]]


def _sample(n_rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` row indices: all rows in random order if there are at most ``k``, else a sample."""
    return rng.permutation(n_rows)[:k] if n_rows > k else rng.permutation(n_rows)


def train_localized(
    model: LoadedModel,
    localization: Localization,
    task: EditTask,
    general_chunks: torch.Tensor,
    config: TrainingConfig,
    *,
    seed: int,
    progress: bool = True,
    reuse_frozen: bool = True,
    checkpoint: Checkpoint | None = None,
) -> TrainingLog:
    """Fine-tune ``localization``'s weights on ``task`` in place (wrap in :func:`restored`).

    Stops once a completeness check meets the criterion, else at the cap ``config.steps`` (module doc).
    ``checkpoint(model, task)`` runs at every completeness check, in the check's precision and
    evaluation mode, and its values join the check's row; it must not change the model.
    ``reuse_frozen`` runs the layers below the localization once per prompt and general-text chunk
    (:mod:`helpers.reuse`); ``False`` runs the full forward pass at every step (same losses).
    """
    if task.forget_train.empty:
        raise ValueError(f"Task {task.name!r} has an empty forget set")
    parameters = [p for p in model.hf_model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("No parameter requires gradients: call inside `with restored(model, localization):`")
    if checkpoint is not None and not config.check_every:
        raise ValueError("A checkpoint runs at the completeness checks: config.check_every must be at least 1")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = adamw(parameters, config.learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    log = TrainingLog([], [], [], [], 0.0)
    start = time.perf_counter()
    precision = Precision(model, config.precision)
    check_compute_dtype(model, precision)
    model.hf_model.train()
    try:
        with Float32Masters(parameters).training():
            for step in tqdm(range(1, config.steps + 1), desc=f"{task.name} / {localization.name}", disable=not progress, unit="step"):
                forget = task.forget_train.iloc[_sample(len(task.forget_train), config.batch_size, rng)]
                maintain = task.maintain_train.iloc[_sample(len(task.maintain_train), config.batch_size, rng)]
                general = general_chunks[:0]
                if config.retain_batch_size:
                    general = general_chunks[torch.randint(len(general_chunks), (config.retain_batch_size,), generator=generator)]
                with precision.active(), reusing(model, localization.start_layer, enabled=reuse_frozen):
                    loss = step_loss(model, task.mode, forget, maintain, general, config, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.total.backward()
                torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                optimizer.step()
                schedule.step()
                for values, term in zip((log.forget, log.maintain, log.retain, log.total), (loss.forget, loss.maintain, loss.retain, loss.total)):
                    values.append(float(term.detach()))
                if not math.isfinite(log.total[-1]):
                    raise FloatingPointError(f"The loss diverged at step {len(log.total)}; lower the learning rate")
                if config.check_every and (step % config.check_every == 0 or step == config.steps):
                    check_start = time.perf_counter()
                    model.hf_model.eval()
                    with precision.active(), reusing(model, localization.start_layer, enabled=reuse_frozen):
                        check = completeness_check(model, task, config, step)
                        if checkpoint is not None:
                            checkpoint_start = time.perf_counter()
                            check |= checkpoint(model, task)
                            log.checkpoint_seconds += time.perf_counter() - checkpoint_start
                        log.checks.append(check)
                    model.hf_model.train()
                    log.check_seconds += time.perf_counter() - check_start
                    if log.checks[-1]["complete"]:
                        break
    finally:
        model.hf_model.eval()
    log.seconds = time.perf_counter() - start
    return log
