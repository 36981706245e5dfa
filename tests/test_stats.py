"""Means and Student-t intervals over seeds."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers.stats import mean_ci, summarize


def test_interval_matches_scipy_and_degenerates_cleanly():
    values = [0.2, 0.4, 0.9]
    mean, low, high = mean_ci(values)
    expected = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(0.5) and (low, high) == pytest.approx(expected)
    assert np.isnan(mean_ci([0.3])[1]) and mean_ci([0.3])[0] == 0.3
    assert all(np.isnan(mean_ci([])))


def test_summarize_groups_and_names_missing_columns():
    frame = pd.DataFrame({"loc": ["a", "a", "b"], "x": [0.0, 1.0, 0.5], "y": [1.0, np.nan, 0.2]})
    out = summarize(frame, ["loc"], ["x", "y"]).set_index(["loc", "metric"])
    assert out.loc[("a", "x"), "mean"] == 0.5 and out.loc[("a", "y"), "n"] == 1
    with pytest.raises(ValueError, match="'z'"):
        summarize(frame, ["loc"], ["z"])
