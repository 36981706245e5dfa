import copy
import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers.cache import slug, write_atomic, write_json
from helpers.keys import code_version, model_key
from helpers.knowledge import cached_scores
from helpers.records import load_records


def counting_compute(calls):
    def compute(keys):
        calls.append(len(keys))
        return pd.DataFrame({"p": [0.5] * len(keys)})

    return compute


def test_cache_is_keyed_by_content(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    calls = []
    cached_scores(tiny_model, "d", pd.DataFrame({"k": ["a", "b"]}), counting_compute(calls))
    cached_scores(tiny_model, "d", pd.DataFrame({"k": ["a", "b"]}), counting_compute(calls))
    cached_scores(tiny_model, "d", pd.DataFrame({"k": ["a", "c"]}), counting_compute(calls))
    assert calls == [2, 2]


def test_cache_is_keyed_by_template_dtype_and_code(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    calls, keys = [], pd.DataFrame({"k": ["a"]})
    score = lambda model, template="T {}": cached_scores(model, "d", keys, counting_compute(calls), template=template)  # noqa: E731
    score(tiny_model)
    score(tiny_model)
    assert calls == [1]
    score(tiny_model, template="Other {}")
    assert calls == [1, 1]
    score(replace(tiny_model, hf_model=copy.deepcopy(tiny_model.hf_model).to(torch.bfloat16)))
    assert calls == [1, 1, 1]
    monkeypatch.setattr("helpers.keys.code_version", lambda: "changed")
    score(tiny_model)
    assert calls == [1, 1, 1, 1]


def test_unwritable_cache_returns_scores_with_a_warning(tmp_path, monkeypatch, tiny_model):
    """A cache folder that cannot be written (here "scores" is a file, which even root cannot write into)."""
    monkeypatch.setenv("MECHUNLEARN_CACHE", str(tmp_path))
    (tmp_path / "scores").write_text("")
    with pytest.warns(UserWarning, match="Could not save scores to .*; they are returned but not cached"):
        scores = cached_scores(tiny_model, "d", pd.DataFrame({"k": ["a"]}), counting_compute([]))
    assert scores.p.tolist() == [0.5]


def write_package(folder, source):
    folder.mkdir(exist_ok=True)
    (folder / "module.py").write_text(source)
    code_version.cache_clear()
    return code_version(folder)


def test_code_version_ignores_docstrings_and_comments_but_not_code(tmp_path):
    original = write_package(tmp_path, 'def f():\n    """Doc."""\n    return 1\n')
    assert write_package(tmp_path, 'def f():\n    """Other words."""\n    # a comment\n    return 1\n') == original
    assert write_package(tmp_path, 'def f():\n    """Doc."""\n    return 2\n') != original


def test_model_key_names_model_dtype_and_code(tiny_model):
    assert model_key(tiny_model) == {"model": "tiny-gemma3", "dtype": "torch.float32", "code": code_version()}


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = write_atomic(tmp_path / "record.json", "old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "new \ud800")  # a lone surrogate cannot be encoded: the write fails half-way
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_an_atomic_write_has_an_ordinary_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "record.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, like a file written with open()


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
