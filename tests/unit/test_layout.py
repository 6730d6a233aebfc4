"""Who may import whom: services and the CLI share only the library (colony.shared).

Read from the source with `ast`, every import anywhere in a module (at the top,
in a function, under a condition): a service importing another service, or the
CLI importing one, would tie their releases together and ship one inside the
other's wheel.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "colony").is_dir())
LIBRARY = "colony.shared"
EXTRAS = {"colony.cli": {"colony.console"}, "colony.console": {"colony.cli"}}
"""What a package may import beside the library: the CLI runs the console (its optional
`console` extra, imported when `colony console` runs); the console uses the CLI's wording."""


def packages() -> dict[str, Path]:
    """Every package that ships: its name and its folder."""
    found = {f"colony.{name}": ROOT / "services" / name / "colony" / name for name in SERVICES}
    found["colony.cli"] = ROOT / "cli" / "colony" / "cli"
    found["colony.console"] = ROOT / "console" / "colony" / "console"
    found[LIBRARY] = ROOT / "shared" / "colony" / "shared"
    return found


def imports(source: Path) -> list[tuple[int, str]]:
    """Every absolute module a file imports (`from colony import x` counts as colony.x)."""
    found = []
    for node in ast.walk(ast.parse(source.read_bytes(), str(source))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "colony":
                found += [(node.lineno, f"colony.{alias.name}") for alias in node.names]
    return found


def forbidden(package: str, folder: Path, root: Path = ROOT) -> list[str]:
    """Each import of another Colony package than `package` itself and the library."""
    allowed = {package, LIBRARY, *EXTRAS.get(package, ())}
    wrong = []
    for source in sorted(folder.rglob("*.py")):
        for line, module in imports(source):
            parts = module.split(".")
            if parts[0] == "colony" and len(parts) > 1 and ".".join(parts[:2]) not in allowed:
                wrong.append(f"{source.relative_to(root)}:{line} imports {module}")
    return wrong


def test_every_service_is_checked():
    assert {"bootstrapper", "consensus", "membership", "monitor"} <= set(SERVICES)


@pytest.mark.parametrize("package", sorted(packages()))
def test_a_package_imports_only_itself_and_the_library(package):
    assert forbidden(package, packages()[package]) == []


def test_the_check_sees_every_kind_of_import(tmp_path):
    (tmp_path / "m.py").write_text(
        "import colony.monitor.service\n"
        "from colony import consensus\n"
        "from colony.shared import bus\n"
        "from . import sibling\n"
        "def f():\n"
        "    from colony.harness.processes import wait_for\n"
    )
    assert forbidden("colony.cli", tmp_path, root=tmp_path) == [
        "m.py:1 imports colony.monitor.service",
        "m.py:2 imports colony.consensus",
        "m.py:6 imports colony.harness.processes",
    ]


def test_test_modules_have_unique_names():
    """pytest imports test modules by their base name (the folders are not packages): two
    with one name break collection of the whole suite."""
    seen: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
