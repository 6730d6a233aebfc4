"""How the CLI talks to people (tables, colours) and to scripts (--json).

Names, keys, paths and log lines come from users and clusters: a node named
``[/]`` or a key ``:smile:`` must show as it is. So the consoles parse no
markup and no emoji codes in what they print; colour is asked for explicitly,
with `rich.text.Text` (``Text.assemble(("✓", "green"), " done")``).
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

# Piped output is for scripts and files: never wrap or cut it at 80 columns.
out = Console(
    highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 250
)
err = Console(stderr=True, highlight=False, markup=False, emoji=False)


def fail(message: str, hint: str = "", code: int = 1) -> NoReturn:
    """Print an error (and what to do about it) and exit.

    The message is one line whatever the terminal's width: scripts grep it.
    """
    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    if hint:
        err.print(Text.assemble(("hint:", "dim"), " ", hint), soft_wrap=True)
    sys.exit(code)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
