"""Every robustness metric of a model on an editing task, as one flat dict for a run record.

Each metric is a probability, as in the paper (not an argmax accuracy):

- **fact prompt** (the training format): ``forget_error`` = 1 - P(true) on the evaluated
  forget facts, ``edit_accuracy`` = P(new) on them (edits only), ``maintain_accuracy`` =
  P(true) on the maintained facts;
- **paraphrases**: the same three, ``paraphrase_*``, on other prompts for the same fact
  (sports: :func:`~helpers.prompts.paraphrase_prompts_for_sports`; CounterFact: its
  ``paraphrase_prompts``), averaged per fact, then over facts;
- **the paper's format** (sports only): the same three, ``system_qa_*``, in the format in which
  the paper measures its sports tables (:func:`~helpers.prompts.sports_system_qa_prompt`: a
  system instruction, a worked question, the question), one prompt per fact;
- **neighborhood** (CounterFact only): ``neighborhood_accuracy`` = P(true) on the forget
  facts' neighborhood prompts: other subjects with the same relation *and the same true
  answer* (see ``scripts/build_counterfact.py``), which an edit must not move;
- **multiple choice**: ``lettered_mcq_*`` and ``cloze_mcq_*``, the options being the true
  answer and the fact's ``wrong_options`` (the new answer is one of them), shuffled in
  ``n_orders`` seeded orders that are averaged per fact;
- ``general_loss``: mean next-token cross-entropy on held-out general text;
- ``quiz_accuracy``: mean P(true) on facts of the other kind (:func:`other_kind_quiz`),
  which an edit of sports facts must not touch, and vice versa.

Completion formats are scored like :func:`helpers.scoring.answer_probabilities`: for sports,
renormalized over the task's candidates (see :mod:`helpers.tasks`); for CounterFact, the
full-vocabulary probability of the answer's first token. Multiple-choice formats are
renormalized over the options (the letters, or the option words). All prompts of one format,
forget and maintain facts together, are scored in one :func:`candidate_probs` call. Inside
:func:`helpers.reuse.reusing` (an edited model, :mod:`helpers.robustness`), every forward pass
here starts at the lowest edited layer from cached activations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from helpers.finetune import retain_chunks
from helpers.formats import MCQ_FORMATS, mcq_item, shuffled_options
from helpers.models import LoadedModel
from helpers.prompts import SPORT_ANSWERS, SPORTS, completion_question, paraphrase_prompts_for_sports, sports_question, sports_system_qa_prompt
from helpers.scoring import candidate_probs, final_hidden, next_token_loss, renormalize
from helpers.tasks import EditTask, athlete_rows, fact_rows

COMPLETION_FORMATS = ("fact", "paraphrase")
EVAL_FORMATS = (*COMPLETION_FORMATS, *MCQ_FORMATS)
SPORTS_FORMATS = ("system_qa",)  # measured on sports tasks only (the paper's own sports format)
GENERAL_LENGTH = 128  # tokens per general-text chunk when texts are given
USABLE_MARGIN = 0.05  # a format is usable when P(true) exceeds chance by more than this
NO_ANSWER = -1


@dataclass(frozen=True)
class Question:
    """One prompt about one fact: the answers scored and where the true and new answers are among them."""

    split: str  # "forget" or "maintain"
    fact: int  # row of the split's frame
    prompt: str
    candidates: tuple[str, ...]
    true: int
    new: int = NO_ANSWER  # index of the new answer, or NO_ANSWER when it is not measured


def is_sports(task: EditTask) -> bool:
    """Sports tasks are scored over their candidate answers; CounterFact has none."""
    return task.candidates is not None


def task_formats(task: EditTask) -> tuple[str, ...]:
    """The formats measured on ``task``: :data:`EVAL_FORMATS`, and for sports :data:`SPORTS_FORMATS`."""
    return (*EVAL_FORMATS, *SPORTS_FORMATS) if is_sports(task) else EVAL_FORMATS


def _position(options: Sequence[str], answer: str, where: str) -> int:
    if answer not in options:
        raise ValueError(f"{where}: answer {answer!r} is not among the options {list(options)}")
    return list(options).index(answer)


def _options(row) -> list[str]:
    return [row.true, *row.wrong_options]


def completion_prompts(row, fmt: str, sports: bool) -> list[str]:
    """The prompts of one fact in a completion format: ``fact``, ``paraphrase``, ``system_qa`` or ``neighborhood``."""
    if fmt == "fact":
        return [row.prompt]
    if fmt == "system_qa":
        if not sports:
            raise ValueError("The system_qa format asks for an athlete's sport: sports tasks only")
        return [sports_system_qa_prompt(row.subject)]
    if fmt == "paraphrase":
        return paraphrase_prompts_for_sports(row.subject) if sports else list(row.paraphrase_prompts)
    if fmt == "neighborhood":
        return list(row.neighborhood_prompts)
    raise ValueError(f"Unknown completion format {fmt!r}; choose one of {(*COMPLETION_FORMATS, *SPORTS_FORMATS, 'neighborhood')}")


def completion_questions(
    frame: pd.DataFrame, split: str, fmt: str, candidates: tuple[str, ...] | None, *, with_new: bool
) -> list[Question]:
    """Completion questions for every fact of ``frame``.

    The scored answers are ``candidates`` (sports) or the fact's options (CounterFact: full-
    vocabulary probabilities, not renormalized, so the wrong options change nothing; their
    first tokens must differ from the answers', as the cloze format needs anyway).
    """
    questions = []
    for fact, row in enumerate(frame.itertuples(index=False)):
        prompts = completion_prompts(row, fmt, candidates is not None)
        if not prompts:
            raise ValueError(f"Fact {row.subject!r} ({split}) has no {fmt} prompts")
        scored = tuple(candidates) if candidates is not None else tuple(_options(row))
        where = f"{fmt} question about {row.subject!r}"
        true = _position(scored, row.true, where)
        new = _position(scored, row.new, where) if with_new else NO_ANSWER
        questions += [Question(split, fact, prompt, scored, true, new) for prompt in prompts]
    return questions


def mcq_questions(
    frame: pd.DataFrame, split: str, fmt: str, ask: Callable[[object], str], *, with_new: bool, n_orders: int, seed: int
) -> list[Question]:
    """Multiple-choice questions for every fact of ``frame``, in ``n_orders`` seeded option orders.

    Order ``k`` shuffles each fact's options with ``np.random.default_rng([seed, k])``, as
    :func:`helpers.formats.measure_formats` does.
    """
    if n_orders < 1:
        raise ValueError(f"n_orders must be at least 1, got {n_orders}")
    questions = []
    for order in range(n_orders):
        rng = np.random.default_rng([seed, order])
        for fact, row in enumerate(frame.itertuples(index=False)):
            options = shuffled_options(_options(row), rng)
            item = mcq_item(fact, ask(row), options, row.true, fmt)
            new = _position(options, row.new, f"{fmt} question about {row.subject!r}") if with_new else NO_ANSWER
            questions.append(Question(split, fact, item.prompt, item.candidates, item.correct, new))
    return questions


def mcq_question_text(task: EditTask) -> Callable[[object], str]:
    """The question a multiple-choice prompt asks about a task row (sports: the athlete's sport)."""
    if is_sports(task):
        return lambda row: sports_question(row.subject)
    return lambda row: completion_question(row.prompt)


def per_fact_probabilities(
    model: LoadedModel, questions: list[Question], *, renormalized: bool, batch_size: int = 32
) -> pd.DataFrame:
    """P(true) and P(new) per fact (mean over its questions), indexed by (split, fact).

    All questions are scored in one batched call; ``renormalized`` divides by the summed
    probability of each question's candidates. ``p_new`` is NaN where no new answer is measured.
    """
    if not questions:
        raise ValueError("No questions to score")
    probs = candidate_probs(
        model, [q.prompt for q in questions], [list(q.candidates) for q in questions], batch_size=batch_size, progress=False
    ).astype(np.float64)
    if renormalized:
        probs = renormalize(probs)
    rows = np.arange(len(questions))
    new = np.array([q.new for q in questions])
    scores = pd.DataFrame({
        "split": [q.split for q in questions],
        "fact": [q.fact for q in questions],
        "p_true": probs[rows, [q.true for q in questions]],
        "p_new": np.where(new == NO_ANSWER, np.nan, probs[rows, np.maximum(new, 0)]),
    })
    return scores.groupby(["split", "fact"]).mean()


def format_metrics(
    model: LoadedModel, task: EditTask, fmt: str, *, n_orders: int = 2, seed: int = 0, batch_size: int = 32,
    maintain: bool = True,
) -> dict[str, float]:
    """Forget error, edit accuracy (edits only) and maintain accuracy of one format.

    Keys are ``forget_error``, ``edit_accuracy``, ``maintain_accuracy`` for the fact prompt
    and the same prefixed by the format's name (``paraphrase_forget_error``, ...) otherwise.
    ``maintain=False`` scores the forget facts alone (no ``maintain_accuracy``).
    """
    if fmt not in task_formats(task):
        raise ValueError(f"Unknown format {fmt!r} for task {task.name!r}; choose one of {task_formats(task)}")
    _check_task(task)
    edit = task.mode == "edit"
    splits = {"forget": (task.forget_eval, edit)} | ({"maintain": (task.maintain_eval, False)} if maintain else {})
    questions = []
    for split, (frame, with_new) in splits.items():
        if fmt in MCQ_FORMATS:
            questions += mcq_questions(frame, split, fmt, mcq_question_text(task), with_new=with_new, n_orders=n_orders, seed=seed)
        else:
            questions += completion_questions(frame, split, fmt, task.candidates, with_new=with_new)
    renormalized = fmt in MCQ_FORMATS or is_sports(task)
    means = per_fact_probabilities(model, questions, renormalized=renormalized, batch_size=batch_size).groupby(level="split").mean()
    prefix = "" if fmt == "fact" else f"{fmt}_"
    metrics = {f"{prefix}forget_error": float(1 - means.loc["forget", "p_true"])}
    if maintain:
        metrics[f"{prefix}maintain_accuracy"] = float(means.loc["maintain", "p_true"])
    if edit:
        metrics[f"{prefix}edit_accuracy"] = float(means.loc["forget", "p_new"])
    return metrics


def neighborhood_accuracy(model: LoadedModel, task: EditTask, *, batch_size: int = 32) -> float:
    """CounterFact: mean P(true) on the forget facts' neighborhood prompts (per fact, then over facts).

    A neighborhood prompt asks the same relation about another subject with the same true
    answer, so an edit that generalizes too far lowers it.
    """
    if is_sports(task):
        raise ValueError("Neighborhood prompts exist for CounterFact tasks only")
    _check_task(task)
    questions = completion_questions(task.forget_eval, "forget", "neighborhood", None, with_new=False)
    return float(per_fact_probabilities(model, questions, renormalized=False, batch_size=batch_size).p_true.mean())


def general_chunks(model: LoadedModel, texts_or_chunks: Sequence[str] | torch.Tensor, length: int = GENERAL_LENGTH) -> torch.Tensor:
    """Token chunks (n, length) of general text; a tensor of chunks is returned as it is."""
    if isinstance(texts_or_chunks, torch.Tensor):
        if texts_or_chunks.ndim != 2 or texts_or_chunks.shape[1] < 2 or len(texts_or_chunks) == 0:
            raise ValueError(f"General-text chunks must have shape (n_chunks >= 1, length >= 2), got {tuple(texts_or_chunks.shape)}")
        return texts_or_chunks
    return retain_chunks(model, list(texts_or_chunks), length)


def general_loss(
    model: LoadedModel, texts_or_chunks: Sequence[str] | torch.Tensor, *, max_tokens: int | None = 2048, batch_size: int = 4
) -> float:
    """Mean next-token cross-entropy on general text, over at most ``max_tokens`` tokens.

    Texts are cut into chunks of :data:`GENERAL_LENGTH` tokens (:func:`general_chunks`).
    Whole chunks are used, at least one; ``max_tokens=None`` uses them all. ``batch_size``
    chunks share a forward pass, whose loss is summed over blocks of the vocabulary
    (:func:`helpers.scoring.next_token_loss`) rather than computed from the full logits, which
    for 512 tokens take 0.5 GB, mapped and faulted in anew at every call
    (``scripts/benchmark_general_loss.py`` compares both).
    """
    chunks = general_chunks(model, texts_or_chunks)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 or None, got {max_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(chunks) if max_tokens is None else min(len(chunks), max(1, max_tokens // chunks.shape[1]))
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in chunks[:n].to(model.device).split(batch_size):
            hidden = final_hidden(model, input_ids=batch)[:, :-1].flatten(0, 1)
            total += next_token_loss(model, hidden, batch[:, 1:].flatten()).item()
            count += batch[:, 1:].numel()
    return total / count


def other_kind_quiz(
    task: EditTask, *, athletes: pd.DataFrame, facts: pd.DataFrame, n: int = 64, seed: int = 0
) -> pd.DataFrame:
    """A fixed sample of ``n`` known facts of the other kind (task rows: subject, prompt, true, ...).

    For a sports task, CounterFact facts drawn from ``facts`` (columns of
    :func:`helpers.counterfact.load_counterfact`); for a CounterFact task, athletes drawn from
    ``athletes`` (columns ``athlete``, ``sport``). Pass the facts the model knows, so that the
    quiz starts high. The task's own subjects are left out. Fewer than ``n`` when fewer exist.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    subjects = set().union(*task.subjects().values())
    if is_sports(task):
        pool = fact_rows(facts[~facts.subject.isin(subjects)], with_new=False)
    else:
        pool = athlete_rows(athletes[~athletes.athlete.isin(subjects)])
    if pool.empty:
        raise ValueError(f"No {'CounterFact facts' if is_sports(task) else 'athletes'} left for the quiz of {task.name!r}")
    return pool.sample(n=min(n, len(pool)), random_state=seed).reset_index(drop=True)


def quiz_accuracy(model: LoadedModel, task: EditTask, quiz: pd.DataFrame, *, batch_size: int = 32) -> float:
    """Mean P(true) on the quiz of the other kind, scored by that kind's convention."""
    if quiz.empty:
        raise ValueError("The quiz is empty")
    if is_sports(task) == (set(quiz.true) <= set(SPORT_ANSWERS)):
        raise ValueError(f"The quiz of task {task.name!r} must hold facts of the other kind (see other_kind_quiz)")
    overlap = set(quiz.subject) & set().union(*task.subjects().values())
    if overlap:
        raise ValueError(f"The quiz shares subjects with task {task.name!r}: {sorted(overlap)[:5]}")
    candidates = None if is_sports(task) else SPORTS  # athletes are known over the three sports (chapter 00)
    questions = completion_questions(quiz, "quiz", "fact", candidates, with_new=False)
    return float(per_fact_probabilities(model, questions, renormalized=candidates is not None, batch_size=batch_size).p_true.mean())


def evaluate_task(
    model: LoadedModel, task: EditTask, *, quiz: pd.DataFrame, general_chunks_or_texts: Sequence[str] | torch.Tensor,
    n_orders: int = 2, seed: int = 0, batch_size: int = 32, max_general_tokens: int | None = 2048,
    formats: Sequence[str] | None = None,
) -> dict[str, float]:
    """Every metric of the module docstring, as one flat dict (edit keys only for edits,
    ``system_qa_*`` only for sports, ``neighborhood_accuracy`` only for CounterFact).

    ``formats``: the prompt formats measured, among :func:`task_formats` (None: all of them).
    """
    if n_orders < 1:
        raise ValueError(f"n_orders must be at least 1, got {n_orders}")
    formats = task_formats(task) if formats is None else tuple(formats)
    unknown = sorted(set(formats) - set(task_formats(task)))
    if unknown:
        raise ValueError(f"Unknown formats {unknown} for task {task.name!r}; choose among {task_formats(task)}")
    metrics: dict[str, float] = {}
    for fmt in formats:
        metrics |= format_metrics(model, task, fmt, n_orders=n_orders, seed=seed, batch_size=batch_size)
    if not is_sports(task):
        metrics["neighborhood_accuracy"] = neighborhood_accuracy(model, task, batch_size=batch_size)
    metrics["general_loss"] = general_loss(model, general_chunks_or_texts, max_tokens=max_general_tokens)
    metrics["quiz_accuracy"] = quiz_accuracy(model, task, quiz, batch_size=batch_size)
    return metrics


def mcq_chance(task: EditTask) -> float:
    """Chance level of the multiple-choice formats: mean of 1 / number of options over maintained facts."""
    return float(np.mean([1 / (1 + len(w)) for w in task.maintain_eval.wrong_options]))


def format_usability(before: Mapping[str, float], task: EditTask, *, margin: float = USABLE_MARGIN) -> dict[str, bool]:
    """Which multiple-choice formats the unedited model answers above chance.

    A format is usable when its ``maintain_accuracy`` before the edit exceeds chance
    (:func:`mcq_chance`) by more than ``margin``. This is the rule of
    :func:`helpers.formats.summarize_formats` applied to the mean, as a run record holds no
    per-fact scores for an interval. A format the model cannot answer before the edit says
    nothing about the edit's robustness.
    """
    missing = [f"{fmt}_maintain_accuracy" for fmt in MCQ_FORMATS if f"{fmt}_maintain_accuracy" not in before]
    if missing:
        raise ValueError(f"The metrics before the edit lack {missing}")
    chance = mcq_chance(task)
    return {fmt: bool(before[f"{fmt}_maintain_accuracy"] > chance + margin) for fmt in MCQ_FORMATS}


def answerable_formats(formats: Sequence[str], before: Mapping[str, float], task: EditTask) -> tuple[str, ...]:
    """``formats`` without the multiple-choice ones the unedited model answers at chance (:func:`format_usability`
    of its metrics ``before``): measured after an edit, those would show nothing about it."""
    usable = format_usability(before, task)
    return tuple(fmt for fmt in formats if usable.get(fmt, True))


def _check_task(task: EditTask) -> None:
    empty = [split for split in ("forget_eval", "maintain_eval") if getattr(task, split).empty]
    if empty:
        raise ValueError(f"Task {task.name!r} has empty {' and '.join(empty)}")
