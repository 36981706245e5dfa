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
import numbers
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.knowledge import cached_scores, known_mask
from helpers.models import LoadedModel
from helpers.parameters import check_value
from helpers.prompts import fill
from helpers.scoring import candidate_probs
from helpers.validation import FRAME, check_columns, check_unique, read_json, template, text, text_list

EMBEDDED_COUNTERFACT = files("helpers") / "data" / "counterfact.json"
REQUIRED_KEYS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")
REWRITE_KEYS = ("prompt", "subject", "target_true", "target_new")
COLUMNS = [
    "case_id", "relation_id", "template", "subject", "target_true", "target_new",
    "prompt", "paraphrase_prompts", "neighborhood_prompts", "mcq_wrong_options",
]


def load_counterfact(
    source: str | Path | None = None, *, seed: int = 0, skip_unusable_relations: bool = False,
) -> pd.DataFrame:
    """Load CounterFact records as one row per fact (columns in ``COLUMNS``).

    ``source``: ``None`` for the project's embedded set, a path to a JSON file (a list of
    records), or ``"hf:<dataset id>"`` to read a Hugging Face data set in the same schema
    (needs the internet, e.g. ``"hf:azhx/counterfact"``). The authors' CSV converts to such a
    JSON file with ``scripts/convert_counterfact_csv.py``. ``skip_unusable_relations``: see
    :func:`records_to_frame`.
    """
    if source is None:
        records, name = json.loads(EMBEDDED_COUNTERFACT.read_text()), "Embedded CounterFact"
    elif str(source).startswith("hf:"):
        from datasets import load_dataset

        records, name = list(load_dataset(str(source)[3:], split="train")), f"Hugging Face data set {str(source)[3:]}"
    else:
        records, name = read_json(Path(source), "CounterFact file"), f"CounterFact file {source}"
    return records_to_frame(records, seed=seed, source=name, skip_unusable_relations=skip_unusable_relations)


def records_to_frame(
    records: list[dict], *, seed: int = 0, source: str = "CounterFact records", skip_unusable_relations: bool = False,
) -> pd.DataFrame:
    """Check records against the CounterFact schema and flatten them into a DataFrame.

    Records without ``mcq_wrong_options`` get distractors from the true answers of their
    relation; when a relation has too few, loading fails naming every such relation, or,
    with ``skip_unusable_relations``, those records are dropped and a line says how many.
    """
    if not isinstance(records, list) or not records:
        raise ValueError(f"{source} holds no records (it needs a list of CounterFact records)")
    frame = check_counterfact(pd.DataFrame([_flatten(r, i, source) for i, r in enumerate(records)], columns=COLUMNS), source)
    unusable = _without_distractors(frame)
    if unusable.any():
        counts = frame.relation_id[unusable].value_counts().sort_index().to_dict()
        if not skip_unusable_relations:
            raise ValueError(
                f"{source}: relations {list(counts)} have too few distinct answers for multiple choice "
                f"({int(unusable.sum())} facts); pass skip_unusable_relations=True to drop them"
            )
        print(f"{source}: skipped {int(unusable.sum())} facts that cannot form multiple-choice questions "
              f"(too few distinct answers in their relation): {counts}")
        frame = frame[~unusable].reset_index(drop=True)
    _fill_missing_distractors(frame, np.random.default_rng(seed))
    return frame


