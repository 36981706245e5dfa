"""Chapters that run alone: the earlier chapters they read from are executed, at the ci scale, when missing."""

import re
from pathlib import Path

import nbformat
import pytest

from helpers.cache import results_dir
from helpers.prerequisites import READS, ensure_inputs, missing_chapters

ROOT = Path(__file__).resolve().parents[1]
LOADERS = ("Localization.load(", "load_grid(", "load_choices(")


def chapter_source(stem: str) -> str:
    return "\n".join(cell.source for cell in nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4).cells)


def test_every_chapter_that_reads_results_ensures_its_inputs_first():
    chapters = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert set(READS) <= set(chapters)
    for stem in chapters:
        source = chapter_source(stem)
        if any(loader in source for loader in LOADERS):
            assert stem in READS, f"{stem} reads results but helpers.prerequisites.READS does not say from where"
            call = re.search(rf'ensure_inputs\("{stem}", model_name\)', source)
            assert call and call.start() < min(source.find(loader) for loader in LOADERS if loader in source), stem


def write_chapter(root: Path, stem: str, reads: str | None) -> None:
    """A stand-in chapter: declares ``n_prompts``, checks that what it reads exists, writes ``<model>-<stem>.txt``."""
    code = "from helpers.cache import results_dir\nfolder = results_dir('fake')\n"
    if reads:
        code += f"assert (folder / f'{{model_name}}-{reads}.txt').exists()\n"
    code += f"(folder / f'{{model_name}}-{stem}.txt').write_text(str(n_prompts))\n"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('model_name = "gemma-3-270m"\nn_prompts = 50', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / "notebooks" / f"{stem}.ipynb")


@pytest.fixture
def fake_book(tmp_path, monkeypatch):
    """Three stand-in chapters, 02 reading 01 and 03 reading 02, with a ci profile that shrinks ``n_prompts``."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "profiles").mkdir()
    for stem, reads in (("01_a", None), ("02_b", "01_a"), ("03_c", "02_b")):
        write_chapter(tmp_path, stem, reads)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: notebooks/01_a\n- file: notebooks/02_b\n- file: notebooks/03_c\n")
    (tmp_path / "profiles" / "ci.yaml").write_text("notebooks:\n  01_a:\n    n_prompts: 2\n  02_b:\n    n_prompts: 3\n")
    monkeypatch.setenv("MECHUNLEARN_RESULTS", str(tmp_path / "results"))

    def output(stem: str):
        return lambda model_name: [results_dir("fake") / f"{model_name}-{stem}.txt"]

    reads = {"02_b": {"01_a": output("01_a")}, "03_c": {"02_b": output("02_b")}}
    return tmp_path, reads


def test_a_chapter_alone_runs_what_it_reads_at_the_ci_scale_once(fake_book, capsys):
    root, reads = fake_book
    assert missing_chapters("03_c", "m", reads) == ["01_a", "02_b"]
    assert ensure_inputs("03_c", "m", root=root, reads=reads) == ["01_a", "02_b"]
    assert [(results_dir("fake") / f"m-{stem}.txt").read_text() for stem in ("01_a", "02_b")] == ["2", "3"]
    assert "executing 01_a at the ci profile's scale" in capsys.readouterr().out
    assert ensure_inputs("03_c", "m", root=root, reads=reads) == []  # found now: nothing runs again
    assert missing_chapters("03_c", "another model", reads) == ["01_a", "02_b"]  # results are per model


def test_only_the_missing_chapter_runs_when_its_own_inputs_are_there(fake_book):
    root, reads = fake_book
    (results_dir("fake") / "m-01_a.txt").write_text("kept")
    assert ensure_inputs("03_c", "m", root=root, reads=reads) == ["02_b"]
    assert (results_dir("fake") / "m-01_a.txt").read_text() == "kept"


def test_the_results_folder_is_the_books_from_the_notebooks_folder_too(monkeypatch, tmp_path):
    monkeypatch.delenv("MECHUNLEARN_RESULTS", raising=False)
    (tmp_path / "_toc.yml").write_text("format: jb-book\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert results_dir() == (tmp_path / "results").resolve()
