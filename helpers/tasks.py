"""The paper's editing and unlearning tasks, as seeded, non-overlapping splits of known facts.

Every task has a **forget** set (the facts to edit or unlearn; trained on ``forget_train``,
measured on ``forget_eval``) and a **maintain** set (other facts of the same kind that must
not move; trained on ``maintain_train``, measured on ``maintain_eval``). Each row has a
``prompt`` (the fact template, the training format), a ``subject``, the ``true`` answer and,
for edits, the ``new`` one; ``wrong_options`` (the wrong answers a multiple-choice question
lists: the three other sport answers, golf included, or CounterFact's ``mcq_wrong_options``),
and for CounterFact its ``paraphrase_prompts`` and ``neighborhood_prompts`` (empty lists for
sports). ``candidates`` lists the answers a completion is scored against (renormalized over
them); ``None`` for CounterFact, scored over the full vocabulary. Sports-Athlete-Edit scores
over the three sports, as the knowledge filter of chapter 00 does: adding golf, as the paper
does, would let the one-shot prompt's "golf" take a third of the mass on this small model.
Sports-Sport-Edit needs golf, its target, among the candidates.

- **Sports-Athlete-Edit**: N athletes, each moved to a random other sport; trained and
  evaluated on the same athletes.
- **Sports-Sport-Edit**: the athletes of one sport all moved to golf; trained on half of
  them, evaluated on the other half.
- **CounterFact-Edit**: N facts moved to their ``target_new``.
- **Unlearning** (``mode="unlearn"``): the same forget sets with no new answer; the loss
  pushes P(true) down instead.

``holdout`` removes subjects from the pool, so that a validation task for choosing
hyper-parameters never shares a fact with the task that is evaluated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.prompts import SPORT_ANSWERS, SPORTS, sports_fact_prompt

MODES = ("edit", "unlearn")
COLUMNS = ["subject", "prompt", "true", "new", "wrong_options", "paraphrase_prompts", "neighborhood_prompts"]


@dataclass(frozen=True)
class EditTask:
    """One editing or unlearning task: forget and maintain sets, each split train / eval."""

    name: str
    mode: str
    forget_train: pd.DataFrame
    forget_eval: pd.DataFrame
    maintain_train: pd.DataFrame
    maintain_eval: pd.DataFrame
    candidates: tuple[str, ...] | None

    def fingerprint(self) -> str:
        """A short hash of the task's content (which facts, which answers, which mode)."""
        parts = [self.name, self.mode, str(self.candidates)]
        for split in ("forget_train", "forget_eval", "maintain_train", "maintain_eval"):
            frame = getattr(self, split)
            parts += [split, *(f"{s}|{t}|{n}" for s, t, n in zip(frame.subject, frame.true, frame.new))]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def subjects(self) -> dict[str, set[str]]:
        """The subjects of each split (for checking that splits do not overlap)."""
        return {
            split: set(getattr(self, split).subject)
            for split in ("forget_train", "forget_eval", "maintain_train", "maintain_eval")
        }


