"""Run records turned into the long tables the robustness and results chapters plot.

Every function takes the flattened records of :func:`helpers.grid.load_grid` (one row per
run: ``task``, ``localization``, ``seed``, ``metrics.*``, ``metrics_before.*``, ``attacks.*``)
and returns one row per (task, localization, seed, ...) and value, ready for
:func:`helpers.stats.summarize`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from helpers.formats import MCQ_FORMATS
from helpers.localization import FACT_LOOKUP, OUTPUT_TRACING
from helpers.prompts import SPORT_ANSWERS
from helpers.relearning import ATTACKS, attack_fit, is_informative
from helpers.robustness import STRENGTH_FORMATS

RUN_COLUMNS = ["task", "localization", "seed"]
# Multiple-choice questions list the true answer and three wrong ones in both data sets.
MCQ_CHANCE = {"sports": 1 / len(SPORT_ANSWERS), "counterfact": 1 / 4}
USABLE_MARGIN = 0.05
FORMAT_GROUPS = {"fact": "standard", "paraphrase": "paraphrase", "cloze_mcq": "adversarial", "lettered_mcq": "adversarial"}


def dataset_of(task: str) -> str:
    """``"sports"`` or ``"counterfact"`` from a task name."""
    return "counterfact" if task.startswith("counterfact") else "sports"


def _check(records: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in [*RUN_COLUMNS, *columns] if c not in records.columns]
    if missing:
        raise ValueError(f"The records lack the columns {missing}; were they written by notebook 04's grid?")


def mcq_usability(records: pd.DataFrame, margin: float = USABLE_MARGIN) -> pd.DataFrame:
    """Per task and multiple-choice format: the unedited model's maintain accuracy, chance, and
    whether it is usable (more than ``margin`` above chance), as in chapter 00.

    Each seed of a task has its own maintain facts, so the accuracy is the mean over the seeds
    (one value per seed: every localization of a seed starts from the same model), and the
    lowest seed's value is shown beside it.
    """
    columns = [f"metrics_before.{fmt}_maintain_accuracy" for fmt in MCQ_FORMATS]
    _check(records, columns)
    rows = []
    for task, group in records.groupby("task", sort=False):
        chance = MCQ_CHANCE[dataset_of(task)]
        per_seed = group.groupby("seed")[columns].first()
        for fmt, column in zip(MCQ_FORMATS, columns):
            accuracy = float(per_seed[column].mean())
            rows.append({"task": task, "format": fmt, "accuracy before editing": accuracy,
                         "lowest seed": float(per_seed[column].min()), "seeds": len(per_seed), "chance": chance,
                         "usable": accuracy > chance + margin})
    return pd.DataFrame(rows)


def format_metrics_long(records: pd.DataFrame, formats: Sequence[str], kinds: Sequence[str]) -> pd.DataFrame:
    """One row per run, format and kind of metric (column ``kind``: ``forget_error``, ...), after the edit."""
    rows = []
    for fmt in formats:
        for kind in kinds:
            column = f"metrics.{kind}" if fmt == "fact" else f"metrics.{fmt}_{kind}"
            if column not in records.columns:
                continue
            frame = records[RUN_COLUMNS].assign(format=fmt, group=FORMAT_GROUPS.get(fmt, fmt), kind=kind, value=records[column])
            rows.append(frame.dropna(subset=["value"]))
    if not rows:
        raise ValueError(f"No metric of formats {list(formats)} and kinds {list(kinds)} in the records")
    return pd.concat(rows, ignore_index=True)


def relearning_curves(records: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One row per run and measured step of the relearning ``attack``: P(true) and the relearning error.

    Runs the attack did not attack (their task is not in chapter 04's ``attack_tasks``) have no rows.
    """
    column = f"attacks.relearn_{attack}"
    _check(records, [column])
    rows = [
        {**dict(zip(RUN_COLUMNS, run)), **point}
        for run, curve in zip(records[RUN_COLUMNS].itertuples(index=False), records[column]) if isinstance(curve, list)
        for point in curve
    ]
    if not rows:
        raise ValueError(f"No run in the records was attacked by {attack!r}")
    return pd.DataFrame(rows)


