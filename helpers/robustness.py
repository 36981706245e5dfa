"""Everything the robustness chapters measure on an edit, packaged as the grid's :class:`Measurements`.

Before and after the edit (:meth:`Robustness.evaluate`): every prompt format of
:mod:`helpers.evaluation` (fact prompt, paraphrases, neighborhood, lettered and cloze multiple
choice), the loss on held-out general text and a quiz of facts of the other kind (and MMLU
through lm-eval, :mod:`helpers.mmlu`, when ``mmlu_limit`` is set). After the edit, a
multiple-choice format the unedited model answers at chance is left out
(:func:`helpers.evaluation.answerable_formats`): its forget error is high and its edit accuracy
at chance before any edit, so it cannot show what an edit did (``measure_formats_at_chance=True``
measures it anyway). The before values keep it, so the usability tables still show why.
After the edit only (:meth:`Robustness.attack`): the relearning attacks of
:mod:`helpers.relearning` and the soft-prompt attack of :mod:`helpers.soft_prompt` (on the tasks
named in ``attack_tasks``; all of them by default), and for sports the latent probes of
:mod:`helpers.latent` (the original hidden states are read by :meth:`Robustness.prepare` just
before the edit).
During the edit (:meth:`Robustness.strength_point`, for the tasks named in
``strength_curve_tasks``): the **strength curve**. At every completeness check of the training
(:mod:`helpers.finetune`), the paraphrase and the two multiple-choice formats are scored on the
evaluated forget facts (one option order, no maintain facts: a point of the curve costs a
fraction of an evaluation; a format at chance before the edit is left out here too), in the
check's precision; the check itself gives the training format's edit accuracy and forget error
on the trained facts, so each check is a point of robustness against edit strength, and
localizations can be compared at equal edit strength rather than at their final, unequal one.

The edit changes nothing below its lowest layer, so the evaluations after it and the ``full``
relearning attack (training and measurements) run only the layers from there on, on the
residual stream cached by :mod:`helpers.reuse` (the same numbers; ``reuse_frozen=False`` runs the
full forward pass). The LoRA attack adapts every layer and the soft prompt changes every
position's input: they run in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch

from helpers.evaluation import (
    answerable_formats, evaluate_task, format_metrics, general_chunks, is_sports, other_kind_quiz, task_formats,
)
from helpers.formats import MCQ_FORMATS
from helpers.general_text import load_general_text
from helpers.latent import AthleteStates, latent_metrics, task_states
from helpers.localization import Localization
from helpers.mmlu import mmlu_accuracy
from helpers.models import LoadedModel
from helpers.precision import Precision, check_precision, resolved
from helpers.records import Measurements
from helpers.relearning import ATTACKS, RelearnConfig, attack_fit, relearn, split_p_true
from helpers.reuse import edited_start, reusing
from helpers.soft_prompt import SoftPromptConfig, soft_prompt_attack
from helpers.tasks import EditTask

STRENGTH_FORMATS = ("paraphrase", *MCQ_FORMATS)  # the robustness measures of the strength curve


@dataclass(frozen=True)
class RobustnessSettings:
    """What is measured and at what scale (all part of a run's key)."""

    n_orders: int = 2  # option orders averaged in the multiple-choice formats
    max_general_tokens: int = 1024  # held-out general-text tokens for the general loss
    quiz_size: int = 32  # facts of the other kind in the quiz
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    relearn_attacks: tuple[str, ...] = ATTACKS
    soft_prompt: SoftPromptConfig | None = field(default_factory=SoftPromptConfig)
    latent_probes: bool = True
    mmlu_limit: int | None = None  # MMLU questions per subject through lm-eval (gpu profile); None: not measured
    seed: int = 0  # option orders, quiz sample, relearning split and soft-prompt initialization
    batch_size: int = 32
    eval_precision: str = "auto"  # "bfloat16": the evaluation's matrix products in bf16; "auto": where the hardware has native bf16
    strength_curve_tasks: tuple[str, ...] = ()  # tasks whose runs measure the strength curve during training; (): none
    attack_tasks: tuple[str, ...] | None = None  # tasks whose edits the relearning and soft-prompt attacks attack; None: all
    measure_formats_at_chance: bool = False  # also measure, after an edit, the MCQ formats the unedited model answers at chance

    def __post_init__(self) -> None:
        check_precision(self.eval_precision, "eval_precision")
        unknown = [a for a in self.relearn_attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"Unknown relearning attacks {unknown}; choose from {ATTACKS}")
        if self.mmlu_limit is not None and self.mmlu_limit < 1:
            raise ValueError(f"mmlu_limit must be None or a positive number of questions per subject, got {self.mmlu_limit}")
        for name in ("strength_curve_tasks", "attack_tasks"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a tuple of task names, got the string {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Robustness:
    """The robustness measurements of one model; :meth:`measurements` hands them to the grid.

    Every precision of ``settings`` is resolved for the model's device here, so the run keys and
    records hold ``"float32"`` or ``"bfloat16"``, never ``"auto"``.
    """

    def __init__(self, model: LoadedModel, athletes: pd.DataFrame, facts: pd.DataFrame,
                 retain_chunks: torch.Tensor, settings: RobustnessSettings = RobustnessSettings(),
                 *, reuse_frozen: bool = True) -> None:
        self.athletes, self.facts, self.retain_chunks = athletes, facts, retain_chunks
        self.reuse_frozen = reuse_frozen
        self.settings = resolved(settings, model.device)
        self.heldout_chunks = general_chunks(model, load_general_text("heldout"))
        self._original_states: dict[str, AthleteStates] = {}

    def evaluate(self, model: LoadedModel, task: EditTask, before: Mapping[str, float] | None = None) -> dict[str, float]:
        """Every format, the general loss, the other-kind quiz (:func:`helpers.evaluation.evaluate_task`), MMLU if asked.

        ``before``: this method's metrics of the unedited model, when ``model`` is an edit of it; the
        formats it answered at chance are then left out (module doc). None: every format.

        The formats, the loss and the quiz run in ``eval_precision``: with ``"bfloat16"`` every
        linear weight is cast once per evaluation (:class:`helpers.precision.Precision`), faster
        than float32 only on a CPU with native bf16; ``"auto"`` chooses it only there.
        """
        s = self.settings
        quiz = other_kind_quiz(task, athletes=self.athletes, facts=self.facts, n=s.quiz_size, seed=s.seed)
        start = edited_start(model)
        with Precision(model, s.eval_precision, trained=()).active(), reusing(model, start, enabled=self.reuse_frozen):
            metrics = evaluate_task(
                model, task, quiz=quiz, general_chunks_or_texts=self.heldout_chunks, n_orders=s.n_orders,
                seed=s.seed, batch_size=s.batch_size, max_general_tokens=s.max_general_tokens,
                formats=self._measured(task_formats(task), task, before),
            )
        if s.mmlu_limit:
            metrics["mmlu_accuracy"] = mmlu_accuracy(model, s.mmlu_limit, seed=s.seed)
        return metrics

    def prepare(self, model: LoadedModel, task: EditTask) -> None:
        """Read the unedited model's hidden states for the latent probes (sports tasks)."""
        if self.settings.latent_probes and is_sports(task) and task.fingerprint() not in self._original_states:
            self._original_states[task.fingerprint()] = task_states(model, task, batch_size=self.settings.batch_size)

    def attack(self, model: LoadedModel, task: EditTask, localization: Localization) -> dict:
        """Relearning curves, final errors and fits, the soft-prompt attack, and the latent probe shares.

        Each relearning attack also gives ``relearn_{attack}_train_p_true_before/after`` (the half
        it trained on), ``relearn_{attack}_p_true_before/after`` (the held-out half) and
        ``relearn_{attack}_informative`` (:func:`helpers.relearning.is_informative`). A task not in
        ``attack_tasks`` gets the latent probes only.
        """
        s = self.settings
        attacked = s.attack_tasks is None or task.name in s.attack_tasks
        relearn_attacks = s.relearn_attacks if attacked else ()
        soft_prompt = s.soft_prompt if attacked else None
        results: dict = {}
        before = None
        if relearn_attacks or soft_prompt is not None:
            with reusing(model, edited_start(model), enabled=self.reuse_frozen):
                before = split_p_true(model, task, s.seed)  # step 0 of every attack: measured once
        for name in relearn_attacks:
            start = localization.start_layer if name == "full" else 0  # LoRA adapts every layer
            with reusing(model, start, enabled=self.reuse_frozen):
                curve = relearn(model, task, localization, self.retain_chunks, s.relearn, attack=name, seed=s.seed,
                                progress=False, before=before)
            results[f"relearn_{name}"] = curve.to_dict(orient="records")
            results[f"relearn_error_{name}"] = float(curve.relearn_error.iloc[-1])
            results |= {f"relearn_{name}_{key}": value for key, value in attack_fit(curve).items()}
        if soft_prompt is not None:
            results |= soft_prompt_attack(model, task, soft_prompt, seed=s.seed, progress=False, before=before)
        if s.latent_probes and is_sports(task):
            edited = task_states(model, task, batch_size=s.batch_size)
            results |= latent_metrics(task, self._original_states[task.fingerprint()], edited, seed=s.seed)
        return results

    def strength_point(self, model: LoadedModel, task: EditTask, before: Mapping[str, float] | None = None) -> dict[str, float]:
        """The strength curve's robustness measures at one completeness check (module doc); {} for other tasks.

        ``before``: as in :meth:`evaluate`."""
        s = self.settings
        if task.name not in s.strength_curve_tasks:
            return {}
        metrics: dict[str, float] = {}
        for fmt in self._measured(STRENGTH_FORMATS, task, before):
            metrics |= format_metrics(model, task, fmt, n_orders=1, seed=s.seed, batch_size=s.batch_size, maintain=False)
        return metrics

    def _measured(self, formats: Sequence[str], task: EditTask, before: Mapping[str, float] | None) -> tuple[str, ...]:
        """The ``formats`` to measure: after an edit (``before`` given), those the unedited model can answer."""
        if before is None or self.settings.measure_formats_at_chance:
            return tuple(formats)
        return answerable_formats(formats, before, task)

    def measurements(self) -> Measurements:
        checkpoint = self.strength_point if self.settings.strength_curve_tasks else None
        return Measurements(evaluate=self.evaluate, attack=self.attack, prepare=self.prepare, checkpoint=checkpoint,
                            settings=self.settings.to_dict())
