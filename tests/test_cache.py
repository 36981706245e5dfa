import json
import multiprocessing
from pathlib import Path

import pandas as pd

from helpers.cache import slug, write_json
from helpers.knowledge import cached_scores
from helpers.records import load_records


def test_cache_is_keyed_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    calls = []

    def compute(keys):
        calls.append(len(keys))
        return pd.DataFrame({"p": [0.5] * len(keys)})

    cached_scores("m", "d", pd.DataFrame({"k": ["a", "b"]}), compute)
    cached_scores("m", "d", pd.DataFrame({"k": ["a", "b"]}), compute)
    cached_scores("m", "d", pd.DataFrame({"k": ["a", "c"]}), compute)
    assert calls == [2, 2]


def test_slug_is_file_system_safe():
    assert slug("google/gemma-2-9b") == "google--gemma-2-9b"


def _write_many(path: str, marker: str, n: int) -> None:
    for i in range(n):
        write_json(Path(path), {"writer": marker, "i": i, "payload": [marker * 50] * 2000})


def test_two_writers_at_once_leave_only_complete_records(tmp_path):
    path = tmp_path / "runs" / "record.json"
    path.parent.mkdir()
    context = multiprocessing.get_context("fork")  # the writers need nothing but write_json
    writers = [context.Process(target=_write_many, args=(str(path), marker, 150)) for marker in "ab"]
    for writer in writers:
        writer.start()
    seen = set()
    while any(writer.is_alive() for writer in writers):
        if path.exists():
            seen.add(json.loads(path.read_text())["writer"])  # never a half-written file
    assert [writer.join() or writer.exitcode for writer in writers] == [0, 0]
    assert json.loads(path.read_text())["i"] == 149 and seen <= {"a", "b"}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]  # no temporary file left behind


def test_records_ignore_a_writer_killed_mid_write(tmp_path):
    write_json(tmp_path / "a.json", {"key": "a", "purpose": "evaluation"})
    (tmp_path / ".b.json.x1y2.tmp").write_text('{"key": "b", "purp')  # what a killed writer leaves
    assert load_records(tmp_path).key.tolist() == ["a"]
