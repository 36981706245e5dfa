"""Where the project keeps derived files: a cache (model copy, scores) and the results folder."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

CACHE_ENV = "MECHUNLEARN_CACHE"
RESULTS_ENV = "MECHUNLEARN_RESULTS"


def cache_root() -> Path:
    """Where the cache lives (``$MECHUNLEARN_CACHE`` or ``~/.cache/mechunlearn``), not created."""
    return Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechunlearn")


def cache_dir(*parts: str) -> Path:
    """A folder of the cache, created on demand."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_root(start: Path | None = None) -> Path:
    """The book's folder (the first of ``start`` and its parents with a ``_toc.yml``), else ``start`` (default: cwd).

    A notebook opened in Jupyter runs in ``notebooks/``; ``make book`` runs in the project's folder:
    both find the same results folder.
    """
    start = (start or Path.cwd()).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / "_toc.yml").is_file()), start)


def results_dir(*parts: str) -> Path:
    """The results folder (``$MECHUNLEARN_RESULTS``, else ``results/`` in :func:`project_root`; outside git), created on demand."""
    path = Path(os.environ.get(RESULTS_ENV) or project_root() / "results").joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    """A file-system-safe version of a model name or Hugging Face id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, renamed into place.

    A reader sees the old file or the new one, never half of one: a crash or two writers at once
    cannot leave a truncated file that is later read as valid.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: object) -> Path:
    """:func:`write_atomic` of ``data`` as indented JSON."""
    return write_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
