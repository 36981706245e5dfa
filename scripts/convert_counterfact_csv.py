"""Convert the authors' CounterFact CSV into a CounterFact JSON file that ``load_counterfact`` reads.

The paper's repository keeps its CounterFact subset as a CSV, one fact per row, whose fields
``requested_rewrite`` (a Python dict), ``paraphrase_prompts`` and ``neighborhood_prompts`` are
Python literals; the two lists are printed the way numpy prints arrays, with items separated
by spaces or line breaks rather than commas. Each string is parsed with ``ast.literal_eval``
(never run as code). The records are checked like any CounterFact file, and the command says
how many facts belong to relations with too few distinct answers for multiple choice::

    .venv/bin/python scripts/convert_counterfact_csv.py their_counterfact.csv counterfact_authors.json

then, in a notebook or script::

    load_counterfact("counterfact_authors.json", skip_unusable_relations=True)
"""

from __future__ import annotations

import argparse
import ast
import io
import tokenize
from pathlib import Path

from helpers.cache import write_json
from helpers.counterfact import records_to_frame
from helpers.validation import check_columns, read_csv

COLUMNS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")
LIST_TOKENS = {"[", "]", ","}
SKIPPED_TOKENS = {tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER}


def string_list(field: str, where: str) -> list[str]:
    """The strings of a Python or numpy-printed list literal (``['a' 'b']`` gives two strings, not ``'ab'``)."""
    strings = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(field).readline):
            if token.type == tokenize.STRING:
                strings.append(ast.literal_eval(token.string))
            elif token.type not in SKIPPED_TOKENS and token.string not in LIST_TOKENS:
                raise ValueError(f"unexpected {token.string!r}")
    except (tokenize.TokenError, SyntaxError, ValueError) as error:
        raise ValueError(f"{where}: not a list of string literals ({error}): {field[:80]!r}") from None
    if not field.strip().startswith("["):
        raise ValueError(f"{where}: not a list literal: {field[:80]!r}")
    return strings


def convert_row(row: dict[str, str], where: str) -> dict:
    """One CSV row as a CounterFact record."""
    try:
        rewrite = ast.literal_eval(row["requested_rewrite"])
        case_id = int(row["case_id"])
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"{where}: field 'requested_rewrite' or 'case_id' is not a Python literal ({error})") from None
    return {
        "case_id": case_id,
        "requested_rewrite": rewrite,
        "paraphrase_prompts": string_list(row["paraphrase_prompts"], f"{where}, field 'paraphrase_prompts'"),
        "neighborhood_prompts": string_list(row["neighborhood_prompts"], f"{where}, field 'neighborhood_prompts'"),
    }


def convert(path: Path) -> list[dict]:
    """Every row of the authors' CSV as a CounterFact record."""
    table = read_csv(path, "CounterFact CSV")
    check_columns(table, COLUMNS, f"CounterFact CSV {path}")
    return [convert_row(row, f"CounterFact CSV {path}, line {i + 2}") for i, row in enumerate(table.to_dict("records"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="the authors' CounterFact CSV")
    parser.add_argument("json", type=Path, help="where to write the CounterFact JSON")
    args = parser.parse_args()
    records = convert(args.csv)
    frame = records_to_frame(records, source=f"Converted {args.csv}", skip_unusable_relations=True)
    write_json(args.json, records)
    print(f"Wrote {len(records)} records to {args.json}; {len(frame)} load with skip_unusable_relations=True")


if __name__ == "__main__":
    main()