SOFT_PROMPT = "soft_prompt"
FIT_COLUMNS = ["train_p_true_before", "train_p_true_start", "train_p_true_after", "p_true_before", "p_true_start", "p_true_after"]


def attack_fits(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run and attack (``lora``, ``full``, ``soft_prompt``, those the records hold): how it fitted.

    Mean P(true) on the half the attack trained on (``train_...``) and on the held-out half:
    right after the edit (``..._before``), at the attack's start (``..._start``: the edited model
    for relearning, the untrained random prefix for the soft prompt) and after the attack
    (``..._after``); and ``informative`` (:func:`helpers.relearning.is_informative`, start to after
    on the trained half, recomputed from the stored numbers).
    """
    _check(records, [])
    runs = [dict(zip(RUN_COLUMNS, run)) for run in records[RUN_COLUMNS].itertuples(index=False)]
    rows = []
    for attack in ATTACKS:
        column = f"attacks.relearn_{attack}"
        if column in records:
            for run, curve in zip(runs, records[column]):
                if isinstance(curve, list):
                    fit = attack_fit(pd.DataFrame(curve))
                    start = {"train_p_true_start": fit["train_p_true_before"], "p_true_start": fit["p_true_before"]}
                    rows.append({**run, "attack": attack, **fit, **start})
    soft = [f"attacks.soft_prompt_{name}" for name in FIT_COLUMNS]
    if all(column in records for column in soft):
        for run, values in zip(runs, records[soft].itertuples(index=False)):
            fit = dict(zip(FIT_COLUMNS, map(float, values)))
            if not any(pd.isna(v) for v in fit.values()):
                informative = is_informative(fit["train_p_true_start"], fit["train_p_true_after"])
                rows.append({**run, "attack": SOFT_PROMPT, **fit, "informative": informative})
    if not rows:
        raise ValueError("No attack results in the records (notebook 04's grid writes them)")
    return pd.DataFrame(rows)[[*RUN_COLUMNS, "attack", *FIT_COLUMNS, "informative"]]


def latent_by_layer(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run, probe variant and layer: share of forget athletes decoded as the true and the new sport."""
    pattern = re.compile(r"attacks\.latent_(original|edited)_(true|new)_L(\d+)$")
    matched = [(c, pattern.match(c)) for c in records.columns]
    matched = [(c, m) for c, m in matched if m]
    if not matched:
        raise ValueError("No latent-probe results in the records (sports tasks with latent_probes=True write them)")
    rows = []
    for column, m in matched:
        frame = records[RUN_COLUMNS].assign(probe=m.group(1), decoded=m.group(2), layer=int(m.group(3)), share=records[column])
        rows.append(frame.dropna(subset=["share"]))
    long = pd.concat(rows, ignore_index=True)
    return long.pivot_table(index=[*RUN_COLUMNS, "probe", "layer"], columns="decoded", values="share").add_prefix("share_").reset_index()


# The headline metrics of the paper's radar chart (Figure 2), named as in the figures and tables.
# "{mcq}" is the task's headline multiple-choice format, "{attack}" the relearning attack,
# "{general}" MMLU accuracy where the runs measured it, else the quiz of facts of the other kind.
HEADLINE = {
    "forget error": "metrics.forget_error",
    "maintain accuracy": "metrics.maintain_accuracy",
    "edit accuracy": "metrics.edit_accuracy",
    "paraphrase edit accuracy": "metrics.paraphrase_edit_accuracy",
    "MCQ forget error": "metrics.{mcq}_forget_error",
    "MCQ edit accuracy": "metrics.{mcq}_edit_accuracy",
    "relearning error": "attacks.relearn_error_{attack}",
    "general capability": "metrics.{general}",
}
LATENT_HEADLINE = "original fact in hidden states"
LATENT_NEW = "new fact in hidden states"


