"""The chapters' exercises as nbgrader assignments: the student version of every chapter.

Each chapter from 01 to 07 ends with exercises written as nbgrader cells: a statement (a
read-only markdown cell), a solution cell (``nbgrader.solution``) whose answer lies between
``### BEGIN SOLUTION`` and ``### END SOLUTION``, and an autograded test cell
(``nbgrader.grade``, with ``points``) that may hold hidden tests between ``### BEGIN HIDDEN
TESTS`` and ``### END HIDDEN TESTS``. The book shows the chapters as they are, solutions folded.

``python -m helpers.exercises`` (what ``make exercises`` runs) writes the student version of
every chapter of the book to ``_build/exercises/``, with nbgrader's own preprocessors: each
solution region becomes a stub raising ``NotImplementedError``, hidden tests are removed,
outputs cleared, and the cells nbgrader locks are made read-only.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader.preprocessors import CheckCellMetadata, ClearHiddenTests, ClearOutput, ClearSolutions, LockCells

from helpers.book import ROOT, toc_notebooks

OUT = ROOT / "_build" / "exercises"
# The order matters: the nbgrader metadata is checked (points on every test cell, grade ids
# unique, ...), then solutions and hidden tests are cleared, then cells are locked.
PREPROCESSORS = (CheckCellMetadata, ClearSolutions, ClearHiddenTests, ClearOutput, LockCells)


@dataclass
class Exercise:
    """One exercise of a notebook: its solution cell and the test cell that grades it."""

    grade_id: str
    solution: str
    tests: str


def student_version(notebook: NotebookNode) -> NotebookNode:
    """A copy of ``notebook`` with solutions replaced by stubs and hidden tests removed.

    Raises nbgrader's ``ValidationError`` when the cells' nbgrader metadata is inconsistent.
    """
    notebook = nbformat.from_dict(notebook)  # a copy: the preprocessors work in place
    resources = {"language": notebook.metadata.get("kernelspec", {}).get("language", "python")}
    for preprocessor in PREPROCESSORS:
        notebook, resources = preprocessor().preprocess(notebook, resources)
    for cell in notebook.cells:  # the book folds solutions; a stub to fill in stays open
        if cell.metadata.get("nbgrader", {}).get("solution") and "hide-input" in cell.metadata.get("tags", []):
            cell.metadata.tags.remove("hide-input")
    return notebook


def exercises(notebook: NotebookNode) -> list[Exercise]:
    """The notebook's exercises in order: each solution cell with the grade cell that follows it."""
    found, solution = [], None
    for cell in notebook.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta:
            continue
        if meta.get("solution"):
            if solution is not None:
                raise ValueError(f"Solution cell {solution.metadata.nbgrader.grade_id!r} has no test cell after it")
            solution = cell
        elif meta.get("grade"):
            if solution is None:
                raise ValueError(f"Test cell {meta.get('grade_id')!r} follows no solution cell")
            found.append(Exercise(solution.metadata.nbgrader.grade_id, solution.source, cell.source))
            solution = None
    if solution is not None:
        raise ValueError(f"Solution cell {solution.metadata.nbgrader.grade_id!r} has no test cell after it")
    return found


def write_student_versions(out: Path = OUT, root: Path = ROOT) -> list[Path]:
    """Write the student version of every chapter of the table of contents to ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in toc_notebooks(root):
        source = root / f"{entry}.ipynb"
        target = out / source.name
        nbformat.write(student_version(nbformat.read(source, as_version=4)), target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the student notebooks (default: {OUT})")
    args = parser.parse_args()
    for path in write_student_versions(args.out):
        count = len(exercises(nbformat.read(path, as_version=4)))
        print(f"[exercises] {path} ({count} exercises)")


if __name__ == "__main__":
    main()
