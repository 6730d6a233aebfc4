"""Versions and rollouts for people: a plan's diff and what the update does, a rollout's
progress line, `colony job history`'s rows, and following a rollout until it ends.

`colony job run` (of a changed spec), `promote` and `rollback` follow the job's rollout
from its record (`JobRecord.rollout`, which the manager keeps up to date) and from the
change stream's records of the version's instances (their failures and health, said as
they come). A rollout that succeeded exits 0; one whose canaries wait for promotion
exits 0 saying how to promote them; one that failed, was reverted, superseded or
stopped exits 1 saying why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import getpass
import math
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from rich.table import Table
from rich.text import Text

from colony.cli import records
from colony.cli.output import err, human_age, out, print_json
from colony.shared import changes
from colony.shared.bus import BusError
from colony.shared.jobspec import JobSpec, SpecChange
from colony.shared.management import Management, ManagementError
from colony.shared.messages import InstanceRecord, JobRecord, JobVersion, PlanReply, Rollout

VERSIONS = "job_versions"
"""The kind read for a job's versions (`id` = the job)."""
CAUSE_MAX = 1024
FOLLOW_EVERY = 0.25
"""Seconds between two reads of the job's record while a rollout is followed."""


def cause(*words: str) -> str:
    """Who runs what, for a version's history: 'alice@box: colony job run web.yaml'."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "someone"
    text = f"{user}@{socket.gethostname()}: colony {' '.join(words)}"
    return text if len(text) <= CAUSE_MAX else text[: CAUSE_MAX - 1] + "…"


# --- plan: the diff and what the update does (pure) ---------------------------------


def change_line(change: SpecChange) -> str:
    """'  resources.memory: 64MiB -> 128MiB' ('(not set)' / '(removed)' for a side missing);
    a value of several lines (a script) as the lines that differ, - old and + new."""
    if "\n" not in change.old + change.new:
        return f"  {change.path}: {change.old or '(not set)'} -> {change.new or '(removed)'}"
    old, new = change.old.splitlines(), change.new.splitlines()
    lines = list(difflib.unified_diff(old, new, n=0, lineterm=""))[2:]  # no file names
    changed = [f"      {line}" for line in lines if not line.startswith("@@")]
    return "\n".join([f"  {change.path}:", *changed])


def plural(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def update_said(plan: PlanReply, spec: JobSpec | None = None) -> str:
    """What an update does to the running instances: 'in place (no instance replaced)', or
    'replace 6 instances, 2 at a time (1 canary first, then promote)'; '' unless the plan
    is an update."""
    if plan.change != "update":
        return ""
    if plan.in_place or plan.replace == 0:
        return "in place (no instance replaced)"
    text = f"replace {plural(plan.replace, 'instance')}, {plan.max_parallel or 1} at a time"
    if plan.canary:
        promote = "promoted once healthy" if spec and spec.update.auto_promote else "then promote"
        text += f" ({plural(plan.canary, 'canary', 'canaries')} first, {promote})"
    return text


def diff_lines(plan: PlanReply, spec: JobSpec | None = None) -> list[str]:
    """An update's field-by-field diff, then what the update does."""
    if plan.change != "update" or not (plan.diff or plan.in_place or plan.replace):
        return []  # (a manager from before versions had diffs says nothing of them)
    lines = [change_line(c) for c in plan.diff]
    return [*lines, f"update: {update_said(plan, spec)}"]


# --- a rollout's progress (pure) ------------------------------------------------------


def batches(job: JobRecord) -> int:
    """How many batches the job's rollout replaces its instances in (0: none)."""
    r = job.rollout
    if r is None or r.previous == 0:
        return 0
    left = max(0, job.replicas - r.canaries)
    return max(r.batch, math.ceil(left / max(1, job.spec.update.max_parallel)))


def waiting_canaries(rollout: Rollout | None) -> bool:
    """Whether the rollout's canaries are all healthy and wait for `colony job promote`."""
    return (
        rollout is not None
        and rollout.status == "running"
        and rollout.canaries > 0
        and not rollout.promoted
        and rollout.healthy >= rollout.canaries
    )


