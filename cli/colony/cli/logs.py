"""`colony logs`: the last lines of a cluster's process logs, optionally followed.

Services log JSON lines; for people they are shown as
``time level message key=value``, prefixed by node and process. `--raw`
prints them untouched.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.text import Text

from colony.cli.output import fail, out
from colony.shared.statedir import StateDir

LEVEL_STYLE = {"warning": "yellow", "error": "red", "critical": "bold red", "debug": "dim"}
SKIPPED = {"ts", "level", "msg", "logger", "service", "node"}


def cmd_logs(args: argparse.Namespace) -> int:
    files = select(StateDir(args.state_dir), args.node, args.service)
    width = max(len(label) for label, _ in files)
    offsets = {}
    for label, path in files:
        for line in last_lines(path, args.lines):
            show(label, width, line, args.raw)
        offsets[path] = path.stat().st_size
    while args.follow:
        for label, path in files:
            offsets[path] = follow(label, width, path, offsets[path], args.raw)
        time.sleep(0.2)
    return 0


def select(state: StateDir, node: str | None, service: str | None) -> list[tuple[str, Path]]:
    """(label, file) of every log matching the node and service asked for."""
    nodes = state.nodes()
    if not nodes:
        fail(f"no cluster in {state.path}/", "start one with `colony up`")
    if node is not None and state.find(node) is None:
        if service is None and any(n.log(node).exists() for n in nodes):
            node, service = None, node  # `colony logs monitor`: a service on every node
        else:
            known = ", ".join(n.name for n in nodes)
            fail(f"no node {node!r} in {state.path}/ (its nodes: {known})")
    chosen = [state.find(node)] if node else nodes
    files = [
        (f"{n.name} {path.stem}", path)
        for n in chosen
        if n is not None
        for path in sorted(n.logs.glob("*.log"))
        if service is None or path.stem == service
    ]
    if not files:
        there = sorted({p.stem for n in nodes for p in n.logs.glob("*.log")})
        if service and there:
            fail(f"no {service!r} logs in {state.path}/", f"processes: {', '.join(there)}")
        fail(f"no logs yet in {state.path}/", "has the cluster been started? (colony up)")
    return files


def last_lines(path: Path, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines of a file, read from its end (logs can be large)."""
    if count == 0:
        return []
    with open(path, "rb") as f:
        end = f.seek(0, 2)
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= count:
            start = max(0, start - block)
            f.seek(start)
            data = f.read(end - start)
    return data.decode(errors="replace").splitlines()[-count:]


def follow(label: str, width: int, path: Path, offset: int, raw: bool) -> int:
    """Print what was appended to `path` since `offset`; return the new offset."""
    size = path.stat().st_size if path.exists() else 0
    if size < offset:
        offset = 0  # the file was truncated or replaced
    if size == offset:
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # leave a half-written line for next time
    for line in complete.decode(errors="replace").splitlines():
        show(label, width, line, raw)
    return offset + len(complete)


def show(label: str, width: int, line: str, raw: bool) -> None:
    out.print(Text.assemble((label.ljust(width), "cyan"), " | ", render(line, raw)))


def render(line: str, raw: bool = False) -> Text:
    """A JSON log line made readable; anything else as it is (never parsed as markup)."""
    if raw or not line.startswith("{"):
        return Text(line)
    try:
        entry = json.loads(line)
    except ValueError:
        return Text(line)
    level = str(entry.get("level", ""))
    text = Text(
        f"{str(entry.get('ts', ''))[11:23]} {level.upper():<7} {entry.get('msg', '')}",
        LEVEL_STYLE.get(level, ""),
    )
    extras = " ".join(f"{k}={v}" for k, v in entry.items() if k not in SKIPPED)
    if extras:
        text.append(" ")
        text.append(extras, "dim")
    return text