def headline_mcq_format(usability: pd.DataFrame, task: str) -> str | None:
    """The paper's lettered MCQ where the unedited model can answer it, else cloze MCQ, else None."""
    usable = set(usability[(usability.task == task) & usability.usable].format)
    return next((fmt for fmt in MCQ_FORMATS if fmt in usable), None)


def headline_metrics(records: pd.DataFrame, attack: str = "lora") -> pd.DataFrame:
    """One row per run: :data:`HEADLINE` metrics, the latent share, the trainable parameters and
    whether the edit reached the completeness criterion (``criterion_reached``).

    ``MCQ ...`` use each task's :func:`headline_mcq_format` (NaN where no MCQ format is usable;
    column ``mcq_format`` says which); ``general capability`` is MMLU where every run of the task
    measured it, else the quiz accuracy (column ``general_measure``). ``original fact in hidden
    states`` is the share of forget athletes that probes trained on the original model still
    decode as the original sport, mean over layers; ``new fact in hidden states`` the share
    decoded as the new one (sports tasks; NaN for CounterFact, which has no probe target).
    """
    _check(records, ["n_parameters", "criterion_reached", f"attacks.relearn_error_{attack}"])
    usability = mcq_usability(records)
    rows = []
    for task, group in records.groupby("task", sort=False):
        mcq = headline_mcq_format(usability, task)
        mmlu = "metrics.mmlu_accuracy" in group and group["metrics.mmlu_accuracy"].notna().all()
        general = "mmlu_accuracy" if mmlu else "quiz_accuracy"
        frame = group[[*RUN_COLUMNS, "n_parameters", "criterion_reached"]].assign(mcq_format=mcq, general_measure=general)
        for name, column in HEADLINE.items():
            column = column.format(mcq=mcq, attack=attack, general=general)
            frame[name] = group[column] if column in group else float("nan")  # also when no MCQ format is usable
        rows.append(frame)
    metrics = pd.concat(rows, ignore_index=True)
    try:
        latent = latent_by_layer(records)
    except ValueError:
        return metrics.assign(**{LATENT_HEADLINE: float("nan"), LATENT_NEW: float("nan")})
    shares = latent[latent.probe == "original"].groupby(RUN_COLUMNS)[["share_true", "share_new"]].mean()
    shares = shares.rename(columns={"share_true": LATENT_HEADLINE, "share_new": LATENT_NEW})
    return metrics.merge(shares.reset_index(), on=RUN_COLUMNS, how="left")


def relearning_before_after(records: pd.DataFrame, attack: str) -> pd.DataFrame:
    """The relearning error of each run before the attack (step 0) and after its last step (column ``when``)."""
    curves = relearning_curves(records, attack)
    last = curves.groupby(RUN_COLUMNS).step.transform("max")
    ends = curves[(curves.step == 0) | (curves.step == last)]
    return ends.assign(when=["before the attack" if s == 0 else "after the attack" for s in ends.step])


def latent_shares_long(records: pd.DataFrame) -> pd.DataFrame:
    """Per task, probe variant, localization and layer: mean share over seeds, decoded as the original or new sport."""
    latent = latent_by_layer(records)
    mean = latent.groupby(["task", "probe", "localization", "layer"], as_index=False)[["share_true", "share_new"]].mean()
    long = mean.melt(id_vars=["task", "probe", "localization", "layer"], value_vars=["share_true", "share_new"],
                     var_name="decoded as", value_name="share")
    long["decoded as"] = long["decoded as"].map({"share_true": "original sport", "share_new": "new sport"})
    return long


STRENGTH_KINDS = ("edit_accuracy", "forget_error")  # each robustness measure of the strength curve, per format


