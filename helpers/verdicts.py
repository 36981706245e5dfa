"""The paper's claims, tested: fact lookup against each other localization, with intervals over seeds.

Each claim names a headline metric (:data:`helpers.results.HEADLINE`) and the localizations
fact lookup is compared with. For every task and comparison, the difference fact lookup minus
the other localization is taken seed by seed (both ran on the same task seed, so the
difference is paired), signed so that a positive value favours fact lookup, and summarized by
its mean and a Student-t 95% interval. The verdict follows from the interval alone:

- a claim that fact lookup is **better**: *reproduced* if the interval lies above 0,
  *not reproduced* if it lies below 0, *inconclusive* if it contains 0;
- a claim that fact lookup is **no worse** (``margin``): *reproduced* if the interval lies
  above ``-margin``, *not reproduced* if it lies below ``-margin``, else *inconclusive*;
- with fewer than two seeds there is no interval: *inconclusive (one seed)*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.results import LATENT_HEADLINE, RUN_COLUMNS
from helpers.stats import mean_ci

REFERENCE = "fact_lookup"
OUTPUT_TRACING = ("causal_tracing", "causal_tracing_mlps", "attribution_patching")


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a comparison of one metric between localizations."""

    name: str
    statement: str
    metric: str  # a column of helpers.results.headline_metrics
    higher_is_better: bool
    comparators: tuple[str, ...] = OUTPUT_TRACING
    margin: float | None = None  # None: fact lookup must be better; else: no worse than by this much


CLAIMS = (
    Claim("format", "FLU edits survive a multiple-choice format better than output-tracing edits",
          "MCQ edit accuracy", True),
    Claim("paraphrase", "FLU edits carry over to paraphrased prompts better than output-tracing edits",
          "paraphrase edit accuracy", True),
    Claim("relearning", "FLU edits resist relearning better than output-tracing edits", "relearning error", True),
    Claim("latent", "FLU edits leave less of the original fact in the hidden states", LATENT_HEADLINE, False),
    Claim("parameters", "FLU, with a fraction of the weights, is as robust to a multiple-choice format as "
          "editing all MLPs or the whole model", "MCQ edit accuracy", True, ("all_mlps", "nonlocalized"), margin=0.05),
)
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "inconclusive (one seed)")
VERDICT_COLOURS = dict(zip(VERDICTS, ("#d9f2d9", "#f8d7da", "#fff3cd", "#eeeeee")))


def claim_named(name: str) -> Claim:
    """The claim of :data:`CLAIMS` called ``name``."""
    named = {c.name: c for c in CLAIMS}
    if name not in named:
        raise ValueError(f"Unknown claim {name!r}; choose one of {list(named)}")
    return named[name]


def paired_differences(metrics: pd.DataFrame, task: str, metric: str, other: str, higher_is_better: bool = True) -> pd.Series:
    """Per seed: fact lookup's ``metric`` minus ``other``'s on ``task``, positive when fact lookup is better."""
    part = metrics[(metrics.task == task) & metrics.localization.isin([REFERENCE, other])]
    table = part.pivot_table(index="seed", columns="localization", values=metric)
    if REFERENCE not in table or other not in table:
        return pd.Series(dtype=float)
    difference = (table[REFERENCE] - table[other]).dropna()
    return difference if higher_is_better else -difference


def verdict(low: float, high: float, margin: float | None = None) -> str:
    """The verdict of a difference's interval (see the module doc)."""
    if np.isnan(low) or np.isnan(high):
        return "inconclusive (one seed)"
    threshold = -(margin or 0.0)
    if low > threshold:
        return "reproduced"
    if high < threshold:
        return "not reproduced"
    return "inconclusive"


def _parameter_ratio(task_metrics: pd.DataFrame, other: str) -> dict[str, float]:
    """The other localization's trainable parameters as a multiple of fact lookup's (when the metrics carry them)."""
    if "n_parameters" not in task_metrics:
        return {}
    parameters = task_metrics.groupby("localization").n_parameters.first()
    return {"parameters (x FLU)": parameters[other] / parameters[REFERENCE]}


def verdict_table(metrics: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS, confidence: float = 0.95) -> pd.DataFrame:
    """One row per claim, task and comparison: the means, the paired difference, its interval, the verdict.

    ``metrics`` is :func:`helpers.results.headline_metrics` output. Comparisons whose metric was
    not measured for a task (the latent probes on CounterFact, an MCQ format the model cannot
    answer) are left out.
    """
    missing = [c for c in [*RUN_COLUMNS, *{claim.metric for claim in claims}] if c not in metrics.columns]
    if missing:
        raise ValueError(f"The metrics lack the columns {missing}; pass helpers.results.headline_metrics output")
    rows = []
    for claim in claims:
        for task in metrics.task.unique():
            for other in claim.comparators:
                difference = paired_differences(metrics, task, claim.metric, other, claim.higher_is_better)
                if difference.empty:
                    continue
                mean, low, high = mean_ci(difference, confidence)
                task_metrics = metrics[metrics.task == task]
                means = task_metrics.groupby("localization")[claim.metric].mean()
                rows.append({
                    "claim": claim.name, "statement": claim.statement, "task": task, "metric": claim.metric,
                    "compared with": other, "seeds": len(difference), "fact lookup": means[REFERENCE],
                    "other": means[other], "difference (favouring FLU)": mean, "CI low": low, "CI high": high,
                    **_parameter_ratio(task_metrics, other),
                    "needed": "> 0" if claim.margin is None else f"> {-claim.margin:g}",
                    "verdict": verdict(low, high, claim.margin),
                })
    return pd.DataFrame(rows)


def styled_verdicts(table: pd.DataFrame):
    """A :func:`verdict_table` for display: three decimals, each verdict on its colour."""
    shown = table.drop(columns=["statement", "metric"])
    return (shown.style.format(precision=3, na_rep="–")
            .map(lambda v: f"background-color: {VERDICT_COLOURS.get(v, '')}", subset=["verdict"])
            .hide(axis="index"))


# A relearning verdict needs attacks that worked where they trained (helpers.relearning.is_informative).
UNINFORMATIVE = "attack uninformative"
RELEARNING_METRIC = "relearning error"


def flag_uninformative_attacks(table: pd.DataFrame, fits: pd.DataFrame, attack: str) -> pd.DataFrame:
    """``table`` (:func:`verdict_table`) with its relearning rows checked against the ``attack``'s fits.

    ``fits`` is :func:`helpers.results.attack_fits` output. Column ``attack informative`` counts
    the runs of both localizations in which the attack raised P(true) on its trained half; unless
    it did in every one, the row's verdict becomes ``"attack uninformative"``: a relearning error
    that did not fall says nothing about the edit when the attack did not fit its own half either.
    """
    table = table.copy()
    rows = table.metric == RELEARNING_METRIC
    if not rows.any():
        return table
    fits = fits[fits.attack == attack]
    counts = []
    for index in table.index[rows]:
        row = table.loc[index]
        sides = fits[(fits.task == row.task) & fits.localization.isin([REFERENCE, row["compared with"]])]
        counts.append(f"{int(sides.informative.sum())}/{len(sides)}")
        if sides.empty or not sides.informative.all():
            table.loc[index, "verdict"] = UNINFORMATIVE
    table.loc[rows, "attack informative"] = counts
    return table
