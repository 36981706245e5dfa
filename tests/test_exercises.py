"""The chapters' exercises: the solutions pass their tests, the student versions fail them.

Each exercise's solution cell and test cell run in a namespace that holds small stand-ins
for what the chapter has in memory at that point (the tiny test model, a few prompts,
synthetic residuals and run records), so no chapter is executed.
"""

from __future__ import annotations

from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from nbgrader.preprocessors.checkcellmetadata import ValidationError

from helpers.book import toc_notebooks
from helpers.contrast import contrast_batches
from helpers.exercises import exercises, student_version, write_student_versions
from helpers.localization import Component, Localization
from helpers.probes import NAME_ONLY, name_only_curve, probe_accuracy_by_layer
from helpers.prompts import SPORTS
from helpers.tasks import sports_athlete_edit
from helpers.tracing import attribution_patching
from tests.conftest import make_tiny_model
from tests.test_book import ROOT

CHAPTERS = [f"notebooks/{name}" for name in (
    "01_sports_fact_lookup_probes", "02_counterfact_fact_lookup_path_patching", "03_output_tracing",
    "04_localized_editing", "05_prompt_formats", "06_relearning_and_soft_prompts", "07_latent_probes")]
ATHLETES = pd.DataFrame({"athlete": ["Alice", "Boris", "Chen", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ingrid"],
                         "sport": [SPORTS[i % 3] for i in range(9)]})
RUN = ["task", "localization", "seed"]


def chapter_01(model) -> dict:
    """Residuals whose sport gets more separable layer by layer, and the chapter's probe results on them."""
    rng = np.random.default_rng(0)
    sports = np.repeat(list(SPORTS), 10)
    centres = {s: rng.normal(size=8) for s in SPORTS}
    residuals = {NAME_ONLY: np.stack([[centres[s] * layer + rng.normal(size=8) for layer in range(4)] for s in sports])}
    seeds, test_fraction = [0, 1], 0.3
    results = probe_accuracy_by_layer(residuals, sports, seeds=seeds, test_fraction=test_fraction)
    return {"athletes": pd.DataFrame({"sport": sports}), "residuals": residuals, "results": results, "seeds": seeds,
            "test_fraction": test_fraction, "curve": name_only_curve(results), "rule": {"rise_fraction": 0.1, "margin": 0.02}}


def contrast(model):
    subjects = ["Michael Jordan", "Tom Brady", "Babe Ruth"]
    return contrast_batches(model, [f"Fact: {s} plays the sport of" for s in subjects], subjects,
                            ["basketball", "football", "baseball"], [["golf"]] * 3, seed=0)


def chapter_02(model) -> dict:
    return {"model": model, "corruptions": [contrast(model)], "selection": SimpleNamespace(extraction_heads=[(1, 0)])}


def chapter_03(model) -> dict:
    batches = {"counterfact": contrast(model)}
    return {"model": model, "batches": batches, "attributions": {"counterfact": attribution_patching(model, batches["counterfact"], progress=False)},
            "fact_lookup": {"counterfact": Localization.build("fact_lookup", model, [Component("mlp", 0)], "test")}}


def chapter_04(model) -> dict:
    return {"model": model, "example": sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3)}


def chapter_05(model) -> dict:
    from helpers.results import mcq_usability

    records = pd.DataFrame({"task": ["sports_athlete_edit"] * 3 + ["counterfact_edit"], "localization": ["x", "y", "x", "x"],
                            "seed": [0, 0, 1, 0], "metrics_before.cloze_mcq_maintain_accuracy": [0.45, 0.45, 0.35, 0.36],
                            "metrics_before.lettered_mcq_maintain_accuracy": [0.25, 0.25, 0.27, 0.80]})
    return {"model": model, "task": sports_athlete_edit(ATHLETES, 3, seed=0, n_maintain=3), "batch_size": 4,
            "records": records, "usability": mcq_usability(records)}


def chapter_06(model) -> dict:
    def curve(*p_true):
        return [{"attack": "lora", "step": 5 * i, "p_true": p, "relearn_error": 1 - p} for i, p in enumerate(p_true)]

    records = pd.DataFrame({"task": ["t", "t"], "localization": ["x", "y"], "seed": [0, 0],
                            "attacks.relearn_lora": [curve(0.1, 0.3, 0.6), curve(0.2, 0.25)]})
    return {"records": records, "attacks": ["lora"]}


def chapter_07(model) -> dict:
    from helpers.results import latent_by_layer

    shares = {"attacks.latent_original_true_L0": [0.9, 0.5], "attacks.latent_original_true_L1": [0.3, float("nan")],
              "attacks.latent_edited_true_L0": [0.1, 0.2], "attacks.latent_original_new_L0": [0.1, 0.4]}
    records = pd.DataFrame({"task": ["t", "t"], "localization": ["x", "y"], "seed": [0, 0], **shares,
                            "attacks.latent_original_true_mean": [0.6, 0.5]})
    return {"records": records, "latent": latent_by_layer(records)}


