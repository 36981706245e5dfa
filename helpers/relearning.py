"""Adversarial relearning: does a little fine-tuning on some forgotten facts bring back the rest?

After an edit, the forget set is split by subject into two halves (:func:`relearning_split`).
The edited model is fine-tuned on the first half toward the TRUE answers, together with the
task's maintain facts and general text (the same three losses as the edit, from
:mod:`helpers.finetune`), and P(true) on the second half is measured with the fact prompt at
steps 0, ``eval_every``, 2 * ``eval_every``, ... The relearning error is 1 - P(true); an edit
that truly removed the facts keeps it high.

Two attacks:

- ``"lora"``: a LoRA adapter (peft) on every linear layer of the attention and MLP blocks
  (the paper: r=512, alpha=32, lr 2e-4, cosine, 20 steps; r is a parameter here);
- ``"full"``: full fine-tuning of the edited localization's own weights.

Both leave the model bit-identical afterwards: the LoRA layers are swapped back for the very
``nn.Linear`` objects they wrapped (peft's ``unload()`` is not used: under a TransformerLens
bridge, whose wrappers forward attribute lookups to the wrapped module, it replaces the
bridge's wrappers themselves), and the localization's weights are restored by
:func:`helpers.finetune.restored`. Every parameter's ``requires_grad`` flag and the
train/eval mode are put back as well, so an attack can run inside ``restored(...)``.

For CounterFact the attack relearns toward ``target_true``; the authors' code trained toward
``target_new`` by mistake.

**An attack is read only if it worked where it trained** (:func:`is_informative`): a held-out
P(true) that did not rise says nothing about the edit unless the attack raised P(true) on the
half it trained on. The rule: mean P(true) on the trained half after the attack must exceed
its value at the attack's start by at least :data:`INFORMATIVE_MARGIN` (0.05, absolute).
Otherwise the attack is *uninformative*, whatever its held-out number. The start of a
relearning attack is the edited model itself (step 0; LoRA starts at zero); the soft prompt
(:mod:`helpers.soft_prompt`) starts from a random prefix. An edit that left P(true) on the
trained half above ``1 - INFORMATIVE_MARGIN`` leaves no room to rise: its attacks are
uninformative too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from helpers.choices import ATTACKS
from helpers.finetune import (
    Float32Masters, adamw, answer_loss, check_compute_dtype, joint_answer_logits, restored, retain_rows,
)
from helpers.kernels import use_onednn
from helpers.localization import Localization
from helpers.models import LoadedModel
from helpers.precision import CHOICES, Precision
from helpers.records import answer_probabilities
from helpers.tasks import EditTask

INFORMATIVE_MARGIN = 0.05  # an attack must raise mean P(true) on its trained half by at least this much


@dataclass(frozen=True)
class RelearnConfig:
    """Hyper-parameters of one relearning attack."""

    steps: int = 20
    eval_every: int = 10  # P(true) on the held-out half at steps 0, eval_every, ... and the last
    learning_rate: float = 2e-4
    lora_rank: int = 64
    lora_alpha: float = 32.0
    batch_size: int = 8  # facts per step, for the relearned and for the maintain loss
    retain_batch_size: int = 4  # general-text sequences per step (0: no retain loss)
    retain_positions: int = 16  # positions per sequence at which the retain loss is computed
    grad_clip: float = 1.0
    precision: str = "auto"  # "bfloat16": autocast matmuls to bf16; "auto": where the hardware has native bf16

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1, "eval_every": 1 <= self.eval_every <= self.steps,
            "learning_rate": 0 < self.learning_rate < 1, "lora_rank": self.lora_rank >= 1,
            "lora_alpha": self.lora_alpha > 0, "batch_size": self.batch_size >= 1,
            "retain_batch_size": self.retain_batch_size >= 0, "retain_positions": self.retain_positions >= 1,
            "grad_clip": self.grad_clip > 0, "precision": self.precision in CHOICES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"RelearnConfig values out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")

    def to_dict(self) -> dict:
        return asdict(self)


def relearning_split(task: EditTask, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The forget facts split by subject (seeded) into a relearned half and a held-out half.

    The forget set is ``forget_train`` and ``forget_eval`` together (one set for the
    athlete and CounterFact tasks, two halves of a sport for Sports-Sport-Edit). With an odd
    number of subjects the held-out half gets the extra one.
    """
    forget = pd.concat([task.forget_train, task.forget_eval]).drop_duplicates(["subject", "prompt"])
    subjects = forget.subject.unique()
    if len(subjects) < 2:
        raise ValueError(f"Relearning needs a forget set of at least 2 subjects; task {task.name!r} has {len(subjects)}")
    order = np.random.default_rng(seed).permutation(len(subjects))
    learned = forget.subject.isin(subjects[order[: len(subjects) // 2]])
    return forget[learned].reset_index(drop=True), forget[~learned].reset_index(drop=True)


@contextmanager
def preserved_flags(model: LoadedModel) -> Iterator[None]:
    """On exit, put back every parameter's ``requires_grad`` flag and the train/eval mode."""
    flags = [(p, p.requires_grad) for p in model.hf_model.parameters()]
    training = model.hf_model.training
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.hf_model.train(training)


def _linear_slots(model: LoadedModel) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` for every linear layer of the attention and MLP blocks."""
    slots = []
    for layer in model.hf_model.get_decoder().layers:
        for block in (layer.self_attn, layer.mlp):
            for parent in block.modules():
                slots += [(parent, name, child) for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    return slots


@contextmanager
def lora_adapter(model: LoadedModel, rank: int, alpha: float, *, seed: int) -> Iterator[list[nn.Parameter]]:
    """Inject a LoRA adapter (seeded) into the attention and MLP linear layers; yield its parameters.

    Only the adapter requires gradients. On exit every LoRA layer is replaced by the
    ``nn.Linear`` it wrapped (never merged), the attributes peft added to the model are
    deleted and the ``requires_grad`` flags are put back: the module tree is as before.
    """
    slots = _linear_slots(model)
    names = {id(module): name for name, module in model.hf_model.named_modules()}
    attributes = set(vars(model.hf_model))
    targets = [names[id(linear)] for *_, linear in slots]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
    with preserved_flags(model):
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                inject_adapter_in_model(config, model.hf_model)
            if model.device.type == "cpu":  # the adapter's own products by oneDNN too (helpers/kernels.py)
                for layer in model.hf_model.modules():
                    if isinstance(layer, LoraLayer):
                        use_onednn(layer.lora_A)
                        use_onednn(layer.lora_B)
            for name, parameter in model.hf_model.named_parameters():
                parameter.requires_grad_("lora_" in name)
            yield [p for p in model.hf_model.parameters() if p.requires_grad]
        finally:
            for parent, name, linear in slots:
                setattr(parent, name, linear)
            for attribute in set(vars(model.hf_model)) - attributes:
                delattr(model.hf_model, attribute)


@contextmanager
def _attack_parameters(
    model: LoadedModel, attack: str, localization: Localization | None, config: RelearnConfig, seed: int,
) -> Iterator[list[nn.Parameter]]:
    """The parameters an attack trains, the only ones requiring gradients; undone on exit."""
    if attack == "lora":
        with lora_adapter(model, config.lora_rank, config.lora_alpha, seed=seed) as parameters:
            yield parameters
    else:
        with restored(model, localization) as parameters:
            yield parameters


def _rows(frame: pd.DataFrame, k: int, rng: np.random.Generator) -> pd.DataFrame:
    """``k`` random rows (all of them, shuffled, if there are at most ``k``)."""
    return frame.iloc[rng.permutation(len(frame))[:k]]


def mean_p_true(model: LoadedModel, frames: Sequence[pd.DataFrame], candidates: tuple[str, ...] | None) -> list[float]:
    """Mean P(true answer) on each frame's fact prompts (the task's probability convention), scored in one call."""
    together = pd.concat(frames, ignore_index=True)
    p_true = answer_probabilities(model, together, together.true.tolist(), candidates)
    return [float(part.mean()) for part in np.split(p_true, np.cumsum([len(f) for f in frames])[:-1])]


def is_informative(train_start: float, train_after: float, margin: float = INFORMATIVE_MARGIN) -> bool:
    """The written rule: training raised mean P(true) on the trained half from its start by at least ``margin``."""
    if not 0 < margin < 1:
        raise ValueError(f"margin must lie in (0, 1), got {margin}")
    values = {"train_start": train_start, "train_after": train_after}
    bad = [f"{name}={value}" for name, value in values.items() if not 0 <= value <= 1]  # NaN fails too
    if bad:
        raise ValueError(f"P(true) must lie in [0, 1], got {', '.join(bad)}")
    return train_after - train_start >= margin


def attack_fit(curve: pd.DataFrame) -> dict[str, float | bool]:
    """A relearning curve's fit: P(true) on the trained and the held-out half, before and after; informative or not."""
    first, last = curve.iloc[0], curve.iloc[-1]
    fit = {"train_p_true_before": float(first.p_true_learned), "train_p_true_after": float(last.p_true_learned),
           "p_true_before": float(first.p_true), "p_true_after": float(last.p_true)}
    return fit | {"informative": is_informative(fit["train_p_true_before"], fit["train_p_true_after"])}


def _train(
    model: LoadedModel, parameters: list[nn.Parameter], loss: Callable[[np.random.Generator, torch.Generator], torch.Tensor],
    measure: Callable[[int], dict], config: RelearnConfig, *, seed: int, desc: str, progress: bool,
) -> list[dict]:
    """AdamW with a cosine schedule on ``loss``; ``measure(step)`` at step 0 and every ``eval_every``."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    optimizer = adamw(parameters, config.learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, config.steps)
    model.hf_model.eval()
    precision = Precision(model, config.precision)
    check_compute_dtype(model, precision)
    masters = Float32Masters(parameters)
    rows = [measure(0)]
    for step in tqdm(range(1, config.steps + 1), desc=desc, disable=not progress, unit="step"):
        model.hf_model.train()
        with masters.training():
            with precision.active():
                total = loss(rng, generator)
            if not torch.isfinite(total):
                raise FloatingPointError(f"The relearning loss diverged at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
            schedule.step()
        if step % config.eval_every == 0 or step == config.steps:
            model.hf_model.eval()
            rows.append({**measure(step), "loss": float(total.detach())})
    return rows


def split_p_true(model: LoadedModel, task: EditTask, seed: int) -> tuple[float, float]:
    """Mean P(true) on the held-out and on the relearned half of :func:`relearning_split`: every attack's step 0."""
    learned, held_out = relearning_split(task, seed)
    held, relearned = mean_p_true(model, (held_out, learned), task.candidates)
    return held, relearned


def relearn(
    model: LoadedModel, task: EditTask, localization: Localization | None, general_chunks: torch.Tensor,
    config: RelearnConfig, *, attack: str, seed: int, progress: bool = True,
    before: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Run one relearning attack on the (edited) model; the model is unchanged afterwards.

    ``localization`` is the edited one; only the ``"full"`` attack uses it. ``seed`` fixes
    the split, the batches and the LoRA initialization. Returns one row per measured step:
    ``attack``, ``step``, ``p_true`` (mean over the held-out half), ``relearn_error``
    (1 - p_true), ``p_true_learned`` (the relearned half) and ``loss`` (the training loss of
    that step; NaN at step 0). ``before``, when given, is :func:`split_p_true` of this model
    with this seed, measured once for all attacks; step 0 reports it instead of scoring again
    (a fresh LoRA adapter adds exactly zero, so step 0 is the unattacked model for every attack).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    if attack == "full" and localization is None:
        raise ValueError("The 'full' attack fine-tunes the edited localization's weights: pass it")
    if task.maintain_train.empty:
        raise ValueError(f"Task {task.name!r} has no maintain facts to train on")
    if config.retain_batch_size and config.retain_positions >= general_chunks.shape[1]:
        raise ValueError(f"retain_positions={config.retain_positions} needs general-text chunks longer than that, "
                         f"got length {general_chunks.shape[1]}")
    learned, held_out = relearning_split(task, seed)

    def loss(rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        facts, maintain = _rows(learned, config.batch_size, rng), _rows(task.maintain_train, config.batch_size, rng)
        retain_hidden = retain_targets = None
        if config.retain_batch_size:
            chunks = general_chunks[torch.randint(len(general_chunks), (config.retain_batch_size,), generator=generator)]
            retain_hidden, retain_targets = retain_rows(model, chunks, config.retain_positions, generator)
        fact_logits, maintain_logits, *retain_logits = joint_answer_logits(model, facts.prompt, maintain.prompt, extra=retain_hidden)
        total = answer_loss(model, fact_logits, facts.true) + answer_loss(model, maintain_logits, maintain.true)
        if retain_logits:
            total = total + F.cross_entropy(retain_logits[0], retain_targets)
        return total

    def measure(step: int) -> dict:
        if step == 0 and before is not None:
            held, relearned = before
        else:
            held, relearned = mean_p_true(model, (held_out, learned), task.candidates)
        return {"attack": attack, "step": step, "p_true": held, "relearn_error": 1 - held,
                "p_true_learned": relearned, "loss": float("nan")}

    with preserved_flags(model), _attack_parameters(model, attack, localization, config, seed) as parameters:
        desc = f"relearn {task.name} ({attack})"
        rows = _train(model, parameters, loss, measure, config, seed=seed, desc=desc, progress=progress)
    return pd.DataFrame(rows)
