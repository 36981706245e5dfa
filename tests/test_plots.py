"""Shared figures: the radar closes each trace and drops axes nobody measured."""

import numpy as np
import pandas as pd

from helpers.plots import radar, strength_figure


def test_radar_closes_each_trace_and_drops_unmeasured_axes():
    means = pd.DataFrame({"forget error": [0.9, 0.8], "MCQ edit accuracy": [np.nan, np.nan], "relearning error": [0.7, 0.2]},
                         index=["fact_lookup", "causal_tracing"])
    fig = radar(means, "t")
    assert [trace.name for trace in fig.data] == ["fact_lookup", "causal_tracing"]
    assert list(fig.data[0].theta) == ["forget error", "relearning error", "forget error"]
    assert list(fig.data[1].r) == [0.8, 0.2, 0.8]


def test_strength_figure_has_a_panel_per_measure_with_lines_and_points():
    curves = pd.DataFrame({
        "localization": ["fact_lookup", "causal_tracing"] * 2, "seed": [0, 0, 1, 1], "step": [4, 4, 8, 8],
        "edit_accuracy": [0.6, 0.4, 0.9, 0.7], "measure": ["paraphrase_edit_accuracy"] * 2 + ["cloze_mcq_edit_accuracy"] * 2,
        "value": [0.5, 0.3, 0.8, 0.2],
    })
    matched = curves.assign(checks=1)
    fig = strength_figure(curves, matched, "t", {"cloze_mcq_edit_accuracy": "cloze MCQ"})
    assert {a.text for a in fig.layout.annotations} == {"paraphrase_edit_accuracy", "cloze MCQ"}
    modes = [(trace.mode, trace.name, trace.showlegend is not False) for trace in fig.data]
    assert sum(mode == "lines+markers" for mode, *_ in modes) == 4 and sum(mode == "markers" for mode, *_ in modes) == 4
    assert sorted(name for mode, name, shown in modes if shown) == ["causal_tracing", "fact_lookup"]  # lines, once each
    assert not any(shown for mode, _, shown in modes if mode == "markers")
