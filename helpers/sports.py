"""Sports facts: which of three sports an athlete plays, and which athletes a model knows.

The embedded CSV (``helpers/data/sports_athletes.csv``) has two columns, ``athlete`` and
``sport`` (basketball, baseball or football, meaning American football), one row per real
athlete. Any CSV with the same columns can be used instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pandas as pd

from helpers.knowledge import cached_scores
from helpers.models import LoadedModel
from helpers.prompts import SPORT_ANSWERS, SPORTS, sports_fact_prompt
from helpers.scoring import candidate_probs, renormalize

EMBEDDED_SPORTS = files("helpers") / "data" / "sports_athletes.csv"
SPORTS_COLUMNS = ("athlete", "sport")


def load_sports(path: str | Path | None = None) -> pd.DataFrame:
    """Read and check a sports CSV (the embedded one by default)."""
    source = EMBEDDED_SPORTS if path is None else Path(path)
    if path is not None and not source.exists():
        raise FileNotFoundError(f"Sports CSV {source} does not exist")
    athletes = pd.read_csv(source, dtype=str, keep_default_na=False)
    missing = [c for c in SPORTS_COLUMNS if c not in athletes.columns]
    if missing:
        raise ValueError(f"Sports CSV {source} lacks the columns {missing}; it needs {list(SPORTS_COLUMNS)}")
    athletes = athletes[list(SPORTS_COLUMNS)].apply(lambda column: column.str.strip())
    if athletes.empty:
        raise ValueError(f"Sports CSV {source} has no rows")
    if (athletes.athlete == "").any():
        raise ValueError(f"Sports CSV {source} has rows with an empty athlete name")
    unknown = sorted(set(athletes.sport) - set(SPORTS))
    if unknown:
        raise ValueError(f"Sports CSV {source} has unknown sports {unknown}; allowed: {list(SPORTS)}")
    duplicated = sorted(set(athletes.athlete[athletes.athlete.duplicated()]))
    if duplicated:
        raise ValueError(f"Sports CSV {source} lists athletes more than once: {duplicated[:10]}")
    return athletes.reset_index(drop=True)


def score_sports(model: LoadedModel, athletes: pd.DataFrame, *, batch_size: int = 64) -> pd.DataFrame:
    """Add the model's answer probabilities for the fact prompt, cached per model.

    Columns added: ``p_<answer>`` (full vocabulary) for basketball, baseball, football and
    golf; ``p_true`` (the true sport's probability renormalized over the three sports of
    the data set) and ``predicted`` (the argmax among them).
    """

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        prompts = [sports_fact_prompt(a) for a in frame.athlete]
        probs = candidate_probs(model, prompts, SPORT_ANSWERS, batch_size=batch_size, desc="athletes")
        return pd.DataFrame(probs, columns=[f"p_{a}" for a in SPORT_ANSWERS])

    scores = cached_scores(model.name, "sports", athletes[["athlete"]], compute)
    among_sports = renormalize(scores[[f"p_{s}" for s in SPORTS]].to_numpy())
    true_index = athletes.sport.map(SPORTS.index).to_numpy()
    scores["p_true"] = among_sports[range(len(athletes)), true_index]
    scores["predicted"] = [SPORTS[i] for i in among_sports.argmax(axis=1)]
    return athletes.join(scores)


def known_athletes(
    model: LoadedModel, athletes: pd.DataFrame | None = None, *, threshold: float = 0.5
) -> pd.DataFrame:
    """The athletes whose true sport gets renormalized probability >= threshold."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    scored = score_sports(model, load_sports() if athletes is None else athletes)
    return scored[scored.p_true >= threshold].reset_index(drop=True)
