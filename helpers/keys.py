"""What a cached result depends on, for cache and record keys: the model, its dtype, the prompts and the code.

:func:`code_version` hashes the helpers package's code with docstrings and comments removed,
so a prose edit keeps every cached score and record while a code change recomputes them.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from helpers.models import LoadedModel
from helpers.tasks import EditTask

SPLITS = ("forget_train", "forget_eval", "maintain_train", "maintain_eval")

PACKAGE = Path(__file__).resolve().parent


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with the docstring of the module and of every class and function removed."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@cache
def code_version(package: Path = PACKAGE) -> str:
    """A short hash of the code of ``package``'s ``*.py`` files, docstrings and comments excluded."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        code = ast.unparse(_without_docstrings(ast.parse(path.read_text(encoding="utf-8"))))
        digest.update(f"{path.name}\n{code}\n".encode())
    return digest.hexdigest()[:16]


def model_key(model: LoadedModel) -> dict[str, str]:
    """The model's name and dtype and the code version: part of every cache and record key."""
    return {"model": model.name, "dtype": str(model.hf_model.dtype), "code": code_version()}


def prompts_digest(task: EditTask) -> str:
    """A short hash of every prompt of a task's four splits (its fingerprint holds facts, not prompt wording)."""
    prompts = [p for split in SPLITS for p in getattr(task, split).prompt]
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
