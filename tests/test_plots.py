"""Shared figures: the radar closes each trace and drops axes nobody measured."""

import numpy as np
import pandas as pd

from helpers.plots import radar


def test_radar_closes_each_trace_and_drops_unmeasured_axes():
    means = pd.DataFrame({"forget error": [0.9, 0.8], "MCQ edit accuracy": [np.nan, np.nan], "relearning error": [0.7, 0.2]},
                         index=["fact_lookup", "causal_tracing"])
    fig = radar(means, "t")
    assert [trace.name for trace in fig.data] == ["fact_lookup", "causal_tracing"]
    assert list(fig.data[0].theta) == ["forget error", "relearning error", "forget error"]
    assert list(fig.data[1].r) == [0.8, 0.2, 0.8]
