"""The paper's claims, tested: fact lookup against each other localization, with intervals over seeds.

Each claim names a headline metric (:data:`helpers.results.HEADLINE`), the localizations fact
lookup is compared with, and the tasks on which the paper makes it (``paper_tasks``). For every
task and comparison, the difference fact lookup minus the other localization is taken seed by
seed (both ran on the same task seed, so the difference is paired), signed so that a positive
value favours fact lookup, and summarized by its mean, a Student-t 95% interval and the t-test's
p-value against the claim's threshold (0, or ``-margin`` for a "no worse" claim).

- A comparison on a task where the paper makes the claim is a **reproduction**; one elsewhere
  (relearning on Sports-Sport-Edit, where every method of the paper relearns, or on CounterFact,
  whose relearning numbers in the paper trained toward the wrong target) is a **new test**. Only
  reproductions enter the reproduction tally.
- A comparison in which any run, on either side, did not reach the completeness criterion
  (:mod:`helpers.finetune`) is **edit incomplete**: its edits are not of matched strength, so no
  verdict is drawn from it.
- Each family (the reproductions; the new tests) is corrected for multiple comparisons with
  Holm's method (:func:`helpers.stats.holm`) over its comparisons that have a p-value. With
  ``alpha = 1 - confidence``: *reproduced* if the Holm-adjusted p-value is below alpha and the
  mean lies above the threshold, *not reproduced* if below alpha and under the threshold, else
  *inconclusive*; with fewer than two seeds there is no test: *inconclusive (one seed)*. The
  column ``uncorrected`` gives the verdict of the 95% interval alone (:func:`verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from helpers.choices import TASKS as ALL_TASKS
from helpers.localization import FACT_LOOKUP, OUTPUT_TRACING
from helpers.results import LATENT_HEADLINE, RUN_COLUMNS
from helpers.stats import holm, mean_ci, t_test_p

REFERENCE = FACT_LOOKUP
REPRODUCTION, NEW_TEST = "reproduction", "new test"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a comparison of one metric between localizations, on the tasks where the paper makes it."""

    name: str
    statement: str
    metric: str  # a column of helpers.results.headline_metrics
    higher_is_better: bool
    paper_tasks: tuple[str, ...]
    comparators: tuple[str, ...] = OUTPUT_TRACING
    margin: float | None = None  # None: fact lookup must be better; else: no worse than by this much

    @property
    def threshold(self) -> float:
        """The value the favouring-FLU difference must exceed."""
        return -(self.margin or 0.0)


CLAIMS = (
    Claim("format", "FLU edits survive a multiple-choice format better than output-tracing edits",
          "MCQ edit accuracy", True, ALL_TASKS),
    Claim("paraphrase", "FLU edits carry over to paraphrased prompts better than output-tracing edits",
          "paraphrase edit accuracy", True, ("counterfact_edit",)),
    Claim("relearning", "FLU edits resist relearning better than output-tracing edits", "relearning error", True,
          ("sports_athlete_edit",)),
    Claim("latent", "FLU edits leave less of the original fact in the hidden states", LATENT_HEADLINE, False,
          ("sports_athlete_edit",)),
    Claim("parameters", "FLU, with a fraction of the weights, is as robust to a multiple-choice format as "
          "editing all MLPs or the whole model", "MCQ edit accuracy", True, ALL_TASKS, ("all_mlps", "nonlocalized"),
          margin=0.05),
)
UNINFORMATIVE = "attack uninformative"  # a relearning attack that did not fit its own trained half (attack_informativeness)
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "inconclusive (one seed)", "edit incomplete", UNINFORMATIVE)
VERDICT_COLOURS = dict(zip(VERDICTS, ("#d9f2d9", "#f8d7da", "#fff3cd", "#eeeeee", "#e2e3f3", "#e8e8e8")))


def claim_named(name: str) -> Claim:
    """The claim of :data:`CLAIMS` called ``name``."""
    named = {c.name: c for c in CLAIMS}
    if name not in named:
        raise ValueError(f"Unknown claim {name!r}; choose one of {list(named)}")
    return named[name]


