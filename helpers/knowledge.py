"""Per-model cache of knowledge scores, so each data set is scored once per model."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from helpers.cache import cache_root, slug, write_atomic
from helpers.keys import model_key
from helpers.models import LoadedModel


def cached_scores(
    model: LoadedModel, dataset: str, keys: pd.DataFrame, compute: Callable[[pd.DataFrame], pd.DataFrame],
    *, template: str | None = None,
) -> pd.DataFrame:
    """``compute(keys)``, cached on disk under a hash of the model key, the prompt template and ``keys``' content.

    The cache holds probabilities, not decisions, so a new threshold needs no rescoring;
    another CSV, another template, another dtype, another model or changed code gets its own
    file. ``template``: the prompt template that turns ``keys`` into prompts (``None`` when
    ``keys`` hold the prompts). A cache that cannot be written (a read-only folder) costs a
    warning, not the scores.
    """
    key = json.dumps({**model_key(model), "template": template}, sort_keys=True) + keys.to_csv(index=False)
    path = cache_root() / "scores" / slug(model.name) / f"{dataset}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.csv"
    if path.exists():
        scores = pd.read_csv(path)
    else:
        scores = compute(keys.reset_index(drop=True))
        _save(path, scores)
    scores.index = keys.index
    return scores


def _save(path: Path, scores: pd.DataFrame) -> None:
    """Write the scores, or warn that they were not saved (a read-only cache, a full disk)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, scores.to_csv(index=False))
    except OSError as error:
        warnings.warn(f"Could not save scores to {path} ({error}); they are returned but not cached", stacklevel=3)


def known_mask(p_true: pd.Series, threshold: float, what: str) -> pd.Series:
    """Which rows reach ``threshold``; an error naming the highest probability when none does."""
    known = p_true >= threshold
    if not known.any():
        raise ValueError(
            f"No {what} reach threshold {threshold} (the highest P(true) is {p_true.max():.3f}); lower the threshold"
        )
    return known


def candidate_sample(frame: pd.DataFrame, n: int | None, *, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows of a data set (a seeded sample, in the data set's order); all of them when ``n`` is None or 0.

    The ``ci`` profile scores a sample of the athletes and facts instead of every one; every chapter
    draws the same sample, so the facts a chapter calls known are the ones the others saw.
    """
    if n is None or n == 0 or n >= len(frame):
        return frame
    if n < 0:
        raise ValueError(f"The number of candidates must be positive (or None for all), got {n}")
    return frame.sample(n=n, random_state=seed).sort_index()
