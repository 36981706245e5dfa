"""Where the project keeps derived files: a cache (model copy, scores) and the results folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

CACHE_ENV = "MECHUNLEARN_CACHE"
RESULTS_ENV = "MECHUNLEARN_RESULTS"


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$MECHUNLEARN_CACHE`` or ``~/.cache/mechunlearn``), created on demand."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mechunlearn"
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(*parts: str) -> Path:
    """The results folder (``$MECHUNLEARN_RESULTS`` or ``./results``, outside git), created on demand."""
    path = Path(os.environ.get(RESULTS_ENV) or Path.cwd() / "results").joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    """A file-system-safe version of a model name or Hugging Face id."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")
