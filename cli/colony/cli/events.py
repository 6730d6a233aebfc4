"""`colony events`: the management database's change stream, replayed then followed.

One line per change: INDEX TIME KIND ID VERSION SUMMARY, the summary in words made
from the change's detail (the object's record after the change) and, when this run
saw the object before, from what changed since (`job web v2 scaled to 6`). Nodes
are named as people know them: their names are read once at the start, then learnt
from node changes. The changes' signatures are checked with the cluster secret of
the state dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from colony.cli import records
from colony.cli.args import add_management_options
from colony.cli.kv import management
from colony.cli.output import err, fail, human_bytes, out
from colony.shared import changes, subjects
from colony.shared.bus import Bus, BusError, NotFound
from colony.shared.management import ManagementError
from colony.shared.messages import Change, to_builtins
from colony.shared.signing import read_secret
from colony.shared.statedir import StateDir

EXAMPLES = """examples:
  colony events                      every change the stream keeps, then stop
  colony events -f                   ... then follow new ones (Ctrl-C stops)
  colony events -f --kind instance   only instances: placed, starting, running, exited
  colony events --since 1200         the changes after index 1200
  colony events --kind job --json    one JSON object per line, for scripts"""

SECRET_FILE = "cluster.secret"
"""The cluster secret's file in a state dir (`colony up` writes it)."""
QUIET = 3.0
"""Without -f: seconds with nothing new after which the replay is over (a last change
dropped as a forgery never comes)."""
SUMMARY_MAX = 160
NAMES_WAIT = 2.0
"""Seconds the voters may take to say the nodes' names (the change stream needs none of
them: without an answer, names come from the node changes read)."""


def add_parser(verb) -> None:
    events = verb("events", "Show the change stream: jobs, instances, nodes, leases...")
    events.epilog = EXAMPLES
    events.add_argument("-f", "--follow", action="store_true", help="keep printing new changes")
    events.add_argument(
        "--kind",
        action="append",
        type=_kind,
        help="only changes of this kind: job, instance, node, label, lease, leader, voter, "
        "kv... (repeatable)",
    )
    events.add_argument(
        "--since",
        type=_index,
        default=0,
        metavar="N",
        help="only the changes after index N (default: every change the stream keeps)",
    )
    add_management_options(events, timeout_help="seconds to wait for a server", state_dir=False)
    events.set_defaults(func=cmd_events)


def _kind(text: str) -> str:
    try:
        return subjects.token(text, "kind")
    except subjects.SubjectError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a change index (0 or more), not {text!r}")
    return value


# --- summaries (pure) ------------------------------------------------------------


def _ports(ports: dict[str, int]) -> str:
    return ", ".join(f"{name}={port}" for name, port in ports.items())


def instance_summary(d: dict[str, Any], before: dict[str, Any] | None) -> str:
    what, node, state = f"instance {d.get('id')}", d.get("node", "?"), d.get("state")
    reason = d.get("reason") or ""
    if d.get("desired") == "stop" and (before is None or before.get("desired") != "stop"):
        why = d.get("desired_reason") or "stopped"
        return f"{what} on {node} to stop: {why}"
    if state == "pending" and d.get("desired") == "run":
        ports = f", {_ports(d['ports'])}" if d.get("ports") else ""
        canary = ", canary" if d.get("canary") else ""
        why = f": {d['desired_reason']}" if d.get("desired_reason") else ""
        slot = f"slot {d.get('slot')}, v{d.get('version')}{canary}{ports}"
        return f"{what} placed on {node} ({slot}){why}"
    if d.get("health") and (before is None or before.get("health") != d.get("health")):
        return f"{what} on {node} {health_said(d)}"
    restarts = f", restart {d['restarts']}" if d.get("restarts") else ""
    if state == "running":
        return f"{what} running on {node} (pid {d.get('pid')}{restarts})"
    if state == "exited":
        code = d.get("exit_code")
        why = f": {reason}" if reason else ""
        return f"{what} exited on {node} (code {code}{restarts}){why}"
    return f"{what} {state} on {node}" + (f": {reason}" if reason else "")


def health_said(d: dict[str, Any]) -> str:
    """'healthy', or 'unhealthy (http): 503 Service Unavailable'."""
    if d.get("health") != "unhealthy":
        return str(d.get("health"))
    check = f" ({d['health_check']})" if d.get("health_check") else ""
    output = f": {d['health_output']}" if d.get("health_output") else ""
    return f"unhealthy{check}{output}"


