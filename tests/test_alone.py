"""Every chapter run alone, as a reader opens it in Jupyter on a fresh clone with an empty results folder.

Each chapter executes (with the ci profile's parameters) in its own empty results folder; a chapter
that reads earlier chapters' outputs must compute them first (:func:`helpers.prerequisites.ensure_inputs`)
and say so. Slow, because chapters 05-08 each run chapters 01-04 again: deselected by default, run by
``make test-alone`` (``pytest -m alone``). CI covers the same mechanism with stand-in chapters
(``tests/test_prerequisites.py``).
"""

import json
from pathlib import Path

import pytest

from helpers.book import execute_notebook, load_profile, toc_notebooks
from helpers.prerequisites import READS, missing_chapters

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = toc_notebooks(ROOT)


def printed(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if o["output_type"] == "stream")


@pytest.mark.alone
@pytest.mark.parametrize("entry", CHAPTERS)
def test_a_chapter_runs_alone_in_an_empty_results_folder(entry, tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(results))
    profile = load_profile("ci", ROOT)
    chapter = Path(entry).name
    earlier = missing_chapters(chapter, profile["model_name"])  # everything: the folder is empty
    assert bool(earlier) == (chapter in READS)
    executed = tmp_path / f"{chapter}.ipynb"
    execute_notebook(ROOT / f"{entry}.ipynb", executed, profile, ROOT, progress_bar=False)  # raises on a failed cell
    output = printed(executed)
    for name in earlier:
        assert f"executing {name} at the ci profile's scale first" in output, f"{chapter} did not say it ran {name}"
    assert not missing_chapters(chapter, profile["model_name"]), "the chapter's inputs are there afterwards"
