"""Run benchmarks and rebuild docs/benchmarks.md.

    python -m bench              every benchmark
    python -m bench footprint    only those named

A benchmark is a module of this package whose name does not start with `_`;
it has a `TITLE` and a `run()` that prints progress to stderr and returns its
section of the report (markdown, without the heading). Each section is kept in
bench/results/<name>.md with the date and machine it was measured on, and
docs/benchmarks.md is rebuilt from all of them, so the sections of benchmarks
not run this time stay as they were.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil

import bench

RESULTS = Path(__file__).parent / "results"
REPORT = Path(__file__).parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Figures measured by `python -m bench [names...]` (`task bench`), which rewrites
this file: do not edit it by hand. Each section is kept in
`bench/results/<name>.md` with the date and machine it was measured on; a run
replaces only the sections of the benchmarks it ran. Benchmarks print figures;
they are not tests and pass or fail nothing but the bars they state.
"""


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name[0] != "_")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        models = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    system = f"{platform.system()} {platform.release()}"
    with contextlib.suppress(OSError):
        system = f"{platform.freedesktop_os_release()['PRETTY_NAME']}, {system}"
    logical, physical = psutil.cpu_count(), psutil.cpu_count(logical=False)
    return {
        "CPU": cpu,
        "cores": f"{logical}"
        if physical in (None, logical)
        else f"{logical} ({physical} physical)",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "OS": system,
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def stamp(host: dict[str, str]) -> str:
    """The machine in one line, for a section's heading."""
    return (
        f"{host['date']} on {host['CPU']}, {host['cores']} cores, {host['memory']}, "
        f"{host['OS']}, Python {host['Python']}"
    )


def run(name: str, host: dict[str, str]) -> None:
    module = importlib.import_module(f"bench.{name}")
    print(f"== {name} ==", file=sys.stderr, flush=True)
    body = module.run().strip()
    section = f"## {module.TITLE}\n\n_Measured {stamp(host)}._\n\n{body}\n"
    print(section, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(section)


def write_report(host: dict[str, str]) -> None:
    machine_table = "\n".join(
        ["| | |", "|---|---|", *(f"| {key} | {value} |" for key, value in host.items())]
    )
    sections = [
        (RESULTS / f"{name}.md").read_text().strip()
        for name in available()
        if (RESULTS / f"{name}.md").exists()
    ]
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        "\n\n".join([HEADER.strip(), "## Machine of the last run", machine_table, *sections]) + "\n"
    )


def main(argv: list[str]) -> int:
    known = available()
    names = argv or known
    unknown = sorted(set(names) - set(known))
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    host = machine()
    for name in names:
        run(name, host)
    write_report(host)
    print(f"wrote {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
