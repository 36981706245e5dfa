"""CounterFact facts: load records in the original schema, check them, keep what a model knows.

The original CounterFact (ROME, Meng et al. 2022) stores one JSON record per fact::

    {"case_id": 0,
     "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                           "target_true": {"str": "French"}, "target_new": {"str": "English"}, ...},
     "paraphrase_prompts": [...], "neighborhood_prompts": [...]}

The project's own set (``helpers/data/counterfact.json``) adds ``mcq_wrong_options``: three
wrong answers of the same relation, the first being ``target_new``. Records from elsewhere
that lack it get distractors drawn (seeded) from the true answers of the same relation.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.knowledge import cached_scores
from helpers.models import LoadedModel
from helpers.prompts import fill
from helpers.scoring import candidate_probs

EMBEDDED_COUNTERFACT = files("helpers") / "data" / "counterfact.json"
REQUIRED_KEYS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")
REWRITE_KEYS = ("prompt", "subject", "target_true", "target_new")
COLUMNS = [
    "case_id", "relation_id", "template", "subject", "target_true", "target_new",
    "prompt", "paraphrase_prompts", "neighborhood_prompts", "mcq_wrong_options",
]


def load_counterfact(source: str | Path | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Load CounterFact records as one row per fact (columns in ``COLUMNS``).

    ``source``: ``None`` for the project's embedded set, a path to a JSON file (a list of
    records), or ``"hf:<dataset id>"`` to read a Hugging Face data set in the same schema
    (needs the internet, e.g. ``"hf:azhx/counterfact"``).
    """
    if source is None:
        records = json.loads(EMBEDDED_COUNTERFACT.read_text())
    elif str(source).startswith("hf:"):
        from datasets import load_dataset

        records = list(load_dataset(str(source)[3:], split="train"))
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"CounterFact file {path} does not exist")
        records = json.loads(path.read_text())
    return records_to_frame(records, seed=seed)


def records_to_frame(records: list[dict], *, seed: int = 0) -> pd.DataFrame:
    """Check records against the CounterFact schema and flatten them into a DataFrame."""
    if not records:
        raise ValueError("The CounterFact source holds no records")
    rows = [_flatten(record, index) for index, record in enumerate(records)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    duplicated = frame.case_id[frame.case_id.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"Duplicate case_id values in CounterFact records: {duplicated[:10]}")
    _fill_missing_distractors(frame, np.random.default_rng(seed))
    return frame


def _flatten(record: dict, index: int) -> dict:
    where = f"CounterFact record #{index} (case_id {record.get('case_id', '?')})"
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where} lacks the keys {missing}; the schema needs {list(REQUIRED_KEYS)}")
    rewrite = record["requested_rewrite"]
    missing = [key for key in REWRITE_KEYS if key not in rewrite]
    if missing:
        raise ValueError(f"{where}: requested_rewrite lacks {missing}; it needs {list(REWRITE_KEYS)}")
    template = rewrite["prompt"]
    if "{}" not in template:
        raise ValueError(f"{where}: prompt template {template!r} has no '{{}}' placeholder for the subject")
    target_true, target_new = rewrite["target_true"]["str"].strip(), rewrite["target_new"]["str"].strip()
    if target_true == target_new:
        raise ValueError(f"{where}: target_new equals target_true ({target_true!r})")
    options = record.get("mcq_wrong_options")
    if options is not None and (len(options) != 3 or options[0] != target_new or target_true in options):
        raise ValueError(f"{where}: mcq_wrong_options must be 3 wrong answers starting with target_new")
    return {
        "case_id": record["case_id"],
        "relation_id": rewrite.get("relation_id", ""),
        "template": template,
        "subject": rewrite["subject"],
        "target_true": target_true,
        "target_new": target_new,
        "prompt": fill(template, rewrite["subject"]),
        "paraphrase_prompts": list(record["paraphrase_prompts"]),
        "neighborhood_prompts": list(record["neighborhood_prompts"]),
        "mcq_wrong_options": options,
    }


def _fill_missing_distractors(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    """Give records without ``mcq_wrong_options`` three wrong answers of the same relation."""
    for index in frame.index[frame.mcq_wrong_options.isna()]:
        row = frame.loc[index]
        pool = frame.target_true[frame.relation_id == row.relation_id].unique()
        pool = sorted(set(pool) - {row.target_true, row.target_new})
        if len(pool) < 2:
            raise ValueError(f"Relation {row.relation_id!r} has too few distinct answers for multiple choice")
        frame.at[index, "mcq_wrong_options"] = [row.target_new, *rng.choice(pool, 2, replace=False).tolist()]


def score_counterfact(model: LoadedModel, facts: pd.DataFrame, *, batch_size: int = 32) -> pd.DataFrame:
    """``facts`` with ``p_true`` and ``p_new``: full-vocabulary P(first token), cached per model."""

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        probs = candidate_probs(
            model, frame.prompt.tolist(), frame[["target_true", "target_new"]].values.tolist(),
            batch_size=batch_size, desc="CounterFact facts",
        )
        return pd.DataFrame({"p_true": probs[:, 0], "p_new": probs[:, 1]}, index=frame.index)

    keys = facts[["prompt", "target_true", "target_new"]]
    return facts.join(cached_scores(model.name, "counterfact", keys, compute))


def known_facts(model: LoadedModel, facts: pd.DataFrame | None = None, *, threshold: float = 0.5) -> pd.DataFrame:
    """The facts whose true answer's first token has full-vocabulary probability >= threshold."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    scored = score_counterfact(model, load_counterfact() if facts is None else facts)
    return scored[scored.p_true >= threshold].reset_index(drop=True)
