"""The notebooks, executed with the ci profile, and the book built from them."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.book import build_book, load_profile, toc_notebooks

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = toc_notebooks(ROOT)
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "_build" / "screenshots"  # kept as build artefacts
BROWSER_PAGES = ["notebooks/08_results", "notebooks/04_localized_editing"]
NBVAL_CHAPTERS = NOTEBOOKS[:3]  # 00-02: what the model knows and the fact-lookup localizations, cheap to run again


def test_toc_lists_every_notebook_in_order():
    on_disk = sorted(str(p.relative_to(ROOT).with_suffix("")) for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert NOTEBOOKS == on_disk


def test_profiles_exist_and_unknown_profile_is_refused():
    for name in ("ci", "cpu", "gpu"):
        assert load_profile(name, ROOT)["model_name"]
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        load_profile("huge", ROOT)


def test_committed_notebooks_have_no_outputs():
    for entry in NOTEBOOKS:
        cells = json.loads((ROOT / f"{entry}.ipynb").read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), entry


def test_every_committed_cell_has_a_unique_id():
    """nbformat 4.5 requires cell ids; a missing one makes papermill warn in the executed chapter."""
    for entry in NOTEBOOKS:
        ids = [c.get("id") for c in json.loads((ROOT / f"{entry}.ipynb").read_text())["cells"]]
        assert None not in ids and len(set(ids)) == len(ids), entry


def test_prose_has_no_tex_math_which_needs_mathjax_from_a_cdn():
    """The book must read offline; MathJax comes from a CDN, so formulas are written in HTML."""
    sources = [*(ROOT / "book").glob("*.md"), *(ROOT / f"{entry}.ipynb" for entry in NOTEBOOKS)]
    for path in sources:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
        prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))  # code may hold `$VARIABLES`
        assert not re.search(r"\$[^$\s][^$]*\$", prose), path.name


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Execute every notebook (ci profile) and build the book, with results in a temporary folder."""
    staging = tmp_path_factory.mktemp("book")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MECHUNLEARN_RESULTS", str(tmp_path_factory.mktemp("results")))
        html = build_book("ci", root=ROOT, staging=staging)
    return staging, html


