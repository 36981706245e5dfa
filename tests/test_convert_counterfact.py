"""scripts/convert_counterfact_csv.py on a small CSV in the format of the authors' CounterFact subset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.counterfact import load_counterfact

ROOT = Path(__file__).resolve().parents[1]
FACTS = [  # subject, relation, template, true, new
    ("Danielle Darrieux", "P103", "The mother tongue of {} is", "French", "English"),
    ("Thomas Stieltjes", "P103", "The mother tongue of {} is", "Dutch", "English"),
    ("Jean Galland", "P103", "The mother tongue of {} is", "German", "Russian"),
    ("Lionel Messi", "P413", "{} plays in the position of", "forward", "goalkeeper"),
]


def printed(values: list[str]) -> str:
    """A list as numpy prints it, wrapped at a fixed width (the authors' lists span lines; global print options vary)."""
    return np.array2string(np.array(values), max_line_width=50)


def authors_row(i, subject, relation, template, true, new):
    """A row as the authors' CSV has it: Python-literal dict, numpy-printed lists (no commas)."""
    rewrite = {"prompt": template, "relation_id": relation, "subject": subject,
               "target_new": {"id": "Q1", "str": new}, "target_true": {"id": "Q2", "str": true}}
    return {
        "index": i, "relation": template, "prompt": template.replace("{}", subject), "relation_id": relation,
        "target_true": f" {true}", "target_false": f" {new}", "subject": subject, "case_id": i,
        "requested_rewrite": str(rewrite),
        "paraphrase_prompts": printed([f"Some text. {subject}'s first language is", f"{subject} spoke"]),
        "neighborhood_prompts": printed([template.replace("{}", "Someone Else"), "The native language of X is"]),
        "attribute_prompts": printed(["unused"]),
    }


def test_the_authors_csv_converts_and_loads_with_unusable_relations_skipped(tmp_path):
    csv, out = tmp_path / "counterfact_authors.csv", tmp_path / "counterfact.json"
    pd.DataFrame([authors_row(i, *fact) for i, fact in enumerate(FACTS)]).to_csv(csv)
    assert "'\n '" in csv.read_text()  # numpy-printed lists span lines, as in the authors' file
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_counterfact_csv.py"), str(csv), str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
    )
    assert "skipped 1 facts" in result.stdout and "Wrote 4 records" in result.stdout
    records = json.loads(out.read_text())
    assert records[0]["paraphrase_prompts"] == ["Some text. Danielle Darrieux's first language is", "Danielle Darrieux spoke"]
    assert records[0]["requested_rewrite"]["target_true"] == {"id": "Q2", "str": "French"}
    facts = load_counterfact(out, skip_unusable_relations=True)
    assert facts.subject.tolist() == ["Danielle Darrieux", "Thomas Stieltjes", "Jean Galland"]
