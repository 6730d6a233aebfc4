"""The driver interface: how the node agent runs an instance, whatever runs it.

A driver starts an instance from an `InstanceSpec` and hands back a `Handle`: plain
data the agent persists with the instance, from which the same driver (or a new one,
after the agent restarted) finds the instance again (`adopt`). Everything else takes
the handle: `wait` (the exit, noticed at once), `stop`, `inspect`, `logs`, `stats`.

The process driver runs a command in its own session; the sim driver runs nothing
(benchmarks). A docker or microvm driver fills the same handle: `pid` is its runtime's
process (the container's init, the VMM), `ref` its own name for the instance (a
container id), `extra` whatever else it must find again.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

Stream = Literal["stdout", "stderr"]


class Capabilities(msgspec.Struct, frozen=True):
    """What a driver offers: the agent registers `name` with its node."""

    name: str
    isolation: str
    """What separates an instance from the node and the others (in plain words)."""
    limits: tuple[str, ...]
    """What it can enforce on this host ('memory', 'cpu'); a limit left out is reserved
    by the scheduler but not enforced here."""
    runs: bool = True
    """False for a driver that runs nothing (sim)."""


class InstanceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One instance to start, everything resolved by the agent (env, ports, args)."""

    id: str
    command: str
    args: list[str] = []
    env: dict[str, str] = {}
    """The instance's whole environment (nothing else is inherited)."""
    workdir: str = ""
    """'' : its own folder (`dir`); a relative path is taken from `dir`."""
    dir: str
    """The instance's own folder on the node: its logs and the driver's files."""
    cpu: float = 0.0
    """Cores it may use (0: no limit)."""
    memory: int = 0
    """Bytes it may use (0: no limit)."""


class Handle(msgspec.Struct, frozen=True, kw_only=True):
    """What finds a started instance again: persisted by the agent with the instance."""

    driver: str
    id: str
    dir: str
    pid: int = 0
    """The workload's process (0: none, sim)."""
    pgid: int = 0
    """Its process group: signalling it reaches everything the instance started."""
    wrapper: int = 0
    """The process waiting for the workload and recording its exit status."""
    wrapper_started: float = 0.0
    """The wrapper's start time as the OS reports it (guards against pid reuse)."""
    started_at: float = 0.0
    """Wall clock when it started."""
    limits: str = ""
    """Which limits were applied and how ('memory limit 64 MiB via cgroup v1; ...')."""
    cgroups: list[str] = []
    """cgroup folders made for it (removed once it is gone)."""
    ref: str = ""
    extra: dict[str, str] = {}


class Exit(msgspec.Struct, frozen=True):
    """How an instance ended."""

    code: int | None
    """Its exit code; a negative number is the signal that killed it; None: unknown."""
    reason: str
    at: float = 0.0


class Inspection(msgspec.Struct, frozen=True):
    state: Literal["running", "exited"]
    reason: str = ""
    exit: Exit | None = None


class LogChunk(msgspec.Struct, frozen=True):
    data: bytes
    offset: int
    """Where `data` starts in everything written to the stream."""
    next: int
    """Where to read from next."""


class Stats(msgspec.Struct, frozen=True):
    cpu_seconds: float = 0.0
    """CPU time used by all its processes so far (user + system)."""
    rss: int = 0
    """Resident memory of all its processes, bytes."""
    processes: int = 0


class StartFailed(Exception):
    """The instance cannot start here: the message says why, in plain words."""


class Driver(Protocol):
    capabilities: Capabilities

    async def start(self, spec: InstanceSpec) -> Handle:
        """Start the instance; return once it runs. Raises StartFailed saying why not."""
        ...

    async def end_leftovers(self, id: str, dir: str) -> bool:
        """End whatever of instance `id` (whose folder is `dir`) a start left running
        with no handle saved to find it by (its agent was killed during the start), so
        that it never runs twice. True if it ended something."""
        ...

    async def wait(self, handle: Handle) -> Exit:
        """Return as soon as the instance has ended (at once if it already has)."""
        ...

    async def stop(self, handle: Handle, grace: float) -> Exit:
        """Ask it to end, force it after `grace` seconds; nothing of it is left running."""
        ...

    def inspect(self, handle: Handle) -> Inspection: ...

    def adopt(self, handle: Handle) -> bool:
        """Watch an instance started before (by an agent since restarted) again: True
        if it still runs (`wait` then reports its exit), False if it ended meanwhile."""
        ...

    def logs(self, handle: Handle, stream: Stream, offset: int, max_bytes: int) -> LogChunk:
        """Up to `max_bytes` of its output from `offset` (-1: the last `max_bytes`)."""
        ...

    def stats(self, handle: Handle) -> Stats: ...

    def forget(self, handle: Handle) -> None:
        """Drop what the driver keeps about an instance that has ended (its cgroups)."""
        ...

    async def close(self) -> None:
        """Stop watching (instances keep running: a new driver adopts them)."""
        ...
