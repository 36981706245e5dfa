"""Per-model cache of knowledge scores, so each data set is scored once per model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pandas as pd

from helpers.cache import cache_dir, slug, write_atomic


def cached_scores(
    model_name: str, dataset: str, keys: pd.DataFrame, compute: Callable[[pd.DataFrame], pd.DataFrame]
) -> pd.DataFrame:
    """``compute(keys)``, cached on disk under the model's name and a hash of ``keys``' content.

    The cache holds probabilities, not decisions, so a new threshold needs no rescoring;
    another CSV, another template or another model gets its own file.
    """
    digest = hashlib.sha256(keys.to_csv(index=False).encode()).hexdigest()[:16]
    path = cache_dir("scores", slug(model_name)) / f"{dataset}-{digest}.csv"
    if path.exists():
        scores = pd.read_csv(path)
    else:
        scores = compute(keys.reset_index(drop=True))
        write_atomic(path, scores.to_csv(index=False))
    scores.index = keys.index
    return scores


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
