"""Profiles and notebook parameters are checked before anything runs, with one message per mistake."""

import ast
import shutil
from pathlib import Path

import nbformat
import papermill
import pandas as pd
import pytest
import yaml

from helpers.book import load_profile, parameters_yaml, toc_notebooks
from helpers.knowledge import known_mask
from helpers.parameters import check_value
from helpers.sports import known_athletes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def book_root(tmp_path):
    """A copy of the book's table of contents and notebooks, with an empty profiles folder."""
    shutil.copy(ROOT / "_toc.yml", tmp_path)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "profiles").mkdir()
    return tmp_path


def write_profile(root, profile):
    (root / "profiles" / "mine.yaml").write_text(yaml.safe_dump(profile))


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"treshold": 0.5}, "Profile profiles/mine.yaml: unknown key 'treshold' \\(did you mean 'threshold'\\?\\)"),
        ({"notebooks": {"04_localized_editing": {"step": 3}}},
         "Profile profiles/mine.yaml, notebook 04_localized_editing: unknown key 'step' \\(did you mean 'steps'\\?\\)"),
        ({"notebooks": {"04_localised_editing": {"steps": 3}}},
         "Profile profiles/mine.yaml, section notebooks: unknown notebook '04_localised_editing' \\(did you mean '04_localized_editing'\\?\\)"),
        ({"notebooks": {"00_what_the_model_knows": {"n_facts": 3}}}, "notebook 00_what_the_model_knows: unknown key 'n_facts'"),
        ({"threshold": 1.5}, "Profile profiles/mine.yaml: threshold must lie in \\(0, 1\\), got 1.5"),
        ({"notebooks": {"04_localized_editing": {"tasks": ["sports_edit"]}}}, "tasks must be a non-empty list drawn from"),
        ({"notebooks": {"04_localized_editing": {"strength_curve_tasks": ["sports"]}}}, "strength_curve_tasks must be a list drawn from"),
        ({"notebooks": {"08_results": {"strength_bin_edges": [0.5, 0.2]}}},
         "strength_bin_edges must be at least two increasing numbers in \\[0, 1\\], got \\[0.5, 0.2\\]"),
    ],
)
def test_bad_profile_is_refused_before_anything_runs(book_root, profile, message):
    write_profile(book_root, profile)
    with pytest.raises(ValueError, match=message):
        load_profile("mine", book_root)


def test_shipped_profiles_pass():
    for name in ("ci", "cpu", "gpu"):
        load_profile(name, ROOT)


def test_printed_parameters_resolve_the_notebook_section():
    parameters = yaml.safe_load(parameters_yaml("ci", "04_localized_editing", ROOT))
    section = load_profile("ci", ROOT)["notebooks"]["04_localized_editing"]
    assert parameters["n_facts"] == section["n_facts"] and parameters["steps"] == section["steps"]
    assert parameters["threshold"] == load_profile("ci", ROOT)["threshold"]
    assert "n_format_facts" not in parameters  # shared in the profile, not declared by notebook 04
    with pytest.raises(ValueError, match="unknown notebook '04_localized' \\(did you mean '04_localized_editing'\\?\\)"):
        parameters_yaml("ci", "04_localized", ROOT)


def test_every_notebook_checks_its_parameters_right_after_the_parameters_cell():
    for entry in toc_notebooks(ROOT):
        cells = nbformat.read(ROOT / f"{entry}.ipynb", as_version=4).cells
        index = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assert f'check_parameters(globals(), "{Path(entry).name}")' in cells[index + 1].source, entry


@pytest.fixture
def tiny_notebook(tmp_path, monkeypatch):
    """A throwaway notebook with two parameters and the check cell; its kernel imports this checkout's helpers."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    path = tmp_path / "tiny.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("threshold = 0.5\nn_facts = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(f"from helpers.parameters import check_parameters\n\ncheck_parameters(globals(), r'{path}')"),
        nbformat.v4.new_code_cell("print('ran with', threshold, n_facts)"),
    ], metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    nbformat.write(notebook, path)
    return path


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (None, None),
        ({"treshold": 0.7}, "Notebook tiny.ipynb: unknown parameter 'treshold' \\(did you mean 'threshold'\\?\\)"),
        ({"threshold": 1.5}, "Notebook tiny.ipynb: threshold must lie in \\(0, 1\\), got 1.5"),
        (yaml.safe_load((ROOT / "profiles" / "ci.yaml").read_text()),
         "Notebook tiny.ipynb got a profile's 'notebooks' section .* --notebook tiny --print-parameters"),
    ],
)
def test_papermill_parameters_are_checked_in_the_kernel(tiny_notebook, parameters, message):
    run = lambda: papermill.execute_notebook(  # noqa: E731
        str(tiny_notebook), str(tiny_notebook.with_name("out.ipynb")), parameters=parameters, kernel_name="python3",
        cwd=str(tiny_notebook.parent), progress_bar=False,
    )
    if message is None:
        assert "ran with 0.5 2" in run().cells[-1].outputs[0].text
    else:
        with pytest.raises(papermill.PapermillExecutionError, match=message):
            run()


def test_api_and_notebooks_give_the_same_threshold_message(tiny_model):
    with pytest.raises(ValueError, match="^threshold must lie in \\(0, 1\\), got 1.5$"):
        check_value("threshold", 1.5)
    with pytest.raises(ValueError, match="^threshold must lie in \\(0, 1\\), got 1.5$"):
        known_athletes(tiny_model, threshold=1.5)


def test_a_threshold_nothing_reaches_is_named():
    with pytest.raises(ValueError, match="No athletes reach threshold 0.999 \\(the highest P\\(true\\) is 0.900\\)"):
        known_mask(pd.Series([0.9, 0.5]), 0.999, "athletes")
    assert known_mask(pd.Series([0.9, 0.5]), 0.6, "athletes").tolist() == [True, False]



def test_every_notebook_default_is_in_range():
    for entry in toc_notebooks(ROOT):
        for name, parameter in papermill.inspect_notebook(str(ROOT / f"{entry}.ipynb")).items():
            check_value(name, ast.literal_eval(parameter["default"]))
