"""One validation path for every data input, files and data frames alike.

The loaders (sports CSV, CounterFact JSON, general text, localization JSON) read a file with
:func:`read_csv` / :func:`read_json`, which name the file in every read error, and then check
its records with the same functions that check a data frame passed to the API. Every error
names the source (the file, or ``"data frame argument"``), the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

FRAME = "data frame argument"


def normalized(text: str) -> str:
    """``text`` for duplicate detection: case-folded, whitespace collapsed."""
    return " ".join(text.split()).casefold()


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV of strings; an empty, undecodable or malformed file gives an error naming it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} {path} is empty (0 bytes or no header line)") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ValueError(f"{what} {path} cannot be read as a UTF-8 CSV: {error}") from None


def read_json(path: Path, what: str) -> object:
    """Parsed JSON; an undecodable or malformed file gives an error naming it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {path} is not valid UTF-8 JSON: {error}") from None


def check_columns(frame: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    """The frame has every column in ``columns`` and at least one row."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the columns {missing}; it needs {list(columns)}")
    if frame.empty:
        raise ValueError(f"{source} has no rows")


def text(value: object, source: str, record: str, field: str) -> str:
    """``value`` stripped, when it is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{source}, {record}: field {field!r} must be a non-empty string, got {value!r}")
    return value.strip()


def text_list(value: object, source: str, record: str, field: str) -> list[str]:
    """``value`` as a list of non-empty strings (a plain string is refused, not split into characters)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{source}, {record}: field {field!r} must be a list of strings, got {type(value).__name__} {value!r}")
    return [text(item, source, record, f"{field}[{i}]") for i, item in enumerate(value)]


def template(value: object, source: str, record: str, field: str) -> str:
    """A prompt template with exactly one ``{}`` placeholder for the subject."""
    value = text(value, source, record, field)
    if value.count("{}") != 1:
        raise ValueError(f"{source}, {record}: field {field!r} must hold exactly one '{{}}' for the subject, got {value!r}")
    return value


def check_unique(keys: Iterable[str], labels: Sequence[str], source: str, field: str) -> None:
    """No two records share a key after :func:`normalized` (case and whitespace ignored)."""
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        previous = first.setdefault(normalized(key), index)
        if previous != index:
            raise ValueError(
                f"{source}: {labels[index]} repeats field {field!r} of {labels[previous]} ({key!r}; case and spaces ignored)"
            )


def check_texts(texts: Sequence[object], source: str) -> list[str]:
    """General text: a non-empty list of non-empty strings (a plain string is refused, not split)."""
    if isinstance(texts, str) or not texts:
        raise ValueError(f"No general text: {source} must be a non-empty list of texts, got {texts!r:.80}")
    return [text(t, source, f"text {i}", "text") for i, t in enumerate(texts)]