def _paired(metrics: pd.DataFrame, task: str, values: str, other: str) -> pd.DataFrame:
    """Per seed (rows): ``values`` of fact lookup and of ``other`` on ``task`` (columns)."""
    part = metrics[(metrics.task == task) & metrics.localization.isin([REFERENCE, other])]
    table = part.pivot_table(index="seed", columns="localization", values=values, aggfunc="first")
    return table if REFERENCE in table and other in table else pd.DataFrame()


def paired_differences(metrics: pd.DataFrame, task: str, metric: str, other: str, higher_is_better: bool = True) -> pd.Series:
    """Per seed: fact lookup's ``metric`` minus ``other``'s on ``task``, positive when fact lookup is better."""
    table = _paired(metrics, task, metric, other)
    if table.empty:
        return pd.Series(dtype=float)
    difference = (table[REFERENCE] - table[other]).dropna()
    return difference if higher_is_better else -difference


def complete_pairs(metrics: pd.DataFrame, task: str, other: str, seeds: pd.Index) -> int:
    """How many of ``seeds`` have both runs (fact lookup and ``other``) at the completeness criterion."""
    table = _paired(metrics.assign(criterion_reached=metrics.criterion_reached.astype(float)), task, "criterion_reached", other)
    if table.empty:
        return 0
    both = table.reindex(seeds)[[REFERENCE, other]].fillna(0).astype(bool).all(axis=1)
    return int(both.sum())


def verdict(low: float, high: float, margin: float | None = None) -> str:
    """The verdict of a difference's (uncorrected) interval: above, below or around ``-margin`` (0 by default)."""
    if np.isnan(low) or np.isnan(high):
        return "inconclusive (one seed)"
    threshold = -(margin or 0.0)
    if low > threshold:
        return "reproduced"
    if high < threshold:
        return "not reproduced"
    return "inconclusive"


def corrected_verdict(mean: float, p_holm: float, threshold: float, alpha: float) -> str:
    """The verdict from a Holm-adjusted p-value (see the module doc)."""
    if np.isnan(p_holm):
        return "inconclusive (one seed)"
    if p_holm >= alpha:
        return "inconclusive"
    return "reproduced" if mean > threshold else "not reproduced"


def _parameter_ratio(task_metrics: pd.DataFrame, other: str) -> dict[str, float]:
    """The other localization's trainable parameters as a multiple of fact lookup's (when the metrics carry them)."""
    if "n_parameters" not in task_metrics:
        return {}
    parameters = task_metrics.groupby("localization").n_parameters.first()
    return {"parameters (x FLU)": parameters[other] / parameters[REFERENCE]}