@pytest.mark.notebooks
@pytest.mark.parametrize("entry", NOTEBOOKS)
def test_notebook_executes_with_ci_profile(built_book, entry):
    staging, _ = built_book
    cells = json.loads((staging / f"{entry}.ipynb").read_text())["cells"]
    assert not [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert json.loads((staging / "timings.json").read_text())["seconds"][entry] > 0
    assert "run-time" in cells[1]["metadata"]["tags"] and "profile" in "".join(cells[1]["source"])
    stderr = "".join("".join(o["text"]) for c in cells for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "Warning" not in stderr, f"{entry} shows a warning to the reader: {stderr[:300]}"
    widgets = [o for c in cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, f"{entry} saved a widget (a progress bar?) that a static page shows frozen: {widgets[0]}"


@pytest.mark.notebooks
@pytest.mark.parametrize("entry", NOTEBOOKS)
def test_every_figure_is_on_its_page_with_local_plotly(built_book, entry):
    staging, html = built_book
    cells = json.loads((staging / f"{entry}.ipynb").read_text())["cells"]
    n_figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in cells for o in c.get("outputs", []))
    page = (html / f"{entry}.html").read_text()
    assert len(re.findall(r'class="plotly-graph-div"', page)) == n_figures
    assert re.search(r'<script src="[./]*_static/plotly\.min\.js', page)
    assert "cdn.plot.ly" not in page
    assert (html / "_static" / "plotly.min.js").stat().st_size > 1_000_000


@pytest.mark.notebooks
@pytest.mark.parametrize("entry", NOTEBOOKS)
def test_each_page_offers_its_executed_notebook_for_download(built_book, entry):
    _, html = built_book
    name = Path(entry).name
    assert f'href="../_sources/notebooks/{name}.ipynb"' in (html / f"{entry}.html").read_text()
    downloaded = json.loads((html / "_sources" / "notebooks" / f"{name}.ipynb").read_text())
    assert any(c.get("outputs") for c in downloaded["cells"] if c["cell_type"] == "code")


@pytest.mark.notebooks
def test_first_notebook_has_figures(built_book):
    staging, html = built_book
    page = (html / f"{NOTEBOOKS[0]}.html").read_text()
    assert page.count('class="plotly-graph-div"') >= 3


def test_notebook_overrides_win_over_shared_parameters():
    from helpers.book import notebook_parameters

    profile = {"seed": 0, "n_prompts": 50, "notebooks": {"02_x": {"n_prompts": 8}}}
    assert notebook_parameters(profile, "02_x") == {"seed": 0, "n_prompts": 8}
    assert notebook_parameters(profile, "03_y") == {"seed": 0, "n_prompts": 50}


def test_notebook_defaults_equal_the_cpu_profile():
    """A reader who presses "run all" in Jupyter gets the book's (cpu profile's) parameters."""
    from helpers.book import notebook_parameters
    from helpers.parameters import notebook_defaults

    profile = load_profile("cpu", ROOT)
    differences = [
        f"{Path(entry).name}: {name} = {default!r} in the notebook, {value!r} in profiles/cpu.yaml"
        for entry in NOTEBOOKS for name, default in notebook_defaults(ROOT / f"{entry}.ipynb").items()
        for value in [notebook_parameters(profile, Path(entry).name).get(name, default)] if value != default
    ]
    assert not differences, "\n".join(differences)


def headless(url: str, action: str, profile_dir: Path) -> str:
    """Open ``url`` in headless Chromium, let its scripts run, and do ``action`` (``--dump-dom``, ``--screenshot=...``)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile_dir}", "--window-size=1280,6000", "--virtual-time-budget=20000"]
    return subprocess.run([BROWSER, *flags, action, url], capture_output=True, text=True, timeout=300, check=True).stdout


@pytest.mark.notebooks
def test_the_same_seed_gives_the_same_marked_outputs(built_book, tmp_path):
    """nbval (lax mode) runs the executed ci chapters again in an empty results folder and compares the cells
    tagged ``nbval-check-output``: the fact-lookup layers, the chosen components, the key tables."""
    staging, _ = built_book
    marked = [e for e in NBVAL_CHAPTERS if "nbval-check-output" in (staging / f"{e}.ipynb").read_text()]
    assert marked == NBVAL_CHAPTERS, "every chapter nbval runs marks the outputs it checks"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
               "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
               *[str(staging / f"{e}.ipynb") for e in NBVAL_CHAPTERS]]
    env = {**os.environ, "MECHUNLEARN_RESULTS": str(tmp_path / "results")}  # nothing to read back from the first run
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert any((tmp_path / "results" / "localizations").rglob("*.json")), "nbval's run wrote its own localizations"


@pytest.mark.notebooks
@pytest.mark.parametrize("entry", BROWSER_PAGES)
def test_figures_render_in_a_headless_browser(built_book, entry, tmp_path):
    if BROWSER is None:
        if os.environ.get("MECHUNLEARN_REQUIRE_BROWSER"):
            pytest.fail("The browser test needs Chromium (Debian package `chromium`); .ci/run installs it")
        pytest.skip("Chromium is not installed (Debian package `chromium`)")
    _, html = built_book
    page = html / f"{entry}.html"
    n_figures = page.read_text().count('class="plotly-graph-div"')
    assert n_figures > 0
    dom = headless(page.as_uri(), "--dump-dom", tmp_path / "chromium")
    # Plotly.newPlot marks a div it has drawn with `js-plotly-plot` and fills it with SVG: each
    # figure must have its SVG and drawn traces (bars are `point`s, lines `js-line`s, radar too).
    figures = dom.split('class="plotly-graph-div')[1:]
    assert len(figures) == n_figures
    assert dom.count("js-plotly-plot") == n_figures
    for figure in figures:
        assert 'class="main-svg"' in figure and ('class="point"' in figure or 'class="js-line"' in figure)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{Path(entry).name}.png"
    headless(page.as_uri(), f"--screenshot={shot}", tmp_path / "chromium")
    assert shot.stat().st_size > 100_000  # a blank 1280x6000 page compresses to a few kilobytes


@pytest.mark.notebooks
def test_results_page_has_the_verdict_table(built_book):
    _, html = built_book
    page = (html / "notebooks" / "08_results.html").read_text()
    assert "compared with" in page and re.search(r"reproduced|inconclusive", page)
