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
