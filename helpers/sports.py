"""Sports facts: which of three sports an athlete plays, and which athletes a model knows.

The embedded CSV (``helpers/data/sports_athletes.csv``) has two columns, ``athlete`` and
``sport`` (basketball, baseball or football, meaning American football), one row per real
athlete. Any CSV with the same columns can be used instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pandas as pd

from helpers.knowledge import cached_scores, known_mask
from helpers.models import LoadedModel
from helpers.parameters import check_value
from helpers.prompts import SPORT_ANSWERS, SPORTS, SPORTS_FACT_TEMPLATE, sports_fact_prompt
from helpers.scoring import candidate_probs, renormalize
from helpers.validation import FRAME, check_columns, check_unique, read_csv, text

EMBEDDED_SPORTS = files("helpers") / "data" / "sports_athletes.csv"
SPORTS_COLUMNS = ("athlete", "sport")


def load_sports(path: str | Path | None = None) -> pd.DataFrame:
    """Read and check a sports CSV (the embedded one by default); only its two columns are kept."""
    source = EMBEDDED_SPORTS if path is None else Path(path)
    athletes = read_csv(source, "Sports CSV")
    lines = [f"line {i + 2}" for i in range(len(athletes))]
    return check_sports(athletes, f"Sports CSV {source}", lines)[list(SPORTS_COLUMNS)].reset_index(drop=True)


def check_sports(athletes: pd.DataFrame, source: str = FRAME, labels: list[str] | None = None) -> pd.DataFrame:
    """``athletes`` with stripped names and sports, after checking every record.

    Each athlete needs a non-empty name and one of :data:`SPORTS`; no name may appear twice
    (case and spaces ignored). ``labels`` name the records in errors (default: ``row <index>``).
    """
    check_columns(athletes, SPORTS_COLUMNS, source)
    labels = labels or [f"row {index!r}" for index in athletes.index]
    names = [text(a, source, label, "athlete") for a, label in zip(athletes.athlete, labels)]
    sports = [text(s, source, label, "sport") for s, label in zip(athletes.sport, labels)]
    for sport, name, label in zip(sports, names, labels):
        if sport not in SPORTS:
            raise ValueError(f"{source}, {label} (athlete {name!r}): field 'sport' is {sport!r}; allowed: {list(SPORTS)}")
    check_unique(names, [f"{label} (athlete {n!r})" for label, n in zip(labels, names)], source, "athlete")
    return athletes.assign(athlete=names, sport=sports)


def score_sports(model: LoadedModel, athletes: pd.DataFrame, *, batch_size: int = 64) -> pd.DataFrame:
    """Add the model's answer probabilities for the fact prompt, cached per model.

    Columns added: ``p_<answer>`` (full vocabulary) for basketball, baseball, football and
    golf; ``p_true`` (the true sport's probability renormalized over the three sports of
    the data set) and ``predicted`` (the argmax among them). ``athletes`` is checked first
    (:func:`check_sports`).
    """
    athletes = check_sports(athletes)

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        prompts = [sports_fact_prompt(a) for a in frame.athlete]
        probs = candidate_probs(model, prompts, SPORT_ANSWERS, batch_size=batch_size, desc="athletes")
        return pd.DataFrame(probs, columns=[f"p_{a}" for a in SPORT_ANSWERS])

    scores = cached_scores(model, "sports", athletes[["athlete"]], compute, template=SPORTS_FACT_TEMPLATE)
    among_sports = renormalize(scores[[f"p_{s}" for s in SPORTS]].to_numpy())
    true_index = athletes.sport.map(SPORTS.index).to_numpy()
    scores["p_true"] = among_sports[range(len(athletes)), true_index]
    scores["predicted"] = [SPORTS[i] for i in among_sports.argmax(axis=1)]
    return athletes.join(scores)


def known_athletes(
    model: LoadedModel, athletes: pd.DataFrame | None = None, *, threshold: float = 0.5
) -> pd.DataFrame:
    """The athletes whose true sport gets renormalized probability >= threshold (an error if none do)."""
    check_value("threshold", threshold)
    scored = score_sports(model, load_sports() if athletes is None else athletes)
    return scored[known_mask(scored.p_true, threshold, "athletes")].reset_index(drop=True)
