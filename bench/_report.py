"""What every benchmark prints: progress to stderr, and markdown figures for the report."""

from __future__ import annotations

import sys


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile (0 for no values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = [f"| {' | '.join(columns)} |", "|---" * len(columns) + "|"]
    return "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"