def rollout_said(now: dict[str, Any], before: dict[str, Any]) -> str:
    """What changed in a job's rollout record ('' : nothing said)."""
    if now.get("status") != before.get("status"):
        why = f": {now['reason']}" if now.get("reason") else ""
        return f"rollout {now.get('status')}{why}"
    if now.get("promoted") and not before.get("promoted"):
        return "canaries promoted"
    if now.get("batch") != before.get("batch"):
        return f"rollout batch {now.get('batch')} started"
    if (now.get("placed"), now.get("healthy")) != (before.get("placed"), before.get("healthy")):
        return f"rollout: {now.get('placed')} placed, {now.get('healthy')} healthy"
    return ""


def job_summary(d: dict[str, Any], before: dict[str, Any] | None) -> str:
    what = f"job {d.get('name')} v{d.get('version')}"
    replicas = d.get("replicas")
    if before is None:
        if d.get("status") == "stopped":
            return f"{what} stopped"
        if d.get("version") == 1 and not d.get("blocked"):
            return f"{what}: running, {replicas} replicas"
        return f"{what}: {d.get('status')}, {replicas} replicas" + (
            f"; blocked: {d['blocked']}" if d.get("blocked") else ""
        )
    if before.get("version") != d.get("version"):
        return f"{what} submitted ({d.get('cause') or 'changed spec'}, {replicas} replicas)"
    if before.get("status") != d.get("status"):
        if d.get("status") == "stopped":
            return f"{what} stopped" + (" (purge)" if d.get("purge") else "")
        return f"{what} running again ({replicas} replicas)"
    if before.get("replicas") != replicas:
        return f"{what} scaled to {replicas}"
    if before.get("blocked") != d.get("blocked"):
        return f"{what} blocked: {d['blocked']}" if d.get("blocked") else f"{what} unblocked"
    rollout = d.get("rollout") or {}
    said = rollout_said(rollout, before.get("rollout") or {}) if rollout else ""
    if said:
        return f"{what} {said}"
    return f"{what} changed"


def node_summary(d: dict[str, Any], before: dict[str, Any] | None) -> str:
    what = f"node {d.get('name') or d.get('node')}"
    reason = f": {d['reason']}" if d.get("reason") else ""
    if before is not None and before.get("status") != d.get("status"):
        return f"{what} {before.get('status')} -> {d.get('status')}{reason}"
    if before is not None and before.get("drain", "") != d.get("drain", ""):
        return f"{what} {drain_said(d)}"
    if before is not None and before.get("eligible") != d.get("eligible"):
        return f"{what} {'eligible' if d.get('eligible') else 'not eligible'}{reason}"
    drivers = ", ".join(d.get("drivers") or []) or "no drivers"
    return (
        f"{what} registered: {d.get('cpu', 0):g} cpu, {human_bytes(d.get('memory', 0))}, "
        f"{drivers}, ports {d.get('port_lo')}-{d.get('port_hi')} at {d.get('address') or '?'} "
        f"({d.get('status')})"
    )


def drain_said(d: dict[str, Any]) -> str:
    """'draining until 14:02:11: alice@box: colony node drain node-2', 'drained (empty)'."""
    drain = d.get("drain")
    if drain == "drained":
        return "drained (empty)"
    if drain != "draining":
        return "undrained (eligible again)"
    deadline = d.get("drain_deadline") or 0
    until = f" until {time.strftime('%H:%M:%S', time.localtime(deadline))}" if deadline else ""
    why = f": {d['drain_reason']}" if d.get("drain_reason") else ""
    return f"draining{until}{why}"


def generic_summary(d: dict[str, Any]) -> str:
    """key=value of every field that says something."""
    return " ".join(f"{k}={v}" for k, v in d.items() if v not in ("", None, [], {}))


SUMMARIES = {"instance": instance_summary, "job": job_summary, "node": node_summary}


