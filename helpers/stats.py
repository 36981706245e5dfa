"""Means with confidence intervals over seeds (or facts), in long format for figures and tables;
the paired t-test's p-value and the Holm correction for a family of comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval; the interval is NaN with fewer than two values."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half


def t_test_p(values: Sequence[float], null: float = 0.0) -> float:
    """Two-sided one-sample Student-t p-value of ``mean(values) == null``; NaN with fewer than two values.

    It is below ``1 - confidence`` exactly when :func:`mean_ci`'s interval excludes ``null``. Values
    that do not vary give 0 (or 1 when they all equal ``null``).
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return float("nan")
    spread = float(x.std(ddof=1))
    if spread == 0:
        return 1.0 if float(x.mean()) == null else 0.0
    t = (float(x.mean()) - null) / (spread / np.sqrt(x.size))
    return float(2 * stats.t.sf(abs(t), x.size - 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values for one family of tests (NaN entries stay NaN and are not counted).

    Sorted ascending, the k-th smallest of m p-values is multiplied by m - k + 1, capped at 1 and
    made non-decreasing; a test is rejected at level alpha when its adjusted p-value is below alpha,
    which keeps the chance of any false rejection in the family at most alpha.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def summarize(frame: pd.DataFrame, by: Sequence[str], metrics: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """One row per group and metric: ``mean``, ``ci_low``, ``ci_high`` and ``n`` (non-missing values)."""
    missing = [c for c in [*by, *metrics] if c not in frame.columns]
    if missing:
        raise ValueError(f"Columns not in the frame: {missing}")
    rows = []
    for keys, group in frame.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        for metric in metrics:
            mean, low, high = mean_ci(group[metric], confidence)
            rows.append({**dict(zip(by, keys)), "metric": metric, "mean": mean, "ci_low": low, "ci_high": high,
                         "n": int(group[metric].notna().sum())})
    return pd.DataFrame(rows)