NAMESPACES = dict(zip(CHAPTERS, (chapter_01, chapter_02, chapter_03, chapter_04, chapter_05, chapter_06, chapter_07)))


def chapter_exercises(chapter: str, student: bool = False):
    notebook = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    return exercises(student_version(notebook) if student else notebook)


def test_every_chapter_from_01_to_07_has_at_least_two_exercises_with_difficulty_and_objective():
    assert set(CHAPTERS) <= set(toc_notebooks(ROOT))
    for chapter in CHAPTERS:
        notebook = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
        assert len(exercises(notebook)) >= 2, chapter
        statements = [c.source for c in notebook.cells if c.cell_type == "markdown" and c.source.startswith("### Exercise")]
        assert len(statements) == len(exercises(notebook)), chapter
        assert all("Difficulty:" in s and "Objective:" in s for s in statements), chapter


def test_every_chapter_opens_with_its_learning_objectives():
    for chapter in toc_notebooks(ROOT):
        cells = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4).cells
        assert "learning-objectives" in cells[1].metadata.get("tags", []), chapter
        assert "After this chapter you can" in cells[1].source, chapter


def test_the_book_folds_each_solution_and_the_student_version_opens_it():
    for chapter in CHAPTERS:
        notebook = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
        solutions = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert solutions and all("hide-input" in c.metadata.tags for c in solutions), chapter
        student = [c for c in student_version(notebook).cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert not any("hide-input" in c.metadata.get("tags", []) for c in student), chapter


def test_student_versions_have_stubs_and_no_hidden_tests(tmp_path):
    written = write_student_versions(tmp_path, ROOT)
    assert [p.stem for p in written] == [entry.split("/")[-1] for entry in toc_notebooks(ROOT)]
    hidden = 0
    for chapter in CHAPTERS:
        original = chapter_exercises(chapter)
        hidden += sum("BEGIN HIDDEN TESTS" in e.tests for e in original)
        student = exercises(nbformat.read(tmp_path / f"{chapter.split('/')[-1]}.ipynb", as_version=4))
        assert [e.grade_id for e in student] == [e.grade_id for e in original]
        for exercise in student:
            assert "raise NotImplementedError()" in exercise.solution and "BEGIN SOLUTION" not in exercise.solution
            assert "HIDDEN TESTS" not in exercise.tests
    assert hidden >= 4  # some exercises have tests the student version does not show


def test_inconsistent_exercise_cells_are_refused():
    solution = new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION", metadata={"nbgrader": {
        "grade": False, "grade_id": "f", "locked": False, "schema_version": 3, "solution": True, "task": False}})
    tests = new_code_cell("assert f() == 1", metadata={"nbgrader": {
        "grade": True, "grade_id": "f_tests", "locked": True, "points": 1, "schema_version": 3, "solution": False, "task": False}})
    notebook = new_notebook(cells=[solution, tests], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    assert [e.grade_id for e in exercises(notebook)] == ["f"]
    assert "raise NotImplementedError()" in student_version(notebook).cells[0].source
    with pytest.raises(ValueError, match="Solution cell 'f' has no test cell after it"):
        exercises(new_notebook(cells=[solution]))
    with pytest.raises(ValueError, match="Test cell 'f_tests' follows no solution cell"):
        exercises(new_notebook(cells=[tests]))
    del tests.metadata.nbgrader["points"]
    with pytest.raises(ValidationError):
        student_version(notebook)


@pytest.fixture(scope="module")
def namespaces(gemma_tokenizer):
    """Each chapter's objects, on a tiny model of this module's own: the exercises build the TransformerLens
    bridge on it, which the session's ``tiny_model`` must not see (later bf16 evaluations of it gave NaN)."""
    model = make_tiny_model(gemma_tokenizer)
    return {chapter: make(model) for chapter, make in NAMESPACES.items()}


def run(exercise, namespace: dict) -> None:
    exec(compile(exercise.solution, f"<{exercise.grade_id}>", "exec"), namespace)
    exec(compile(exercise.tests, f"<{exercise.grade_id}_tests>", "exec"), namespace)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solutions_pass_their_tests(chapter, namespaces):
    for exercise in chapter_exercises(chapter):
        run(exercise, dict(namespaces[chapter]))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_versions_fail_their_tests(chapter, namespaces):
    for exercise in chapter_exercises(chapter, student=True):
        with pytest.raises(NotImplementedError):
            run(exercise, dict(namespaces[chapter]))
