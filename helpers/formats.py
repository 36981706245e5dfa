"""Ask for the same facts in several prompt formats and measure how well a model answers.

A format turns a fact into ``(prompt, candidate answers, index of the correct one)``.
Probabilities are renormalized over the candidates, so every format is scored on the same
footing (chance = 1 / number of options). Multiple-choice formats shuffle the options with
a seed; several orders are averaged to remove position bias from the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.models import LoadedModel
from helpers.prompts import (
    LETTERS,
    SPORTS,
    cloze_mcq_prompt,
    completion_question,
    lettered_mcq_prompt,
    qa_prompt,
    sports_fact_prompt,
    sports_question,
)
from helpers.scoring import candidate_probs, renormalize

FORMATS: tuple[str, ...] = ("fact", "paraphrase", "lettered_mcq", "cloze_mcq")
MCQ_FORMATS = ("lettered_mcq", "cloze_mcq")


@dataclass(frozen=True)
class FormatItem:
    """One question in one format: the prompt, the answers scored, which one is correct."""

    fact_id: int
    prompt: str
    candidates: tuple[str, ...]
    correct: int


def sports_items(athletes: pd.DataFrame, fmt: str, rng: np.random.Generator, options: Sequence[str] = SPORTS) -> list[FormatItem]:
    """Items asking for each athlete's sport in format ``fmt`` (options shuffled by ``rng``)."""
    _check_format(fmt)
    items = []
    for fact_id, (athlete, sport) in enumerate(zip(athletes.athlete, athletes.sport)):
        question = sports_question(athlete)
        if fmt in ("fact", "paraphrase"):
            prompt = sports_fact_prompt(athlete) if fmt == "fact" else qa_prompt(question)
            items.append(FormatItem(fact_id, prompt, tuple(options), list(options).index(sport)))
        else:
            items.append(_mcq_item(fact_id, question, list(options), sport, fmt, rng))
    return items


def counterfact_items(facts: pd.DataFrame, fmt: str, rng: np.random.Generator) -> list[FormatItem]:
    """Items for CounterFact facts; options are the true answer and ``mcq_wrong_options``.

    ``paraphrase`` gives one item per paraphrase prompt of each fact.
    """
    _check_format(fmt)
    items = []
    for fact_id, row in enumerate(facts.itertuples(index=False)):
        options = [row.target_true, *row.mcq_wrong_options]
        if fmt == "fact":
            items.append(FormatItem(fact_id, row.prompt, tuple(options), 0))
        elif fmt == "paraphrase":
            items.extend(FormatItem(fact_id, p, tuple(options), 0) for p in row.paraphrase_prompts)
        else:
            items.append(_mcq_item(fact_id, completion_question(row.prompt), options, row.target_true, fmt, rng))
    return items


def _mcq_item(fact_id: int, question: str, options: list[str], answer: str, fmt: str, rng: np.random.Generator) -> FormatItem:
    return mcq_item(fact_id, question, shuffled_options(options, rng), answer, fmt)


def shuffled_options(options: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The options in a random order drawn from ``rng``."""
    return [options[i] for i in rng.permutation(len(options))]


def mcq_item(fact_id: int, question: str, options: Sequence[str], answer: str, fmt: str) -> FormatItem:
    """A multiple-choice item (``lettered_mcq`` or ``cloze_mcq``) with the options in the order given."""
    if fmt not in MCQ_FORMATS:
        raise ValueError(f"Unknown multiple-choice format {fmt!r}; choose one of {MCQ_FORMATS}")
    correct = list(options).index(answer)
    if fmt == "lettered_mcq":
        return FormatItem(fact_id, lettered_mcq_prompt(question, options), LETTERS[: len(options)], correct)
    return FormatItem(fact_id, cloze_mcq_prompt(question, options), tuple(options), correct)


def score_items(model: LoadedModel, items: list[FormatItem], *, batch_size: int = 32, desc: str = "scoring") -> pd.DataFrame:
    """One row per item: P(correct) renormalized over its candidates, and argmax correctness."""
    if not items:
        raise ValueError("No items to score")
    probs = candidate_probs(model, [i.prompt for i in items], [list(i.candidates) for i in items], batch_size=batch_size, desc=desc)
    among = renormalize(probs)
    correct = np.array([i.correct for i in items])
    rows = np.arange(len(items))
    return pd.DataFrame(
        {
            "fact_id": [i.fact_id for i in items],
            "p_correct": among[rows, correct],
            "argmax_correct": among.argmax(axis=1) == correct,
            "p_correct_vocab": probs[rows, correct],
            "chance": [1.0 / len(i.candidates) for i in items],
        }
    )


def measure_formats(
    model: LoadedModel,
    data: pd.DataFrame,
    kind: str,
    *,
    formats: Sequence[str] = FORMATS,
    n_orders: int = 3,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Score every fact of ``data`` (``kind`` = ``"sports"`` or ``"counterfact"``) in every format.

    Multiple-choice formats are scored for ``n_orders`` seeded option orders; the result has
    one row per (format, order, item) and is averaged per fact by :func:`summarize_formats`.
    """
    if kind not in ("sports", "counterfact"):
        raise ValueError(f"kind must be 'sports' or 'counterfact', got {kind!r}")
    if n_orders < 1:
        raise ValueError(f"n_orders must be at least 1, got {n_orders}")
    if data.empty:
        raise ValueError("No facts to measure")
    make_items = sports_items if kind == "sports" else counterfact_items
    frames = []
    for fmt in formats:
        for order in range(n_orders if fmt in MCQ_FORMATS else 1):
            rng = np.random.default_rng([seed, order])
            scored = score_items(model, make_items(data, fmt, rng), batch_size=batch_size, desc=f"{kind} {fmt}")
            frames.append(scored.assign(format=fmt, order=order))
    return pd.concat(frames, ignore_index=True)


def summarize_formats(scores: pd.DataFrame, *, margin: float = 0.05, z: float = 1.96) -> pd.DataFrame:
    """Per format: mean P(correct), argmax accuracy, chance, and a 95% interval over facts.

    Scores are first averaged per fact (over option orders and paraphrases), so the
    interval counts facts, not prompts. A format is ``usable`` when the lower end of the
    interval on P(correct) lies more than ``margin`` above chance.
    """
    per_fact = scores.groupby(["format", "fact_id"], sort=False)[["p_correct", "argmax_correct", "chance"]].mean()
    grouped = per_fact.groupby(level="format", sort=False)
    summary = grouped.agg(
        n_facts=("p_correct", "size"),
        p_correct=("p_correct", "mean"),
        p_correct_sd=("p_correct", "std"),
        accuracy=("argmax_correct", "mean"),
        chance=("chance", "mean"),
    )
    half_width = z * summary.p_correct_sd.fillna(0) / np.sqrt(summary.n_facts)
    summary["ci_low"] = summary.p_correct - half_width
    summary["ci_high"] = summary.p_correct + half_width
    summary["usable"] = summary.ci_low > summary.chance + margin
    return summary.drop(columns="p_correct_sd").reset_index()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {FORMATS}")
