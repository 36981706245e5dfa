"""One check for every notebook parameter, whether it comes from a profile, papermill or the API.

Each notebook's cell right after its ``parameters`` cell calls :func:`check_parameters`
(papermill inserts its values after the parameters cell, so the check sees them): a name the
notebook does not declare (a misspelled ``papermill -p``) and a value out of range stop the
run. :func:`check_profile` does the same for a profile YAML before ``make book`` runs anything,
and the public API checks its arguments through :func:`check_value`, so the three give the
same message for the same value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FunctionType, ModuleType

from helpers.choices import ATTACKS, DTYPE_NAMES, PRECISION_CHOICES, TASKS
from helpers.prompts import SPORTS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: object) -> bool:
    return _integer(value) and value >= 1


def _non_negative_int(value: object) -> bool:
    return _integer(value) and value >= 0


def _unit_interval(value: object) -> bool:
    return _number(value) and 0 < value < 1


def _positive(value: object) -> bool:
    return _number(value) and value > 0


def _non_negative(value: object) -> bool:
    return _number(value) and value >= 0


def _choice(*allowed: str) -> Callable[[object], bool]:
    return lambda value: value in allowed


def _optional(test: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or test(value)


def _list_of(test: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and bool(value) and all(map(test, value))


def _name(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


POSITIVE_INT = (_positive_int, "be an integer >= 1")
RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "model_name": (_name, "be a non-empty model name or folder"),
    "device": (lambda v: isinstance(v, str) and bool(_DEVICE.match(v)), "be 'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps'"),
    "dtype": (_choice(*DTYPE_NAMES), f"be one of {sorted(DTYPE_NAMES)}"),
    "threshold": (_unit_interval, "lie in (0, 1)"),
    "test_fraction": (_unit_interval, "lie in (0, 1)"),
    "rise_fraction": (_unit_interval, "lie in (0, 1)"),
    "seed": (_non_negative_int, "be an integer >= 0"),
    "margin": (_non_negative, "be a number >= 0"),
    "min_p_new": (_unit_interval, "lie in (0, 1)"),
    "max_p_true": (_unit_interval, "lie in (0, 1)"),
    "min_gain": (_non_negative, "be a number >= 0"),
    "mlp_threshold": (_non_negative, "be a number >= 0"),
    "noise_scale": (_positive, "be a number > 0"),
    "relearn_learning_rate": (_positive, "be a number > 0"),
    "soft_prompt_learning_rate": (_positive, "be a number > 0"),
    "soft_prompt_vectors": (_non_negative_int, "be an integer >= 0 (0: no soft-prompt attack)"),
    "n_athletes_per_sport": (_optional(_non_negative_int), "be None or an integer >= 0 (None or 0: all)"),
    "sport_edit_athletes": (_optional(_positive_int), "be None (all) or an integer >= 1"),
    "mmlu_limit": (_optional(_positive_int), "be None (no MMLU) or an integer >= 1"),
    "athlete_seeds": (_list_of(_non_negative_int), "be a non-empty list of integers >= 0"),
    "other_seeds": (_list_of(_non_negative_int), "be a non-empty list of integers >= 0"),
    "sweep_learning_rates": (_list_of(_positive), "be a non-empty list of numbers > 0"),
    "sweep_forget_weights": (_list_of(_positive), "be a non-empty list of numbers > 0"),
    "tasks": (_list_of(_choice(*TASKS)), f"be a non-empty list drawn from {list(TASKS)}"),
    "localizations": (_list_of(_name), "be a non-empty list of localization names"),
    "example_localizations": (_list_of(_name), "be a non-empty list of localization names"),
    "edited_sport": (_choice(*SPORTS), f"be one of {list(SPORTS)}"),
    "relearn_attack": (_choice(*ATTACKS), f"be one of {list(ATTACKS)}"),
    "relearn_attacks": (lambda v: v == [] or _list_of(_choice(*ATTACKS))(v), f"be a list drawn from {list(ATTACKS)}"),
    "latent_probes": (lambda v: isinstance(v, bool), "be true or false"),
    **{name: (lambda v: v == [] or _list_of(_choice(*TASKS))(v), f"be a list drawn from {list(TASKS)}")
       for name in ("strength_curve_tasks", "attack_tasks")},
    "strength_bin_edges": (lambda v: _list_of(lambda e: _number(e) and 0 <= e <= 1)(v) and len(v) >= 2
                           and all(a < b for a, b in zip(v, v[1:])), "be at least two increasing numbers in [0, 1]"),
    "n_candidates": (_optional(_non_negative_int), "be None or an integer >= 0 (None or 0: all)"),
    **{name: (_choice(*PRECISION_CHOICES), f"be one of {list(PRECISION_CHOICES)}")
       for name in ("precision", "eval_precision", "tracing_precision")},
    **{name: POSITIVE_INT for name in (
        "batch_size", "n_format_facts", "n_orders", "n_probe_seeds", "patience", "n_prompts", "n_corruption_seeds",
        "top_k_heads", "n_check", "n_facts", "n_maintain", "steps", "check_every", "facts_per_step", "retain_batch_size",
        "quiz_size", "max_general_tokens", "relearn_steps", "relearn_eval_every", "lora_rank",
        "relearn_facts_per_step", "soft_prompt_steps",
    )},
}


def check_value(name: str, value: object) -> None:
    """Raise ``ValueError("<name> must <rule>, got <value>")`` when a known parameter is out of range."""
    test, rule = RULES.get(name, (lambda _: True, ""))
    if not test(value):
        raise ValueError(f"{name} must {rule}, got {value!r}")


def nearest(name: str, valid: Iterable[str]) -> str:
    """``"did you mean 'x'?"`` for the closest valid name, else the list of valid names."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    return f"did you mean {close[0]!r}?" if close else f"valid names: {valid}"


