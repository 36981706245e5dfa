"""The paper's reported numbers beside ours, each labelled with the model it comes from.

``data/paper_numbers.csv`` holds what Guo et al. (2025) report (see ``data/README.md``); our
numbers come from the run records (:func:`helpers.results.headline_metrics` summarized over
seeds). Nothing here is computed from the paper's numbers: they are shown, not tested against.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

COLUMNS = ["task", "localization", "metric", "value", "model", "note"]
CITATION = "Guo et al. (2025), Mechanistic Unlearning, arXiv 2410.12949"


def paper_numbers(path: Path | None = None) -> pd.DataFrame:
    """The paper's numbers, one row per (task, localization, metric)."""
    source = path or resources.files("helpers") / "data" / "paper_numbers.csv"
    with source.open() as handle:
        frame = pd.read_csv(handle, comment="#", keep_default_na=False, na_values=[""])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the columns {missing}")
    return frame


def side_by_side(ours: pd.DataFrame, model_name: str, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Our mean and 95% interval next to the paper's value, for every metric the paper reports.

    ``ours`` is :func:`helpers.stats.summarize` output grouped by ``task`` and ``localization``
    (metric names as in :data:`helpers.results.HEADLINE`). Rows the paper reports but we did not
    run stay, with empty columns of ours.
    """
    paper = paper_numbers() if paper is None else paper
    merged = paper.merge(ours, on=["task", "localization", "metric"], how="left")
    return pd.DataFrame({
        "task": merged.task, "localization": merged.localization, "metric": merged.metric,
        "paper": merged.value, "paper's model": merged.model + merged.note.fillna("").map(lambda n: f" ({n})" if n else ""),
        f"ours ({model_name})": merged["mean"], "95% CI low": merged.ci_low, "95% CI high": merged.ci_high,
        "seeds": merged.n,
    })
