"""Chapters that run alone: what each chapter reads from earlier ones, computed at the ci scale when missing.

Chapters 03-08 read what earlier chapters wrote into the results folder: the localizations
(chapters 01-03), the sweep's hyper-parameters and the grid's records (chapter 04). A chapter
opened alone in Jupyter on a fresh clone calls :func:`ensure_inputs` first. For every earlier
chapter whose output it needs and cannot find, it prints one line and executes that chapter with
papermill at the ci profile's scale, after the chapters that one needs in turn. The chapter then
shows that small run: its figures show the method, not the book's results (``make book``
computes those at full scale, and a chapter finds them whenever they are there).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from helpers.cache import project_root, results_dir
from helpers.grid import manifest_path
from helpers.localization import CONTROLS, FACT_LOOKUP, OUTPUT_TRACING, localization_path
from helpers.sweep import choices_path

SPORTS_PROBES = "01_sports_fact_lookup_probes"
PATH_PATCHING = "02_counterfact_fact_lookup_path_patching"
OUTPUT_TRACING_CHAPTER = "03_output_tracing"
EDITING = "04_localized_editing"

# Per chapter: the earlier chapters it reads from, each with the files (for a model name) it reads.
Reads = Mapping[str, Callable[[str], list[Path]]]


def _localizations(dataset: str, names: tuple[str, ...]) -> Callable[[str], list[Path]]:
    return lambda model_name: [localization_path(model_name, dataset, name) for name in names]


def _both(names: tuple[str, ...]) -> Callable[[str], list[Path]]:
    return lambda model_name: [path for dataset in ("sports", "counterfact") for path in _localizations(dataset, names)(model_name)]


def _grid(model_name: str) -> list[Path]:
    return [manifest_path(model_name)]


READS: dict[str, Reads] = {
    OUTPUT_TRACING_CHAPTER: {
        SPORTS_PROBES: _localizations("sports", (FACT_LOOKUP,)),
        PATH_PATCHING: _localizations("counterfact", (FACT_LOOKUP,)),
    },
    EDITING: {
        SPORTS_PROBES: _localizations("sports", (FACT_LOOKUP,)),
        PATH_PATCHING: _localizations("counterfact", (FACT_LOOKUP,)),
        OUTPUT_TRACING_CHAPTER: _both(OUTPUT_TRACING + CONTROLS),
    },
    "05_prompt_formats": {
        SPORTS_PROBES: _localizations("sports", (FACT_LOOKUP,)),
        OUTPUT_TRACING_CHAPTER: _localizations("sports", ("causal_tracing",)),
        EDITING: lambda model_name: [choices_path(model_name, "sports_athlete_edit"), *_grid(model_name)],
    },
    "06_relearning_and_soft_prompts": {EDITING: _grid},
    "07_latent_probes": {EDITING: _grid},
    "08_results": {EDITING: _grid},
}


def missing_chapters(chapter: str, model_name: str, reads: Mapping[str, Reads] = READS) -> list[str]:
    """The earlier chapters to execute before ``chapter`` can run, in reading order (earlier needs included)."""
    needed: set[str] = set()
    for earlier, files in reads.get(chapter, {}).items():
        if not all(path.exists() for path in files(model_name)):
            needed |= {earlier, *missing_chapters(earlier, model_name, reads)}
    return sorted(needed)  # chapter names start with their number


def ensure_inputs(
    chapter: str, model_name: str, *, profile: str = "ci", root: Path | None = None, reads: Mapping[str, Reads] = READS,
) -> list[str]:
    """Execute, at ``profile``'s scale, each earlier chapter whose output ``chapter`` reads and cannot find; return their names."""
    from helpers.book import execute_notebook, load_profile  # here: helpers.book needs papermill, the chapters' helpers do not

    root = root or project_root()
    missing = missing_chapters(chapter, model_name, reads)
    if not missing:
        return []
    parameters = {**load_profile(profile, root), "model_name": model_name}
    with tempfile.TemporaryDirectory(prefix="mechunlearn-inputs-") as executed:
        for earlier in missing:
            print(f"[inputs] {chapter} reads what {earlier} writes, and {results_dir()} has none of it for "
                  f"{model_name!r}: executing {earlier} at the {profile} profile's scale first", flush=True)
            seconds = execute_notebook(root / "notebooks" / f"{earlier}.ipynb", Path(executed) / f"{earlier}.ipynb",
                                       parameters, root, progress_bar=False)
            print(f"[inputs] {earlier}: done in {seconds:.0f} s", flush=True)
    print(f"[inputs] {chapter} now shows the {profile}-scale results of {', '.join(missing)}; `make book` computes them at full scale")
    return missing
