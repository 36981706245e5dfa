"""Execute the notebooks with papermill and build the Jupyter Book from the executed copies.

``python -m helpers.book --profile cpu`` (what ``make book`` runs):

1. reads ``_toc.yml``, checks ``profiles/<profile>.yaml`` (:func:`helpers.parameters.check_profile`:
   no unknown key or notebook name, no value out of range), and executes every notebook the
   table of contents lists, in order, with the profile's parameters (each notebook gets the ones
   its ``parameters`` cell declares; a ``notebooks:`` section of the profile overrides values for
   one notebook by name);
2. stages ``_config.yml``, ``_toc.yml``, ``book/`` and the executed notebooks in
   ``_build/book/``, with one local copy of plotly.js in ``_static/``;
3. runs ``jupyter-book build`` on the staged tree with warnings as errors.

A failing cell stops the build (papermill raises). Run times go to ``_build/book/timings.json``
and under each notebook's title, with what ``"auto"`` precision chose on this machine and
whether ``MECHUNLEARN_PRECISION`` forced one (:func:`helpers.precision.hardware_summary`).

``python -m helpers.book --profile ci --notebook 04_localized_editing --print-parameters`` prints
the parameters one notebook gets from a profile as YAML, for ``papermill -f``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import nbformat
import papermill
import plotly
import yaml

from helpers.cache import project_root, write_json
from helpers.parameters import check_profile, declared_parameters, unknown_name_error
from helpers.precision import describe_hardware, hardware_summary

ROOT = project_root()
KERNEL = "python3"


def toc_notebooks(root: Path = ROOT) -> list[str]:
    """Notebook paths (without suffix) in ``_toc.yml`` reading order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [e.removesuffix(".ipynb") for e in entries if (root / f"{e.removesuffix('.ipynb')}.ipynb").exists()]


def load_profile(name: str, root: Path = ROOT) -> dict:
    """The papermill parameters of ``profiles/<name>.yaml``, checked against the notebooks' parameters."""
    path = root / "profiles" / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise ValueError(f"Unknown profile {name!r}; available profiles: {known}")
    profile = yaml.safe_load(path.read_text()) or {}
    check_profile(profile, path.relative_to(root), notebook_declarations(root))
    return profile


def notebook_declarations(root: Path = ROOT) -> dict[str, set[str]]:
    """Notebook name (``04_localized_editing``) -> the parameters it declares, for every notebook of the book."""
    return {Path(entry).name: declared_parameters(root / f"{entry}.ipynb") for entry in toc_notebooks(root)}


def notebook_parameters(profile: dict, notebook: str) -> dict:
    """A profile's shared parameters, overridden by its ``notebooks: {<name>: {...}}`` entry."""
    shared = {k: v for k, v in profile.items() if k != "notebooks"}
    return {**shared, **(profile.get("notebooks") or {}).get(notebook, {})}


def declared_notebook_parameters(profile: dict, notebook: Path) -> dict:
    """The profile's values for the parameters ``notebook`` declares (what papermill should pass it)."""
    declared = declared_parameters(notebook)
    return {k: v for k, v in notebook_parameters(profile, notebook.stem).items() if k in declared}


def execute_notebook(source: Path, target: Path, profile: dict, root: Path = ROOT, progress_bar: bool = True) -> float:
    """Execute one notebook with the profile parameters it declares; return seconds taken."""
    parameters = declared_notebook_parameters(profile, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    papermill.execute_notebook(
        str(source), str(target), parameters=parameters, kernel_name=KERNEL, cwd=str(root), progress_bar=progress_bar
    )
    return time.perf_counter() - start


def note_run_time(notebook: Path, seconds: float, profile_name: str, precision: str = "") -> None:
    """Put a line under the notebook's title saying how long it took to execute, with which profile, where."""
    content = nbformat.read(notebook, as_version=4)
    minutes, rest = divmod(round(seconds), 60)
    note = (f"*Executed for this book with the `{profile_name}` profile on {date.today():%Y-%m-%d}: "
            f"{minutes} min {rest} s on a machine with {os.cpu_count()} CPU cores"
            f"{f' (precision: {precision})' if precision else ''}.*")
    content.cells.insert(1, nbformat.v4.new_markdown_cell(note, metadata={"tags": ["run-time"]}))
    nbformat.write(content, notebook)


def execute_all(profile_name: str, staging: Path, root: Path = ROOT) -> dict[str, float]:
    """Execute the notebooks of the table of contents into ``staging``; return run times."""
    profile = load_profile(profile_name, root)
    timings = {}
    precision = describe_hardware(profile.get("device", "cpu"))
    print(f"[book] precision: {precision}", flush=True)
    for entry in toc_notebooks(root):
        print(f"[book] executing {entry}.ipynb with profile {profile_name!r}", flush=True)
        timings[entry] = execute_notebook(root / f"{entry}.ipynb", staging / f"{entry}.ipynb", profile, root)
        note_run_time(staging / f"{entry}.ipynb", timings[entry], profile_name, precision)
        print(f"[book] {entry}: {timings[entry]:.0f} s", flush=True)
    return timings


def stage_sources(staging: Path, root: Path = ROOT) -> None:
    """Copy the book's configuration, prose and a local plotly.js next to the executed notebooks."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, staging / name)
    shutil.copytree(root / "book", staging / "book", dirs_exist_ok=True)
    static = staging / "_static"
    static.mkdir(exist_ok=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")


def build_html(staging: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(staging), "-W", "-n", "--keep-going"]
    subprocess.run(command, check=True)
    return staging / "_build" / "html"


def build_book(profile_name: str = "cpu", root: Path = ROOT, staging: Path | None = None) -> Path:
    """Execute every notebook with a profile and build the HTML book; return its folder."""
    staging = staging or root / "_build" / "book"
    staging.mkdir(parents=True, exist_ok=True)
    timings = execute_all(profile_name, staging, root)
    precision = hardware_summary(load_profile(profile_name, root).get("device", "cpu"))
    write_json(staging / "timings.json", {"profile": profile_name, "precision": precision, "seconds": timings})
    stage_sources(staging, root)
    html = build_html(staging)
    print(f"[book] built {html / 'index.html'}", flush=True)
    return html


def parameters_yaml(profile_name: str, notebook: str, root: Path = ROOT) -> str:
    """YAML of the parameters ``notebook`` gets from a profile, for ``papermill -f``."""
    profile = load_profile(profile_name, root)
    entries = {Path(entry).name: entry for entry in toc_notebooks(root)}
    if notebook not in entries:
        raise unknown_name_error("--notebook", "notebook", notebook, entries)
    return yaml.safe_dump(declared_notebook_parameters(profile, root / f"{entries[notebook]}.ipynb"), sort_keys=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="parameter profile in profiles/ (ci, cpu, gpu)")
    parser.add_argument("--notebook", help="with --print-parameters: a notebook name, e.g. 04_localized_editing")
    parser.add_argument("--print-parameters", action="store_true", help="print the notebook's parameters as YAML and exit")
    args = parser.parse_args()
    if args.print_parameters != bool(args.notebook):
        parser.error("--notebook and --print-parameters go together")
    try:
        if args.print_parameters:
            print(parameters_yaml(args.profile, args.notebook), end="")
        else:
            build_book(args.profile)
    except ValueError as error:  # a bad profile or notebook name: the message says it all
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