def rollout_line(job: JobRecord, promote: str = "") -> str:
    """'version 2: batch 2 of 3 — 4 of 6 healthy', 'version 2: 1 canary healthy; promote
    with `colony job promote web`', 'version 2: failed: ...' ('' : no rollout recorded).
    `promote`: how to promote waiting canaries, said instead of the CLI's command."""
    r = job.rollout
    if r is None:
        return ""
    v, n = f"version {r.version}", job.replicas
    healthy = f"{min(r.healthy, n) if n else r.healthy} of {n} healthy"
    if r.status == "running":
        if r.canaries and not r.promoted:
            if waiting_canaries(r):
                what = f"{plural(r.canaries, 'canary', 'canaries')} healthy"
                if job.spec.update.auto_promote:
                    return f"{v}: {what}; promoting"
                return f"{v}: {what}; {promote or f'promote with `colony job promote {job.name}`'}"
            return f"{v}: canaries — {r.healthy} of {r.canaries} healthy"
        if r.previous == 0 or not r.batch:
            return f"{v}: {r.placed} placed, {healthy}"
        return f"{v}: batch {r.batch} of {batches(job)} — {healthy}"
    said = {
        "succeeded": f"{v}: succeeded — {healthy}",
        "failed": f"{v}: failed",
        "reverted": f"{v}: failed and reverted",
        "superseded": f"{v}: superseded by a newer version",
        "stopped": f"{v}: stopped with the job",
    }.get(r.status, f"{v}: {r.status}")
    return said + (f": {r.reason}" if r.reason and r.status != "succeeded" else "")


@dataclass(frozen=True)
class Verdict:
    code: int
    message: str
    status: str
    """succeeded, canaries (waiting for promotion), failed, reverted, superseded, stopped."""
    version: int = 0
    """The version now current (another one after a revert or a newer submission)."""


def verdict(
    job: JobRecord | None, version: int, history: JobVersion | None = None
) -> Verdict | None:
    """How the rollout of `version` ended, once it has (None while it goes on). `history`:
    the version's row (its outcome and reason) once the job has moved on to another."""
    if job is None:
        return Verdict(1, f"the job no longer exists (version {version} was followed)", "stopped")
    r = job.rollout
    if job.version < version:
        return None  # a read from before the version was stored
    if job.version != version:
        outcome = history.outcome if history else ""
        reason = history.reason if history else ""
        reverted = outcome == "reverted" or job.cause.startswith("auto-revert")
        if reverted:
            # the manager's reason may already name the version it went back to
            why = re.sub(r"^reverted to version \d+: ", "", reason) or job.cause
            to = f" to version {job.stable}" if job.stable else ""
            return Verdict(
                1,
                f"version {version} failed and was reverted{to} (now version {job.version}): {why}",
                "reverted",
                job.version,
            )
        return Verdict(
            1,
            f"version {version} was superseded by version {job.version} "
            f"({job.cause or 'no cause given'})",
            outcome or "superseded",
            job.version,
        )
    if job.status == "stopped":
        return Verdict(1, f"the job was stopped during the rollout of version {version}", "stopped")
    if r is None or r.version != version:
        return None  # the rollout is not recorded yet
    if r.status == "succeeded":
        healthy = f"{min(r.healthy, job.replicas)} of {job.replicas} healthy"
        return Verdict(0, f"version {version} rolled out, {healthy}", "succeeded", version)
    if waiting_canaries(r) and not job.spec.update.auto_promote:
        return Verdict(0, rollout_line(job), "canaries", version)
    if r.status == "running":
        return None
    reason = f": {r.reason}" if r.reason else ""
    return Verdict(1, f"the rollout of version {version} {r.status}{reason}", r.status, version)


def instance_news(
    instance: InstanceRecord, before: InstanceRecord | None, said: Callable[[InstanceRecord], str]
) -> Text | None:
    """A line worth saying about a record of the rollout's instance: it failed, or its
    health changed (None: nothing new since `before`)."""
    if instance.state == "failed" and (before is None or before.state != "failed"):
        return Text.assemble(("✗ ", "red"), said(instance))
    if instance.health and (before is None or before.health != instance.health):
        check = f" ({instance.health_check})" if instance.health_check else ""
        output = f": {instance.health_output}" if instance.health_output else ""
        if instance.health == "unhealthy":
            return Text.assemble(("✗ ", "red"), f"{instance.id} unhealthy{check}{output}")
        return Text.assemble(("✓ ", "green"), f"{instance.id} healthy")
    return None


# --- history (pure) -------------------------------------------------------------------


def when(ts: float, now: float) -> str:
    """'3m02s ago (2026-12-06 02:47:31)' in this machine's time zone."""
    if not ts:
        return "-"
    absolute = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f"{human_age(now - ts)} ago ({absolute})"


def history_row(v: JobVersion, now: float) -> list[str]:
    """VERSION SUBMITTED CAUSE OUTCOME of one version ('*' marks the current one)."""
    outcome = v.outcome or ("rolling out" if v.current else "-")
    if v.reason:
        outcome += f": {v.reason}"
    mark = "*" if v.current else " "
    return [f"{mark}{v.version}", when(v.submitted, now), v.cause or "-", outcome]


def history_table(versions: Sequence[JobVersion], now: float) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in (" VERSION", "SUBMITTED"):
        grid.add_column(column, no_wrap=True)
    grid.add_column("CAUSE")
    grid.add_column("OUTCOME")
    for v in sorted(versions, key=lambda v: -v.version):
        grid.add_row(*history_row(v, now))
    return grid