def unknown_name_error(where: str, kind: str, name: str, valid: Iterable[str]) -> ValueError:
    """``<where>: unknown <kind> '<name>' (did you mean '<nearest>'?)``."""
    return ValueError(f"{where}: unknown {kind} {name!r} ({nearest(name, valid)})")


def notebook_path(notebook: str | Path) -> Path:
    """A notebook's file: a path as given, or a bare name (``04_localized_editing``) in ``notebooks/``."""
    path = Path(notebook)
    return path if path.suffix == ".ipynb" else NOTEBOOKS / f"{path.name}.ipynb"


def declared_parameters(notebook: str | Path) -> set[str]:
    """The names the notebook's ``parameters`` cell assigns."""
    import papermill  # here, not at the top: the data loaders use this module where papermill is absent (GPU check)

    return set(papermill.inspect_notebook(str(notebook_path(notebook))))


def notebook_defaults(notebook: str | Path) -> dict[str, object]:
    """The values the notebook's ``parameters`` cell assigns (what a reader who presses "run all" gets)."""
    import ast

    import papermill

    return {name: ast.literal_eval(spec["default"]) for name, spec in papermill.inspect_notebook(str(notebook_path(notebook))).items()}


def check_values(where: str, values: Mapping[str, object]) -> None:
    """:func:`check_value` for each value, the message prefixed with where the values came from."""
    for name, value in values.items():
        try:
            check_value(name, value)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


def _user_variables(namespace: Mapping[str, object]) -> dict[str, object]:
    """The namespace's data: no private names, modules, functions or IPython's own variables."""
    from IPython import get_ipython

    hidden = getattr(get_ipython(), "user_ns_hidden", {})
    return {
        name: value for name, value in namespace.items()
        if not name.startswith("_") and name not in hidden and not isinstance(value, (ModuleType, FunctionType, type))
    }


def check_parameters(namespace: Mapping[str, object], notebook: str | Path) -> None:
    """Refuse a variable the notebook does not declare (a misspelled papermill ``-p``) and out-of-range values.

    Call it with ``globals()`` in the cell right after the ``parameters`` cell, before anything
    else is defined.
    """
    path = notebook_path(notebook)
    declared = declared_parameters(path)
    given = _user_variables(namespace)
    if "notebooks" in given and "notebooks" not in declared:
        raise ValueError(
            f"Notebook {path.name} got a profile's 'notebooks' section as a parameter: a profile is not a papermill "
            f"parameter file. Resolve this notebook's values first: python -m helpers.book --profile <name> "
            f"--notebook {path.stem} --print-parameters > parameters.yaml, then papermill -f parameters.yaml"
        )
    for name in given:
        if name not in declared:
            raise unknown_name_error(f"Notebook {path.name}", "parameter", name, declared)
    check_values(f"Notebook {path.name}", {name: given[name] for name in declared if name in given})


def check_profile(profile: Mapping, source: Path, declared: Mapping[str, set[str]]) -> None:
    """Refuse a profile key no notebook declares, an unknown notebook name, a key a notebook does not
    declare under its ``notebooks:`` entry, and out-of-range values; ``declared``: notebook name -> parameters."""
    everywhere = set().union(*declared.values())
    for key in profile:
        if key != "notebooks" and key not in everywhere:
            raise unknown_name_error(f"Profile {source}", "key", key, everywhere)
    check_values(f"Profile {source}", {k: v for k, v in profile.items() if k != "notebooks"})
    sections = profile.get("notebooks") or {}
    if not isinstance(sections, Mapping):
        raise ValueError(f"Profile {source}: 'notebooks' must map notebook names to parameters")
    for notebook, values in sections.items():
        if notebook not in declared:
            raise unknown_name_error(f"Profile {source}, section notebooks", "notebook", notebook, declared)
        where = f"Profile {source}, notebook {notebook}"
        for key in values or {}:
            if key not in declared[notebook]:
                raise unknown_name_error(where, "key", key, declared[notebook])
        check_values(where, values or {})
