"""The module lists in the library's and the harness's `__init__` name exactly the
modules there are: a module added, renamed or removed without its line fails here."""

import re
from pathlib import Path

import pytest

import colony.harness
import colony.shared

LISTED = re.compile(r"^- `(\w+)`:", re.MULTILINE)


@pytest.mark.parametrize("package", [colony.shared, colony.harness], ids=lambda p: p.__name__)
def test_the_package_docstring_lists_every_module_once(package):
    listed = LISTED.findall(package.__doc__ or "")
    folder = Path(package.__path__[0])
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    assert sorted(listed) == sorted(set(listed)), f"listed twice in {package.__name__}: {listed}"
    assert set(listed) == modules, f"{package.__name__}'s docstring lists {sorted(listed)}"