def verdict_table(
    metrics: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS, confidence: float = 0.95,
    *, fits: pd.DataFrame | None = None, attack: str | None = None,
) -> pd.DataFrame:
    """One row per claim, task and comparison: the means, the paired difference, its interval, p-values, the verdict.

    ``metrics`` is :func:`helpers.results.headline_metrics` output. Comparisons whose metric was
    not measured for a task (the latent probes on CounterFact, an MCQ format the model cannot
    answer) are left out. Column ``test`` says whether a row is a reproduction of the paper's
    claim or a new test; ``complete pairs`` how many seeds had both edits complete.

    With ``fits`` (:func:`helpers.results.attack_fits`) of the relearning ``attack`` the
    relearning rows are checked as :func:`attack_informativeness` says: an uninformative one gets
    the verdict ``"attack uninformative"`` and, like an incomplete edit, no p-value, so it does not
    enter Holm's family.
    """
    if (fits is None) != (attack is None):
        raise ValueError("Pass the relearning fits and the attack they belong to together (fits=..., attack=...)")
    missing = [c for c in [*RUN_COLUMNS, "criterion_reached", *{claim.metric for claim in claims}] if c not in metrics.columns]
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
                complete = complete_pairs(metrics, task, other, difference.index)
                rows.append({
                    "claim": claim.name, "statement": claim.statement, "task": task, "metric": claim.metric,
                    "test": REPRODUCTION if task in claim.paper_tasks else NEW_TEST,
                    "compared with": other, "seeds": len(difference), "complete pairs": complete,
                    "fact lookup": means[REFERENCE], "other": means[other], "difference (favouring FLU)": mean,
                    "CI low": low, "CI high": high, **_parameter_ratio(task_metrics, other),
                    "needed": "> 0" if claim.margin is None else f"> {claim.threshold:g}",
                    "threshold": claim.threshold,
                    "p": t_test_p(difference, claim.threshold) if complete == len(difference) else float("nan"),
                    "uncorrected": verdict(low, high, claim.margin),
                })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    uninformative = pd.Series(False, index=table.index)
    if fits is not None:
        counts, uninformative = attack_informativeness(table, fits, attack)
        table.loc[counts.index, "attack informative"] = counts
        table.loc[uninformative, "p"] = np.nan
    table["p (Holm)"] = np.nan
    for family in (REPRODUCTION, NEW_TEST):
        members = table.test == family
        table.loc[members, "p (Holm)"] = holm(table.loc[members, "p"].to_numpy())
    alpha = 1 - confidence
    table["verdict"] = [
        "edit incomplete" if row["complete pairs"] < row.seeds else corrected_verdict(row["difference (favouring FLU)"], row["p (Holm)"], row.threshold, alpha)
        for _, row in table.iterrows()
    ]
    table.loc[uninformative, "verdict"] = UNINFORMATIVE
    return table.drop(columns="threshold")


def tally(table: pd.DataFrame) -> pd.DataFrame:
    """Per claim, the reproductions only: how many comparisons, how many with both edits complete, and each verdict's count."""
    reproductions = table[table.test == REPRODUCTION] if len(table) else table
    if reproductions.empty:
        return pd.DataFrame(columns=["claim", "comparisons", "both edits complete"])
    counts = reproductions.groupby("claim", sort=False).verdict.value_counts().unstack(fill_value=0).rename_axis(columns=None)
    counts = counts.reindex(columns=[v for v in VERDICTS if v in counts.columns])
    both = reproductions.assign(both=reproductions["complete pairs"] == reproductions.seeds).groupby("claim", sort=False).both.sum()
    return counts.assign(comparisons=counts.sum(axis=1), **{"both edits complete": both}).reset_index()


def _colour(value: str) -> str:
    return f"background-color: {VERDICT_COLOURS.get(value, '')}"


def styled_verdicts(table: pd.DataFrame):
    """A :func:`verdict_table` for display: three decimals, each verdict on its colour."""
    shown = table.drop(columns=["statement", "metric"])
    return (shown.style.format(precision=3, na_rep="–")
            .map(_colour, subset=["verdict", "uncorrected"])
            .hide(axis="index"))


# A relearning verdict needs attacks that worked where they trained (helpers.relearning.is_informative).
RELEARNING_METRIC = "relearning error"


def attack_informativeness(table: pd.DataFrame, fits: pd.DataFrame, attack: str) -> tuple[pd.Series, pd.Series]:
    """For the relearning rows of a comparison table: how many runs of both localizations the ``attack`` fitted, and
    whether it fitted all of them.

    ``fits`` is :func:`helpers.results.attack_fits` output. Returns ``"k/n"`` counts (index: the
    relearning rows) and a boolean mask over the whole table, True where the row is uninformative:
    a relearning error that did not fall says nothing about the edit when the attack did not raise
    P(true) on its own trained half either (no fits at all count as not shown to work).
    """
    fits = fits[fits.attack == attack]
    counts, uninformative = {}, pd.Series(False, index=table.index)
    for index in table.index[table.metric == RELEARNING_METRIC]:
        row = table.loc[index]
        sides = fits[(fits.task == row.task) & fits.localization.isin([REFERENCE, row["compared with"]])]
        counts[index] = f"{int(sides.informative.sum())}/{len(sides)}"
        uninformative[index] = sides.empty or not sides.informative.all()
    return pd.Series(counts, dtype=object), uninformative
