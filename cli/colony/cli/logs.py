"""`colony logs`: the last lines of a cluster's process logs, optionally followed; or
the output of one instance of a job, read over NATS from the node that runs it.

Services log JSON lines; for people they are shown as
``time level message key=value``, prefixed by node and process. `--raw`
prints them untouched. An instance's output is shown as it wrote it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import msgspec
from rich.text import Text

from colony.cli import records
from colony.cli.capacity import memory_size
from colony.cli.kv import management
from colony.cli.output import err, fail, out
from colony.shared import subjects
from colony.shared.bus import BusError, NoResponders
from colony.shared.management import Management, ManagementError
from colony.shared.messages import InstanceRecord, LogsReply, LogsRequest, to_builtins
from colony.shared.statedir import StateDir

LEVEL_STYLE = {"warning": "yellow", "error": "red", "critical": "bold red", "debug": "dim"}
SKIPPED = {"ts", "level", "msg", "logger", "service", "node"}


FOLLOW_EVERY = 0.25
"""Seconds between two reads of a followed instance's output."""
STILL_THERE_EVERY = 1.0
"""Seconds between two checks that a followed instance still exists."""
MAX_TAIL = 512 * 1024
"""Bytes one read of an instance's output returns at most (LogsRequest.max_bytes)."""


def tail_bytes(text: str) -> int:
    """Bytes from '4096', '64KiB' or '512K': how much of an instance's output to show."""
    try:
        size = memory_size(text)
    except argparse.ArgumentTypeError:
        size = 0
    if not 1 <= size <= MAX_TAIL:
        raise argparse.ArgumentTypeError(
            f"must be a number of bytes from 1 to {MAX_TAIL} (512KiB), like 4096 or 64KiB, "
            f"not {text!r}"
        )
    return size


def cmd_logs(args: argparse.Namespace) -> int:
    if is_instance(args):
        try:
            asyncio.run(_instance_logs(args))
        except ManagementError as e:
            fail(str(e), "is a majority of the voters up? see `colony status`")
        return 0
    if args.stderr or args.tail is not None or args.json:
        fail("--stderr, --tail and --json are for an instance's output (colony logs INSTANCE)")
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


# --- an instance's output, over NATS -----------------------------------------------


def is_instance(args: argparse.Namespace) -> bool:
    """Whether `colony logs X` names an instance: with --server, always; else when X is
    neither a node of the state dir nor a process that has logs there."""
    if args.server:
        if not args.node or args.service:
            fail("with --server, name one instance: colony logs INSTANCE --server URL")
        return True
    if not args.node or args.service is not None:
        return False
    state = StateDir(args.state_dir)
    nodes = state.nodes()
    return state.find(args.node) is None and not any(n.log(args.node).exists() for n in nodes)


async def _instance_logs(args: argparse.Namespace) -> None:
    async with management(args, "colony-logs") as client:
        instance = await _instance(client, args.node)
        if instance is None:
            fail(f"no instance {args.node!r} (and no node or process of that name)",
                 "see a job's instances with `colony job status JOB`")  # fmt: skip
        stream = "stderr" if args.stderr else "stdout"
        request = LogsRequest(instance=instance.id, stream=stream, max_bytes=args.tail or 65536)
        checked = time.monotonic()
        while True:
            reply = await _read(client, instance, request, args.timeout)
            if args.json:
                print(json.dumps(to_builtins(reply)), flush=True)
            else:
                sys.stdout.write(reply.data)
                sys.stdout.flush()
            if not args.follow:
                return
            full = reply.next - reply.offset >= request.max_bytes
            request = msgspec.structs.replace(request, offset=reply.next, max_bytes=MAX_TAIL)
            if full:
                continue  # more is waiting: read it now
            await asyncio.sleep(FOLLOW_EVERY)
            if time.monotonic() - checked >= STILL_THERE_EVERY:
                checked = time.monotonic()
                now = await _instance(client, instance.id)
                if now is None or now.node != instance.node:
                    err.print(f"{instance.id} is gone from {instance.node}")
                    return


async def _instance(client: Management, id: str) -> InstanceRecord | None:
    found = await records.one_of(client, records.INSTANCES, id, stale=True)
    return msgspec.convert(found.value, InstanceRecord) if found else None


async def _read(
    client: Management, instance: InstanceRecord, request: LogsRequest, timeout: float
) -> LogsReply:
    try:
        return await client.bus.request(
            subjects.agent_logs(instance.node), request, timeout=timeout
        )
    except NoResponders:
        fail(f"node {instance.node}, which runs {instance.id}, does not answer: no agent "
             "listens there", "is the node up? see `colony status`")  # fmt: skip
    except BusError as e:
        fail(f"node {instance.node}, which runs {instance.id}, did not answer: {e}",
             "is the node up? see `colony status`")  # fmt: skip