def strength_curves(records: pd.DataFrame) -> pd.DataFrame:
    """One row per run, completeness check and robustness measure of the strength curve (:mod:`helpers.robustness`).

    Columns: the run (task, localization, seed), the check's ``step``, the training format's
    ``edit_accuracy`` (P(new)) and ``forget_error`` (1 - P(true)) on the trained facts, as the
    completeness check measured them, and the robustness ``measure`` (``paraphrase_edit_accuracy``,
    ``cloze_mcq_forget_error``, ...), its ``format`` and its ``value`` on the evaluated facts. Runs
    whose checks hold no robustness measure (strength curve off for their task) have no rows.
    """
    _check(records, ["curves.checks"])
    measures = {f"{fmt}_{kind}": fmt for fmt in STRENGTH_FORMATS for kind in STRENGTH_KINDS}
    rows = []
    for run, checks in zip(records[RUN_COLUMNS].itertuples(index=False), records["curves.checks"]):
        for check in checks if isinstance(checks, list) else []:
            point = {**dict(zip(RUN_COLUMNS, run)), "step": check["step"],
                     "edit_accuracy": np.nan if check["p_new"] is None else check["p_new"], "forget_error": 1 - check["p_true"]}
            rows += [{**point, "measure": m, "format": fmt, "value": check[m]} for m, fmt in measures.items() if m in check]
    if not rows:
        raise ValueError("No strength curve in the records (notebook 04's strength_curve_tasks names the tasks that measure it)")
    return pd.DataFrame(rows)


def strength_bins(edit_accuracy: pd.Series, edges: Sequence[float]) -> pd.Series:
    """The bin of each edit accuracy: ``[lo, hi)``, the last one closed; NaN outside the edges."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"The bin edges must be at least two increasing numbers, got {edges}")
    labels = [f"[{lo:g}, {hi:g}{']' if i == len(edges) - 2 else ')'}" for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
    x = edit_accuracy.to_numpy(dtype=float)
    index = np.where(x == edges[-1], len(edges) - 1, np.digitize(x, edges))  # edges[i-1] <= x < edges[i]
    inside = (index >= 1) & (index < len(edges)) & ~np.isnan(x)
    return pd.Series(pd.Categorical([labels[i - 1] if ok else None for i, ok in zip(index, inside)], categories=labels),
                     index=edit_accuracy.index)


def matched_strength(curves: pd.DataFrame, edges: Sequence[float]) -> pd.DataFrame:
    """Robustness at matched edit strength: per task, measure, bin of training-format edit accuracy
    (:func:`strength_bins`) and localization, the mean ``value`` and mean ``edit_accuracy`` of the
    checks in the bin, and how many ``checks`` and ``seeds`` they come from (bins with no check are left out)."""
    binned = curves.assign(bin=strength_bins(curves.edit_accuracy, edges)).dropna(subset=["bin", "value"])
    grouped = binned.groupby(["task", "measure", "bin", "localization"], observed=True, sort=False)
    table = grouped.agg(edit_accuracy=("edit_accuracy", "mean"), value=("value", "mean"),
                        checks=("value", "size"), seeds=("seed", "nunique"))
    return table.reset_index()


def matched_comparison(
    matched: pd.DataFrame, reference: str = FACT_LOOKUP, comparators: Sequence[str] = OUTPUT_TRACING,
) -> pd.DataFrame:
    """Per task, measure and comparator: in how many strength bins both it and ``reference`` have checks
    (``bins``), in how many the reference's mean lies above (``above``; every measure is higher when more
    robust), and the mean difference reference minus comparator over those bins (NaN without a shared bin)."""
    wide = matched.pivot_table(index=["task", "measure", "bin"], columns="localization", values="value", observed=True)
    rows = []
    for (task, measure), part in wide.groupby(level=["task", "measure"], sort=False):
        for other in comparators:
            if reference not in part or other not in part:
                continue
            difference = (part[reference] - part[other]).dropna()
            rows.append({"task": task, "measure": measure, "localization": other, "bins": len(difference),
                         "above": int((difference > 0).sum()),
                         "mean difference": float(difference.mean()) if len(difference) else np.nan})
    return pd.DataFrame(rows, columns=["task", "measure", "localization", "bins", "above", "mean difference"])
