"""Plotly set-up for figures that show in Jupyter and in the offline book, and shared figures.

Jupyter Book 1 drops plotly's own mime type, and plotly's HTML renderers fetch plotly.js
or MathJax from a CDN. Our renderer emits both the plotly mime type (for JupyterLab and
VS Code) and an HTML div without plotly.js; the book loads one local copy of plotly.js
on every page (``_static/plotly.min.js``, copied there by :mod:`helpers.book`).
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

from helpers.localization import LOCALIZATIONS

RENDERER = "book"
# One colour per localization in every figure of the book (the paper's names, in its order).
LOCALIZATION_COLOURS = dict(zip(LOCALIZATIONS, px.colors.qualitative.Plotly))
COLOUR_ORDER = {"localization": list(LOCALIZATION_COLOURS)}


class BookRenderer(MimetypeRenderer):
    """Plotly mime type plus an HTML div that relies on a page-level plotly.js."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        html = pio.to_html(
            fig_dict, include_plotlyjs=False, include_mathjax=False, full_html=False,
            default_width="100%", default_height=480, validate=False,
        )
        return {"application/vnd.plotly.v1+json": json.loads(pio.to_json(fig_dict, validate=False)), "text/html": html}


def use_book_figures(template: str = "plotly_white") -> None:
    """Make every ``fig.show()`` render in notebooks and in the offline book."""
    pio.renderers[RENDERER] = BookRenderer()
    pio.renderers.default = RENDERER
    pio.templates.default = template


def format_bars(summary: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars of P(correct) per prompt format and data set, with 95% intervals and chance.

    ``summary`` is :func:`helpers.formats.summarize_formats` output with a ``dataset`` column.
    """
    fig = px.bar(
        summary, x="format", y="p_correct", color="dataset", barmode="group",
        error_y=summary.ci_high - summary.p_correct, error_y_minus=summary.p_correct - summary.ci_low,
        labels={"p_correct": "P(correct answer), renormalized over the options", "format": "prompt format"},
        title=title, range_y=[0, 1],
    )
    for (dataset, chance), _ in summary.groupby(["dataset", "chance"], sort=False):
        fig.add_hline(y=chance, line_dash="dot", annotation_text=f"chance, {dataset}", annotation_position="top left")
    return fig


def metric_bars(
    summary: pd.DataFrame, title: str, labels: dict[str, str] | None = None, *, x: str = "metric",
    y_label: str = "mean over seeds (probability)", facet_col: str | None = None,
) -> go.Figure:
    """Grouped bars: one group per ``x`` value, one bar per localization, 95% intervals where defined.

    ``summary`` is :func:`helpers.stats.summarize` output grouped by ``localization`` (and ``x``).
    """
    frame = summary.assign(**{x: summary[x].map(labels or {}).fillna(summary[x])})
    upper = (frame.ci_high - frame["mean"]).fillna(0)
    lower = (frame["mean"] - frame.ci_low).fillna(0)
    fig = px.bar(
        frame, x=x, y="mean", color="localization", barmode="group", error_y=upper, error_y_minus=lower,
        labels={"mean": y_label, x: ""}, title=title, range_y=[0, 1.05], hover_data={"n": True}, facet_col=facet_col,
        color_discrete_map=LOCALIZATION_COLOURS, category_orders=COLOUR_ORDER,
    )
    fig.update_layout(legend_title_text="localization")
    return fig


def probe_lines(long: pd.DataFrame, title: str) -> go.Figure:
    """Share of edited athletes decoded as the original and as the new sport, by layer (the paper's probe figure).

    ``long`` is :func:`helpers.results.latent_shares_long` output for one task and probe variant.
    """
    fig = px.line(long, x="layer", y="share", color="localization", facet_col="decoded as", markers=True,
                  title=title, labels={"share": "share of edited athletes"},
                  color_discrete_map=LOCALIZATION_COLOURS, category_orders=COLOUR_ORDER)
    fig.update_yaxes(range=[0, 1])
    return fig


def radar(means: pd.DataFrame, title: str) -> go.Figure:
    """One closed trace per localization over the headline metrics (the paper's Figure 2).

    ``means``: one row per localization, one column per metric (probabilities; higher is
    better on every axis). Metrics not measured for any localization are left out.
    """
    means = means.dropna(axis=1, how="all")
    axes = list(means.columns)
    fig = go.Figure()
    for localization, row in means.iterrows():
        values = [*row.to_numpy(dtype=float), row.iloc[0]]
        fig.add_trace(go.Scatterpolar(r=values, theta=[*axes, axes[0]], name=str(localization), mode="lines+markers",
                                      line_color=LOCALIZATION_COLOURS.get(str(localization))))
    fig.update_layout(title=title, polar={"radialaxis": {"range": [0, 1]}}, legend_title_text="localization")
    return fig


def strength_figure(curves: pd.DataFrame, matched: pd.DataFrame, title: str, labels: dict[str, str] | None = None) -> go.Figure:
    """Robustness against training-format edit accuracy, one panel per measure (the strength curve).

    ``curves`` (:func:`helpers.results.strength_curves`) and ``matched``
    (:func:`helpers.results.matched_strength`) of one task: every check of every seed is a faint
    point; the line joins each localization's bin means (at the mean edit accuracy of its checks in the bin).
    """
    measures = [m for m in dict.fromkeys(curves.measure) if m in set(matched.measure)]
    curves = curves[curves.measure.isin(measures)]  # both figures get the same panels, in the same order
    order = {**COLOUR_ORDER, "measure": measures}
    common = {"x": "edit_accuracy", "color": "localization", "facet_col": "measure", "facet_col_wrap": 3,
              "color_discrete_map": LOCALIZATION_COLOURS, "category_orders": order}
    names = {"edit_accuracy": "training-format edit accuracy (trained facts)", "value": "robustness measure"}
    fig = px.line(matched.sort_values("edit_accuracy"), y="value", markers=True, title=title, labels=names, **common)
    points = px.scatter(curves, y="value", opacity=0.35, hover_data=["seed", "step"], labels=names, **common)
    for trace in points.data:
        fig.add_trace(trace.update(showlegend=False, marker_size=6))
    fig.for_each_annotation(lambda a: a.update(text=(labels or {}).get(a.text.split("=")[-1], a.text.split("=")[-1])))
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(legend_title_text="localization")
    return fig
