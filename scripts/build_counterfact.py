"""Build the project's CounterFact-style data set from a table of true facts.

Input: ``scripts/fact_tables.csv`` (``relation,subject,target``), facts written for this
project. Output: ``helpers/data/counterfact.json`` in the original CounterFact schema
(ROME), plus ``mcq_wrong_options``: three wrong answers of the same relation, the first
being ``target_new``. Neighborhood prompts ask the same relation about other subjects
with the same true answer (so they must keep answering ``target_true`` after an edit).

Run from the repository root: ``python scripts/build_counterfact.py``. Deterministic.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

SEED = 0
N_NEIGHBORS = 6
ROOT = Path(__file__).resolve().parents[1]

# relation -> (main prompt, paraphrase prompts); "{}" is the subject.
TEMPLATES: dict[str, tuple[str, list[str]]] = {
    "official_language": (
        "The official language of {} is",
        ["In {}, the official language is", "The language officially used in {} is", "{}'s official language is"],
    ),
    "continent": (
        "{} is located in the continent of",
        ["{} is a country on the continent of", "The continent where {} lies is", "{} belongs to the continent of"],
    ),
    "city_country": (
        "{} is a city in the country of",
        ["{} is located in the country of", "The country in which {} lies is", "The city of {} is part of the country of"],
    ),
    "landmark_country": (
        "{} is located in the country of",
        ["{} can be found in the country of", "To visit {}, you have to travel to the country of", "The country that is home to {} is"],
    ),
    "developer": (
        "{} was developed by",
        ["{} is a product of the company", "The company that developed {} is", "{} was created by the company"],
    ),
    "manufacturer": (
        "{} is produced by",
        ["{} is manufactured by", "The company that makes {} is", "{} is a product made by the company"],
    ),
    "native_language": (
        "The mother tongue of {} is",
        ["The native language of {} is", "The first language of {} is", "{} grew up speaking"],
    ),
    "instrument": (
        "{} plays the",
        ["{} is known for playing the", "The instrument played by {} is the", "{} is a musician who plays the"],
    ),
}


def build_records(facts: pd.DataFrame, rng: random.Random) -> list[dict]:
    records = []
    for case_id, fact in enumerate(facts.itertuples(index=False)):
        prompt, paraphrases = TEMPLATES[fact.relation]
        same_relation = facts[facts.relation == fact.relation]
        # Other subjects with the same answer; none whose name contains this one or vice versa.
        neighbors = [
            s for s in same_relation.subject[same_relation.target == fact.target]
            if fact.subject not in s and s not in fact.subject
        ]
        neighbor_subjects = rng.sample(sorted(neighbors), min(N_NEIGHBORS, len(neighbors)))
        templates = [prompt, *paraphrases]
        wrong = sorted(set(same_relation.target) - {fact.target})
        wrong = [w for w in wrong if w.split()[0] != fact.target.split()[0]]
        options = rng.sample(wrong, 3)
        records.append(
            {
                "case_id": case_id,
                "requested_rewrite": {
                    "prompt": prompt,
                    "relation_id": fact.relation,
                    "subject": fact.subject,
                    "target_true": {"str": fact.target},
                    "target_new": {"str": options[0]},
                },
                "paraphrase_prompts": [p.replace("{}", fact.subject) for p in paraphrases],
                "neighborhood_prompts": [
                    templates[i % len(templates)].replace("{}", s) for i, s in enumerate(neighbor_subjects)
                ],
                "mcq_wrong_options": options,
            }
        )
    return records


def main() -> None:
    facts = pd.read_csv(ROOT / "scripts" / "fact_tables.csv")
    unknown = set(facts.relation) - set(TEMPLATES)
    if unknown:
        raise ValueError(f"No templates for relations {sorted(unknown)}")
    records = build_records(facts, random.Random(SEED))
    out = ROOT / "helpers" / "data" / "counterfact.json"
    out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records over {facts.relation.nunique()} relations to {out}")


if __name__ == "__main__":
    main()
