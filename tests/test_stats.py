"""Means and Student-t intervals over seeds."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers.stats import holm, mean_ci, summarize, t_test_p


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


def test_t_test_p_matches_scipy_and_the_interval():
    values = [0.2, 0.4, 0.9]
    assert t_test_p(values) == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)
    assert t_test_p(values, null=-0.05) == pytest.approx(stats.ttest_1samp(values, -0.05).pvalue)
    low, high = mean_ci(values)[1:]
    assert (t_test_p(values, null=low - 1e-9) < 0.05) and (t_test_p(values, null=low + 1e-3) > 0.05)
    assert np.isnan(t_test_p([0.3])) and t_test_p([0.2, 0.2]) == 0.0 and t_test_p([0.0, 0.0]) == 1.0


def test_holm_against_a_hand_computed_example():
    # sorted: .005 x 4 = .02; .01 x 3 = .03; .03 x 2 = .06; .04 x 1 = .04, raised to .06 (non-decreasing)
    adjusted = holm([0.01, 0.04, np.nan, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, np.nan, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert holm([]).size == 0