def version_json(v: JobVersion) -> dict[str, Any]:
    data = msgspec.to_builtins(v)
    data.pop("spec", None)  # `colony job history --json` lists; a version's spec is big
    return data


async def versions_of(client: Management, name: str, *, stale: bool = False) -> list[JobVersion]:
    """Every version of job `name`, newest first."""
    listing = await client.query_all(VERSIONS, key=name, stale=stale)
    found = records.as_records(listing.objects, JobVersion)
    return sorted((v for v in found if v.job == name), key=lambda v: -v.version)


# --- following a rollout --------------------------------------------------------------


class Heard:
    """The records of a job's instances the change stream carries after change `after`,
    gathered until stopped (`ended` once the stream cannot be read any more)."""

    def __init__(self, client: Management, job: str, after: int, secret: bytes | None) -> None:
        self.queue: asyncio.Queue[InstanceRecord | None] = asyncio.Queue()
        self.ended = False
        self.task = asyncio.create_task(self._run(client, job, after, secret))

    async def _run(self, client: Management, job: str, after: int, secret: bytes | None):
        stream = changes.follow(client.bus, after=after, kinds=["instance"], secret=secret)
        try:
            async for change in stream:
                if change.detail.get("job") == job:
                    with contextlib.suppress(msgspec.ValidationError):
                        self.queue.put_nowait(msgspec.convert(change.detail, InstanceRecord))
        except BusError:
            self.queue.put_nowait(None)
        finally:
            await stream.aclose()

    def taken(self) -> list[InstanceRecord]:
        """The records heard since the last call."""
        taken = [self.queue.get_nowait() for _ in range(self.queue.qsize())]
        self.ended = self.ended or None in taken
        return [i for i in taken if i is not None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _history_of(client: Management, name: str, version: int) -> JobVersion | None:
    with contextlib.suppress(ManagementError, msgspec.ValidationError):
        return next((v for v in await versions_of(client, name) if v.version == version), None)
    return None


async def follow(
    client: Management,
    name: str,
    version: int,
    args: argparse.Namespace,
    said: Callable[[InstanceRecord], str],
    heard: Heard | None,
) -> Verdict:
    """Show the rollout of `version` of job `name` until it ends (see `verdict`), or makes
    no progress for args.timeout seconds (status 'waiting', exit 1: it goes on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    seen: dict[str, InstanceRecord] = {}
    shown_phase: tuple[Any, ...] = ()
    last: tuple[Any, ...] = ()
    stale = False
    with contextlib.ExitStack() as stack:
        waiting = Text(f"version {version}: waiting for the manager")
        show = (lambda _: None) if args.json else stack.enter_context(err.status(waiting)).update
        while True:
            found = await records.one_of(client, records.JOBS, name, stale=stale)
            stale = True
            job = msgspec.convert(found.value, JobRecord) if found else None
            news = heard.taken() if heard else []
            news += [i for i in await records.instances(client, name, stale=True)]
            for i in news:
                before = seen.get(i.id)
                if i.version != version or (before is not None and i.changed < before.changed):
                    continue  # reads and changes come unordered: an older record says nothing
                if (line := instance_news(i, before, said)) and not args.json:
                    err.print(line, soft_wrap=True)
                seen[i.id] = i
            history = None
            if job is not None and job.version != version:
                history = await _history_of(client, name, version)
            ended = verdict(job, version, history)
            if ended is not None:
                return ended
            assert job is not None
            r = job.rollout
            if r is not None and r.version == version:
                phase = (r.batch, r.promoted)
                if phase != shown_phase and (r.batch or r.canaries) and not args.json:
                    err.print(rollout_line(job), soft_wrap=True)
                shown_phase = phase
                now = (r.status, r.batch, r.promoted, r.placed, r.healthy)
                if now != last:  # progress: the wait starts over
                    deadline = loop.time() + args.timeout
                last = now
                show(Text(rollout_line(job)))
            if loop.time() >= deadline:
                return Verdict(
                    1,
                    f"version {version}: no progress in {args.timeout:g} s "
                    f"({rollout_line(job) or 'no rollout recorded'}); the rollout goes on",
                    "waiting",
                    version,
                )
            await asyncio.sleep(FOLLOW_EVERY)


def said_verdict(name: str, v: Verdict, as_json: bool) -> int:
    """Say how the rollout ended; return the exit status."""
    if as_json:
        print_json(
            {
                "job": name,
                "status": v.status,
                "ok": v.code == 0,
                "message": v.message,
                "version": v.version,
            }
        )
    elif v.code == 0:
        out.print(Text.assemble(("✓ ", "green"), f"{name}: {v.message}"), soft_wrap=True)
    else:
        err.print(Text.assemble(("error:", "bold red"), f" {name}: {v.message}"), soft_wrap=True)
        err.print(
            Text.assemble(
                ("hint:", "dim"),
                f" see `colony job status {name}` and `colony job history {name}`",
            ),
            soft_wrap=True,
        )
    return v.code
