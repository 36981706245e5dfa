"""The package docstring is its map: it names every module."""

from pathlib import Path

import helpers


def test_the_package_docstring_names_every_module():
    modules = {p.stem for p in Path(helpers.__file__).parent.glob("*.py") if p.stem != "__init__"}
    missing = sorted(m for m in modules if f":mod:`helpers.{m}`" not in helpers.__doc__)
    assert not missing, f"helpers/__init__.py does not name {missing}"