def _flatten(record: object, index: int, source: str) -> dict:
    """One record of the original schema as a row of ``COLUMNS``, checked by :func:`check_fact`."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{source}, record {index}: must be a JSON object, got {type(record).__name__}")
    where = f"record {index} (case_id {record.get('case_id', '?')})"
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{source}, {where} lacks the keys {missing}; the schema needs {list(REQUIRED_KEYS)}")
    rewrite = record["requested_rewrite"]
    missing = [key for key in REWRITE_KEYS if key not in rewrite] if isinstance(rewrite, Mapping) else list(REWRITE_KEYS)
    if missing:
        raise ValueError(f"{source}, {where}: requested_rewrite lacks {missing}; it needs {list(REWRITE_KEYS)}")
    return check_fact({
        "case_id": record["case_id"], "relation_id": rewrite.get("relation_id", ""), "template": rewrite["prompt"],
        "subject": rewrite["subject"], "target_true": _answer(rewrite, "target_true", source, where),
        "target_new": _answer(rewrite, "target_new", source, where), "prompt": None,
        "paraphrase_prompts": record["paraphrase_prompts"], "neighborhood_prompts": record["neighborhood_prompts"],
        "mcq_wrong_options": record.get("mcq_wrong_options"),
    }, source, where)


def _answer(rewrite: Mapping, key: str, source: str, where: str) -> object:
    """``rewrite[key]["str"]``: an answer is an object such as ``{"str": "French"}``."""
    answer = rewrite[key]
    if not isinstance(answer, Mapping) or "str" not in answer:
        raise ValueError(f"{source}, {where}: field 'requested_rewrite.{key}' must be an object like {{\"str\": \"French\"}}, got {answer!r}")
    return answer["str"]


def check_fact(fact: Mapping, source: str, record: str) -> dict:
    """One fact as a row of ``COLUMNS``, its strings stripped and its prompt filled in, after checking each field."""
    case_id = fact["case_id"]
    if not isinstance(case_id, numbers.Integral) or isinstance(case_id, bool):
        raise ValueError(f"{source}, {record}: field 'case_id' must be an integer, got {case_id!r}")
    subject = text(fact["subject"], source, record, "subject")
    prompt_template = template(fact["template"], source, record, "template")
    true, new = (text(fact[f], source, record, f) for f in ("target_true", "target_new"))
    if true == new:
        raise ValueError(f"{source}, {record}: target_new equals target_true ({true!r})")
    options = fact.get("mcq_wrong_options")
    if isinstance(options, float) and np.isnan(options):
        options = None
    if options is not None:
        options = text_list(options, source, record, "mcq_wrong_options")
        if len(options) != 3 or options[0] != new or true in options:
            raise ValueError(f"{source}, {record}: mcq_wrong_options must be 3 wrong answers starting with target_new")
    return {
        "case_id": int(case_id), "relation_id": str(fact.get("relation_id") or ""), "template": prompt_template,
        "subject": subject, "target_true": true, "target_new": new, "prompt": fill(prompt_template, subject),
        "paraphrase_prompts": text_list(fact["paraphrase_prompts"], source, record, "paraphrase_prompts"),
        "neighborhood_prompts": text_list(fact["neighborhood_prompts"], source, record, "neighborhood_prompts"),
        "mcq_wrong_options": options,
    }


def check_counterfact(facts: pd.DataFrame, source: str = FRAME) -> pd.DataFrame:
    """``facts`` with every row checked by :func:`check_fact`; case_ids and (relation, subject) pairs unique."""
    check_columns(facts, COLUMNS, source)
    labels = [f"row {index!r}" for index in facts.index]
    rows = [check_fact(row, source, label) for row, label in zip(facts[COLUMNS].to_dict("records"), labels)]
    checked = pd.DataFrame(rows, index=facts.index, columns=COLUMNS)
    labelled = [f"{label} (case_id {c})" for label, c in zip(labels, checked.case_id)]
    check_unique(checked.case_id.astype(str), labelled, source, "case_id")
    check_unique(checked.relation_id + " | " + checked.subject, labelled, source, "relation_id | subject")
    return facts.assign(**{column: checked[column] for column in COLUMNS})


def _without_distractors(frame: pd.DataFrame) -> pd.Series:
    """Rows without ``mcq_wrong_options`` whose relation has fewer than two other true answers to draw from."""
    answers = frame.groupby("relation_id").target_true.agg(set)
    return pd.Series([
        options is None and len(answers[relation] - {true, new}) < 2
        for options, relation, true, new in zip(frame.mcq_wrong_options, frame.relation_id, frame.target_true, frame.target_new)
    ], index=frame.index)


def _fill_missing_distractors(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    """Give records without ``mcq_wrong_options`` three wrong answers of the same relation."""
    for index in frame.index[frame.mcq_wrong_options.isna()]:
        row = frame.loc[index]
        pool = sorted(set(frame.target_true[frame.relation_id == row.relation_id]) - {row.target_true, row.target_new})
        frame.at[index, "mcq_wrong_options"] = [row.target_new, *rng.choice(pool, 2, replace=False).tolist()]


def score_counterfact(model: LoadedModel, facts: pd.DataFrame, *, batch_size: int = 32) -> pd.DataFrame:
    """``facts`` with ``p_true`` and ``p_new``: full-vocabulary P(first token), cached per model.

    ``facts`` is checked first (:func:`check_counterfact`).
    """
    facts = check_counterfact(facts)

    def compute(frame: pd.DataFrame) -> pd.DataFrame:
        probs = candidate_probs(
            model, frame.prompt.tolist(), frame[["target_true", "target_new"]].values.tolist(),
            batch_size=batch_size, desc="CounterFact facts",
        )
        return pd.DataFrame({"p_true": probs[:, 0], "p_new": probs[:, 1]}, index=frame.index)

    keys = facts[["prompt", "target_true", "target_new"]]
    return facts.join(cached_scores(model, "counterfact", keys, compute))


def known_facts(model: LoadedModel, facts: pd.DataFrame | None = None, *, threshold: float = 0.5) -> pd.DataFrame:
    """The facts whose true answer's first token has full-vocabulary probability >= threshold (an error if none do)."""
    check_value("threshold", threshold)
    scored = score_counterfact(model, load_counterfact() if facts is None else facts)
    return scored[known_mask(scored.p_true, threshold, "facts")].reset_index(drop=True)