class Summaries:
    """Summaries of changes in index order: remembers each object's last detail, to say
    what changed (scaled, stopped, alive -> dead) rather than only where it is now, and
    the names of the nodes seen, to name an instance's node as people know it."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.last: dict[tuple[str, str], dict[str, Any]] = {}
        self.names: dict[str, str] = dict(names or {})
        """Node id -> name: those read at the start, then those of the node changes."""

    def __call__(self, change: Change) -> str:
        key, d = (change.kind, change.id), change.detail
        before = self.last.get(key)
        if change.kind == "node" and d.get("name"):
            self.names[change.id] = d["name"]
        if change.kind == "instance" and "node" in d:
            d = {**d, "node": self.names.get(d["node"], d["node"])}
        if change.version == 0:
            self.last.pop(key, None)
            if change.kind == "instance":  # its detail is its last record, reason and all
                text = f"instance {change.id} removed from {d.get('node', '?')}"
            else:
                why = f": {d['reason']}" if d.get("reason") else ""
                text = f"{change.kind} {change.id} removed{why}"
        elif change.kind in SUMMARIES:
            self.last[key] = d
            text = SUMMARIES[change.kind](d, before)
        elif change.kind == "label":
            labels = d.get("labels") or {}
            shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
            text = f"labels of {change.id}: {shown}"
        else:
            text = generic_summary(d)
        return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def line(change: Change, summary: str) -> str:
    """INDEX TIME KIND ID VERSION SUMMARY (the time in this machine's time zone)."""
    when = time.strftime("%H:%M:%S", time.localtime(change.ts)) if change.ts else "-"
    kind, id = f"{change.kind:<8}", f"{change.id:<24}"
    return f"{change.index:>7} {when} {kind} {id} {change.version:>4} {summary}"


# --- the verb --------------------------------------------------------------------


def cluster_secret(state: StateDir) -> bytes | None:
    """The cluster secret the state dir keeps (None: it keeps none). Raises ValueError if
    its file is not a secret."""
    path = state.path / SECRET_FILE
    return read_secret(path) if path.exists() else None


def cmd_events(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    try:
        secret = cluster_secret(state)
    except ValueError as e:
        fail(str(e))
    if secret is None and args.server:
        err.print(
            f"warning: changes are not verified: no cluster secret in {state.path}/ "
            "(a forged change would show as a real one)"
        )
    asyncio.run(_events(args, secret))
    return 0


def followed_kinds(asked: Iterable[str] | None) -> set[str]:
    """The kinds to follow to show `asked` (none: every kind): node changes too with
    instances, to name their nodes."""
    kinds = set(asked or ())
    return kinds | {"node"} if "instance" in kinds else kinds


async def _events(args: argparse.Namespace, secret: bytes | None) -> None:
    kinds = set(args.kind or ())
    async with management(args, "colony-events") as client:
        try:
            async with asyncio.timeout(NAMES_WAIT):
                nodes = await records.nodes(client, stale=True)
            names = {n.node: n.name for n in nodes if n.name}
        except (ManagementError, TimeoutError):
            names = {}  # no voter answers: the node changes read may still name them
        summary = Summaries(names)
        async for change in _changes(client.bus, args, secret):
            said = summary(change)  # of every change read: it learns the nodes' names
            if kinds and change.kind not in kinds:
                continue
            if args.json:
                print(json.dumps(to_builtins(change)), flush=True)
            else:
                out.print(line(change, said), soft_wrap=True)


async def _changes(
    bus: Bus, args: argparse.Namespace, secret: bytes | None
) -> AsyncIterator[Change]:
    """The changes after args.since: with -f, of the kinds asked, for ever; else of every
    kind, up to the last one the stream holds."""
    last = None if args.follow else await last_index(bus, secret)
    if last is not None and last <= args.since:
        return
    # Without -f every kind is read (the caller shows the kinds asked): the replay ends at
    # `last`, which may be a change of another kind.
    asked = followed_kinds(args.kind) if args.follow else ()
    stream = changes.follow(bus, after=args.since, kinds=asked, secret=secret)
    try:
        while True:
            try:
                async with asyncio.timeout(None if args.follow else QUIET):
                    change = await anext(stream)
            except (StopAsyncIteration, TimeoutError):
                return
            yield change
            if last is not None and change.index >= last:
                return
    except NotFound:
        return  # no change stream yet: nothing has changed
    finally:
        await stream.aclose()


async def last_index(bus: Bus, secret: bytes | None) -> int:
    """The index of the last change the stream holds (0: none); the command ends saying so
    if the stream cannot be read."""
    try:
        return await changes.last_index(bus, secret)
    except BusError as e:
        fail(f"cannot read the change stream: {e}", "is the cluster up? see `colony status`")