def _check(mode: str, n: int, available: int, what: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n < 1:
        raise ValueError(f"The forget set must hold at least one fact, got {n}")
    if n > available:
        raise ValueError(f"Asked for {n} {what} but only {available} are available")


def _split_maintain(pool: pd.DataFrame, n_maintain: int, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Up to ``n_maintain`` facts for training and as many for evaluation, disjoint."""
    if n_maintain < 1:
        raise ValueError(f"n_maintain must be at least 1, got {n_maintain}")
    if len(pool) < 2:
        raise ValueError("Too few facts left for a maintain set")
    shuffled = pool.iloc[rng.permutation(len(pool))]
    n = min(n_maintain, len(pool) // 2)
    return shuffled.iloc[:n].reset_index(drop=True), shuffled.iloc[n : 2 * n].reset_index(drop=True)


def athlete_rows(athletes: pd.DataFrame, new: list[str] | None = None) -> pd.DataFrame:
    """Task rows (``COLUMNS``) for athletes (columns ``athlete``, ``sport``), with new answers if given."""
    return pd.DataFrame({
        "subject": athletes.athlete.to_numpy(),
        "prompt": [sports_fact_prompt(a) for a in athletes.athlete],
        "true": athletes.sport.to_numpy(),
        "new": new if new is not None else [""] * len(athletes),
        "wrong_options": [[s for s in SPORT_ANSWERS if s != sport] for sport in athletes.sport],
        "paraphrase_prompts": [[] for _ in range(len(athletes))],
        "neighborhood_prompts": [[] for _ in range(len(athletes))],
    })[COLUMNS]


def fact_rows(facts: pd.DataFrame, with_new: bool) -> pd.DataFrame:
    """Task rows (``COLUMNS``) for CounterFact facts; ``new`` is ``target_new`` when ``with_new``."""
    return pd.DataFrame({
        "subject": facts.subject.to_numpy(), "prompt": facts.prompt.to_numpy(), "true": facts.target_true.to_numpy(),
        "new": facts.target_new.to_numpy() if with_new else [""] * len(facts),
        "wrong_options": [list(o) for o in facts.mcq_wrong_options],
        "paraphrase_prompts": [list(p) for p in facts.paraphrase_prompts],
        "neighborhood_prompts": [list(p) for p in facts.neighborhood_prompts],
    })[COLUMNS]


def sports_athlete_edit(
    known: pd.DataFrame, n_facts: int, *, seed: int, mode: str = "edit", n_maintain: int = 64,
    holdout: Collection[str] = (),
) -> EditTask:
    """N known athletes each moved to a random other sport (seeded); train = eval set."""
    pool = known[~known.athlete.isin(holdout)]
    _check(mode, n_facts, len(pool), "athletes")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    forget = pool.iloc[order[:n_facts]]
    new = [str(rng.choice([s for s in SPORTS if s != sport])) for sport in forget.sport] if mode == "edit" else None
    rows = athlete_rows(forget, new)
    maintain_train, maintain_eval = _split_maintain(athlete_rows(pool.iloc[order[n_facts:]]), n_maintain, rng)
    return EditTask(f"sports_athlete_{mode}", mode, rows, rows, maintain_train, maintain_eval, SPORTS)


def sports_sport_edit(
    known: pd.DataFrame, sport: str, *, seed: int, mode: str = "edit", n_maintain: int = 64,
    holdout: Collection[str] = (), n_athletes: int | None = None,
) -> EditTask:
    """Every known athlete of ``sport`` moved to golf: train on half, evaluate on the other half.

    ``n_athletes`` caps the athletes used (a seeded sample of the sport), to make the task smaller.
    """
    if sport not in SPORTS:
        raise ValueError(f"sport must be one of {SPORTS}, got {sport!r}")
    pool = known[~known.athlete.isin(holdout)]
    of_sport = pool[pool.sport == sport]
    if n_athletes is not None and n_athletes < 2:
        raise ValueError(f"n_athletes must be at least 2 (half trained, half measured), got {n_athletes}")
    _check(mode, len(of_sport) // 2, len(of_sport), f"{sport} athletes")
    rng = np.random.default_rng(seed)
    shuffled = of_sport.iloc[rng.permutation(len(of_sport))[:n_athletes]]
    half = len(shuffled) // 2
    new = ["golf"] * half if mode == "edit" else None
    train = athlete_rows(shuffled.iloc[:half], new)
    evaluate = athlete_rows(shuffled.iloc[half : 2 * half], new)
    maintain_train, maintain_eval = _split_maintain(athlete_rows(pool[pool.sport != sport]), n_maintain, rng)
    return EditTask(f"sports_sport_{mode}", mode, train, evaluate, maintain_train, maintain_eval, SPORT_ANSWERS)


def counterfact_edit(
    known: pd.DataFrame, n_facts: int, *, seed: int, mode: str = "edit", n_maintain: int = 64,
    holdout: Collection[str] = (),
) -> EditTask:
    """N known CounterFact facts moved to their ``target_new``; train = eval set."""
    pool = known[~known.subject.isin(holdout)]
    _check(mode, n_facts, len(pool), "facts")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))
    forget = fact_rows(pool.iloc[order[:n_facts]], with_new=mode == "edit")
    # A subject can carry facts of several relations; none of the forget subjects is maintained.
    rest = pool.iloc[order[n_facts:]]
    rest = rest[~rest.subject.isin(forget.subject)]
    maintain_train, maintain_eval = _split_maintain(fact_rows(rest, with_new=False), n_maintain, rng)
    return EditTask(f"counterfact_{mode}", mode, forget, forget, maintain_train, maintain_eval, None)
