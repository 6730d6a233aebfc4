"""Table cells and short texts: every value a cluster or a user named goes in as plain
`Text` (never markup: a job named ``[b]`` shows as it is), colours asked for explicitly.

Colours are the terminal's named ones (green, red...): Textual maps them through the
theme's ANSI palette, so they read on dark and light themes alike.
"""

from __future__ import annotations

import time

from rich.text import Text

from colony.cli.output import human_age

STATUS_STYLE = {
    "alive": "green",
    "suspect": "yellow",
    "dead": "bold red",
    "left": "dim",
    "unknown": "dim",
}
STATE_STYLE = {
    "running": "green",
    "starting": "cyan",
    "pending": "cyan",
    "exited": "yellow",
    "failed": "bold red",
    "lost": "bold red",
    "stopped": "dim",
}
HEALTH_STYLE = {"healthy": "green", "unhealthy": "bold red"}
CONNECTION_STYLE = {
    "connected": ("●", "green"),
    "connecting": ("◌", "yellow"),
    "reconnecting": ("◌", "yellow"),
    "disconnected": ("✕", "bold red"),
}
SPARKS = "▁▂▃▄▅▆▇█"


def cell(value: object, style: str = "") -> Text:
    """A plain cell: `value` as text, no markup read."""
    return Text(str(value), style=style, no_wrap=True, overflow="ellipsis")


def number(value: int, style: str = "") -> Text:
    return Text(str(value), style=style, justify="right")


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def node_status(status: str, drain: str = "", eligible: bool = True) -> Text:
    """'alive', 'alive drained', 'suspect'... coloured by how worried to be."""
    text = Text(status, style=STATUS_STYLE.get(status, ""))
    if drain:
        text.append(" " + drain, style="magenta")
    elif not eligible:
        text.append(" ineligible", style="magenta")
    return text


def roles(names: list[str]) -> Text:
    text = Text()
    for role in names:
        if text:
            text.append(" ")
        text.append(role, style="bold" if role in ("leader",) or role.startswith("manager") else "")
    return text


def state(value: str, desired: str = "run") -> Text:
    text = Text(value, style=STATE_STYLE.get(value, ""))
    if desired == "stop" and value not in ("exited", "failed", "lost", "stopped"):
        text.append(" (stopping)", style="dim")
    return text


def health(value: str) -> Text:
    return Text(value or "—", style=HEALTH_STYLE.get(value, "dim"))


def short_bytes(n: float) -> str:
    """512M, 1.5G: a table cell's width, not a report's precision."""
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if abs(n) >= 10 or unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def short_cores(n: float) -> str:
    return f"{n:.0f}" if n == int(n) and n >= 10 else f"{n:.1f}" if n >= 1 else f"{n:.2f}"


def usage(reserved: float, used: float, capacity: float, fmt=short_cores) -> Text:
    """'0.50/0.12/4.0': reserved (by placed instances) / used (measured) / capacity;
    reserved turns yellow past 80% of capacity and red when over it."""
    style = ""
    if capacity and reserved > capacity:
        style = "bold red"
    elif capacity and reserved > 0.8 * capacity:
        style = "yellow"
    return Text.assemble(
        (fmt(reserved), style), ("/", "dim"), fmt(used), ("/", "dim"), (fmt(capacity), "dim")
    )


def spark(values: list[float], width: int, top: float = 0.0) -> Text:
    """The last `width` values as block characters, scaled to `top` (0: to their max)."""
    values = values[-width:]
    if not values:
        return Text("", no_wrap=True)
    top = top or max(values) or 1.0
    marks = "".join(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1)))] for v in values)
    return Text(marks.rjust(width), style="cyan", no_wrap=True)


def bar(fraction: float, width: int) -> Text:
    """A text progress bar: '━━━━━╸━━━' (done, then to do)."""
    fraction = min(1.0, max(0.0, fraction))
    done = round(fraction * width)
    style = "green" if fraction >= 1 else "yellow"
    return Text.assemble(("━" * done, style), ("━" * (width - done), "dim"))


def age(since: float, now: float) -> str:
    return human_age(now - since) if since else "—"


def clock_time(ts: float) -> str:
    """The time of day of `ts` (local time; '' for 0, changes recorded before ts)."""
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else ""
