import pandas as pd

from helpers.cache import slug
from helpers.knowledge import cached_scores


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
