"""Test helper: a cluster's jobs, instances and nodes as the management database holds
them, and the real processes that run the instances.

Reads go through the consensus voters (linearizable, paged), so what a test sees is
what the manager and the agents committed. Processes are found by their environment:
the agent gives every instance's process `COLONY_INSTANCE`, `COLONY_JOB` and
`COLONY_NODE`, and each process a workload forks inherits them, so a scan of this
machine's processes finds every copy that runs, whichever node started it and whatever
the nodes reported (the nodes of a local cluster, and of the network-namespace hosts,
share this machine's process table).

    jobs = LocalJobs(state)                       # a `colony up` cluster
    jobs.until(lambda seen: all_running(seen, 4), "web", 30, "4 instances running")
    copies("web")                                 # its running copies: one session each

Inside a network-namespace host (nothing may talk to a host's address from outside),
the same reads run as a process: ``python -m colony.harness.jobs URL VOTERS KIND
[--where FIELD=VALUE]...`` prints the records as a JSON list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import psutil

from colony.shared.bus import Bus, connect
from colony.shared.config import ConfigError, NatsSettings, load
from colony.shared.management import Management
from colony.shared.messages import InstanceRecord, JobRecord, NodeRecord
from colony.shared.statedir import StateDir

T = TypeVar("T")

ARGV = [sys.executable, "-m", "colony.harness.jobs"]
"""How a caller runs a read inside a host: ``[*ARGV, url, "h1,h2,h3", "instances"]``."""
KINDS = ("instances", "jobs", "nodes")
"""The kinds `main` reads."""


# --- reading the management database ------------------------------------------------


async def read(
    bus: Bus, voters: list[str], kind: str, where: dict[str, str] | None = None
) -> list[dict]:
    """Every object of `kind` (matching `where`), all pages, as the kind's query returns
    them (`Stored.value`: a record's fields)."""
    listing = await Management(bus, voters, timeout=10.0).query_all(kind, where)
    return [stored.value for stored in listing.objects]


def voters_in(state: Path) -> list[str]:
    """Node ids to ask in a `colony up` cluster: the first configured voters, then the
    other nodes (one may have been promoted since, replacing a lost voter; a standby
    refuses and the next is asked)."""
    ids = [node.read_id() for node in StateDir(state).nodes()]
    try:
        first = load(StateDir(state).nodes()[0].config_file, env={}).consensus.voters
    except (ConfigError, IndexError):
        first = []
    return list(dict.fromkeys([*first, *(i for i in ids if i)]))


class LocalJobs:
    """The jobs of the `colony up` cluster in `state`, read from the test process (each
    call connects to the nodes' servers, reads, and closes)."""

    def __init__(self, state: Path) -> None:
        self.state = Path(state)

    def _read(self, kind: str, where: dict[str, str] | None = None) -> list[dict]:
        async def run() -> list[dict]:
            urls = [url for node in StateDir(self.state).nodes() if (url := node.nats_url())]
            bus = await connect(NatsSettings(servers=urls, connect_timeout=1.0), "test-jobs")
            try:
                return await read(bus, voters_in(self.state), kind, where)
            finally:
                await bus.close()

        return asyncio.run(run())

    def instances(self, job: str | None = None, node: str | None = None) -> list[InstanceRecord]:
        where = {k: v for k, v in (("job", job), ("node", node)) if v is not None}
        return records(self._read("instances", where), InstanceRecord)

    def nodes(self) -> dict[str, NodeRecord]:
        """Node id -> its record."""
        return {n.node: n for n in records(self._read("nodes"), NodeRecord)}

    def jobs(self) -> dict[str, JobRecord]:
        return {j.name: j for j in records(self._read("jobs"), JobRecord)}

    def until(
        self,
        check: Callable[[list[InstanceRecord]], T | None],
        job: str,
        timeout: float,
        what: str,
        every: float = 0.25,
    ) -> T:
        """Read `job`'s instances until `check` returns something truthy, and return it;
        AssertionError after `timeout` seconds, with what was last seen."""
        return until(lambda: self.instances(job), check, timeout, what, every)


def until(
    look: Callable[[], list[InstanceRecord]],
    check: Callable[[list[InstanceRecord]], T | None],
    timeout: float,
    what: str,
    every: float = 0.25,
) -> T:
    """`look` until `check` of what it sees is truthy; AssertionError after `timeout`
    seconds, naming `what` and showing the last instances seen."""
    deadline = time.monotonic() + timeout
    seen: list[InstanceRecord] = []
    while True:
        seen = look()
        if found := check(seen):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s; last seen:\n{table(seen)}")
        time.sleep(every)


def records(values: Iterable[dict], kind: type[T]) -> list[T]:
    return [msgspec.convert(v, kind) for v in values]


# --- what the instances say -----------------------------------------------------------


def wanted(instances: Iterable[InstanceRecord]) -> list[InstanceRecord]:
    """The instances desired to run, by slot."""
    return sorted((i for i in instances if i.desired == "run"), key=lambda i: (i.slot, i.id))


def all_running(
    instances: list[InstanceRecord], replicas: int, avoid: Iterable[str] = ()
) -> list[InstanceRecord] | None:
    """The `replicas` instances desired to run, once there is exactly one per slot
    0..replicas-1, every one running (with a pid), none on a node of `avoid`; else None."""
    run = wanted(instances)
    if [i.slot for i in run] != list(range(replicas)):
        return None
    if any(i.state != "running" or not i.pid or i.node in set(avoid) for i in run):
        return None
    return run


def table(instances: Iterable[InstanceRecord]) -> str:
    """One line per instance, for failure messages."""
    lines = [
        f"  {i.id} slot {i.slot} on {i.node}: desired {i.desired}, {i.state}, pid {i.pid}, "
        f"restarts {i.restarts}, reason {i.reason or i.desired_reason!r}"
        for i in sorted(instances, key=lambda i: (i.slot, i.id))
    ]
    return "\n".join(lines) or "  (no instances)"


# --- the real processes -------------------------------------------------------------


@dataclass(frozen=True)
class InstanceProcess:
    """A process running for an instance, as this machine's process table shows it."""

    pid: int
    pgid: int
    sid: int
    instance: str
    job: str
    node: str


def instance_processes(job: str | None = None) -> list[InstanceProcess]:
    """Every live process of an instance (of `job`, if given) on this machine, by pid."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            env = process.environ()
            if "COLONY_INSTANCE" not in env or job not in (None, env.get("COLONY_JOB")):
                continue
            pgid, sid = os.getpgid(process.pid), os.getsid(process.pid)
        except (psutil.Error, ProcessLookupError):
            continue  # gone meanwhile, or a kernel thread
        found.append(
            InstanceProcess(
                process.pid,
                pgid,
                sid,
                env["COLONY_INSTANCE"],
                env.get("COLONY_JOB", ""),
                env.get("COLONY_NODE", ""),
            )
        )
    return found


@dataclass(frozen=True)
class Copy:
    """One running copy of an instance: the session its node's agent started it in (a
    driver may wrap the workload: every process of the session counts)."""

    instance: str
    node: str
    session: int
    pids: tuple[int, ...]


def copies(job: str) -> list[Copy]:
    """Every running copy of `job`'s instances, by instance: two copies of one instance
    are two sessions."""
    sessions: dict[tuple[str, str, int], list[int]] = {}
    for p in instance_processes(job):
        sessions.setdefault((p.instance, p.node, p.sid), []).append(p.pid)
    return [Copy(i, node, sid, tuple(pids)) for (i, node, sid), pids in sorted(sessions.items())]


def one_process_each(job: str, instances: Iterable[InstanceRecord]) -> list[Copy] | None:
    """`copies(job)` once they are exactly one per instance desired to run, on its node,
    running the pid its node reported; None until then (a copy too many, or missing)."""
    found = copies(job)
    wanted = {i.id: i for i in instances if i.desired == "run"}
    if sorted(c.instance for c in found) != sorted(wanted):
        return None
    if any(c.node != wanted[c.instance].node or wanted[c.instance].pid not in c.pids
           for c in found):  # fmt: skip
        return None
    return found


def in_session(sid: int) -> list[int]:
    """Live processes of session `sid` (a workload and whatever it forked)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def kill_instances_of(node: str) -> list[int]:
    """SIGKILL every instance process started by `node`'s agent (what a machine failure
    does to them); the pids killed."""
    killed = []
    for process in instance_processes():
        if process.node == node:
            try:
                os.kill(process.pid, signal.SIGKILL)
                killed.append(process.pid)
            except ProcessLookupError:
                pass
    return killed


# --- run inside a host --------------------------------------------------------------


async def _main(url: str, voters: list[str], kind: str, where: dict[str, str]) -> None:
    bus = await connect(NatsSettings(servers=[url], connect_timeout=1.0), "probe-jobs")
    try:
        print(json.dumps(await read(bus, voters, kind, where)), flush=True)
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m colony.harness.jobs")
    parser.add_argument("url")
    parser.add_argument("voters", help="node ids of the voters, comma-separated")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    where = dict(w.split("=", 1) for w in args.where)
    try:
        asyncio.run(_main(args.url, args.voters.split(","), args.kind, where))
    except Exception as e:  # the caller polls: say why, exit 1
        print(f"no answer: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
