"""What the console does to the cluster: scale, roll back, promote, stop, drain, undrain,
and the one-off reads behind its screens (a job's versions, an instance's output).

The app calls an `Actions`; `ClusterActions` is the real one, through the management
database's client, sending the very commands the CLI sends (colony.cli.commands builds
them for both). Every failure is an `ActionError` whose text says what was not done
and why, ready for a notification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec

from colony.cli import commands, records
from colony.cli.job import stopped_said
from colony.cli.rollout import versions_of
from colony.shared import subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.management import Management, ManagementError
from colony.shared.messages import Command, InstanceRecord, JobVersion, LogsRequest, Outcome


class ActionError(Exception):
    """An action failed: str(e) says what was not done and why."""


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int
    """Where to read next."""
    running: bool = True
    """Whether the instance still runs (its output may grow)."""


class Actions(Protocol):
    async def scale(self, job: str, replicas: int) -> str:
        """Run `replicas` instances of `job`; what happened, in words."""
        ...

    async def rollback(self, job: str, version: int | None = None) -> str:
        """Roll `job` back to `version`'s spec (None: the last good version)."""
        ...

    async def promote(self, job: str) -> str: ...

    async def stop(self, job: str, purge: bool = False) -> str: ...

    async def drain(self, node: str, deadline: float | None = None) -> str:
        """Drain node `node` (an id); past `deadline` seconds (None: the CLI's default, an
        hour; 0: never) what still runs there stops at once."""
        ...

    async def undrain(self, node: str) -> str: ...

    async def versions(self, job: str) -> list[JobVersion]:
        """Every version of `job`, newest first."""
        ...

    async def logs(self, instance: str, stream: str = "stdout", offset: int = 0) -> LogChunk:
        """The instance's output from byte `offset` on (-1: its tail)."""
        ...


BY = "console"
"""Who asked, in a version's history and a drain's reason: 'alice@box: colony console
rollback web'."""
LOG_BYTES = 64 * 1024
"""Bytes of output read at once."""
LOG_ASK = 2.0
"""Seconds a node's agent may take to answer for an instance's output."""


class ClusterActions:
    """The actions, through the management database's client (and, for an instance's
    output, its node's agent)."""

    def __init__(self, management: Management) -> None:
        self.management = management
        self._where: dict[str, str] = {}
        """Instance id -> the node it runs on (read once per instance followed)."""

    async def scale(self, job: str, replicas: int) -> str:
        await self._propose(commands.job_scale(job, replicas), f"{job} not scaled")
        return f"{job}: scaled to {replicas}"

    async def rollback(self, job: str, version: int | None = None) -> str:
        command = commands.job_rollback(job, version or 0, by=(BY, "rollback"))
        outcome = await self._propose(command, f"{job} not rolled back")
        to = f"version {version}'s spec" if version else "the last good version's spec"
        now = f"version {outcome.version}" if outcome.version else "a new version"
        return f"{job}: rolled back: {now} runs {to}"

    async def promote(self, job: str) -> str:
        await self._propose(commands.job_promote(job, by=(BY, "promote")), f"{job} not promoted")
        return f"{job}: canaries promoted: the rest of the instances are replaced next"

    async def stop(self, job: str, purge: bool = False) -> str:
        outcome = await self._propose(commands.job_stop(job, purge), f"{job} not stopped")
        return f"{job}: {stopped_said(purge, outcome.value)}"

    async def drain(self, node: str, deadline: float | None = None) -> str:
        until = commands.DRAIN_DEADLINE if deadline is None else deadline
        command = commands.node_drain(node, node, until, by=(BY, "drain"))
        await self._propose(command, f"node {node} not drained")
        return f"node {node}: draining (its instances move away)"

    async def undrain(self, node: str) -> str:
        command = commands.node_undrain(node, node, by=(BY, "undrain"))
        await self._propose(command, f"node {node} not undrained")
        return f"node {node}: eligible again"

    async def versions(self, job: str) -> list[JobVersion]:
        try:
            return await versions_of(self.management, job, stale=True)
        except ManagementError as e:
            raise ActionError(f"cannot read the versions of {job}: {e}") from None
        except msgspec.ValidationError as e:
            raise ActionError(f"the versions of {job} came back unreadable: {e}") from None

    async def logs(self, instance: str, stream: str = "stdout", offset: int = 0) -> LogChunk:
        node = self._where.get(instance) or await self._node_of(instance)
        request = LogsRequest(instance=instance, stream=stream, offset=offset, max_bytes=LOG_BYTES)
        try:
            reply = await self.management.bus.request(
                subjects.agent_logs(node), request, timeout=LOG_ASK
            )
        except RemoteError as e:
            self._where.pop(instance, None)
            raise ActionError(f"no output of {instance}: {e.description or e}") from None
        except BusError as e:
            self._where.pop(instance, None)  # it may have moved: ask again next time
            raise ActionError(f"node {node}, which runs {instance}, does not answer: {e}") from None
        return LogChunk(reply.data, reply.next, reply.running)

    async def _node_of(self, instance: str) -> str:
        try:
            found = await records.one_of(self.management, records.INSTANCES, instance, stale=True)
        except ManagementError as e:
            raise ActionError(f"cannot find instance {instance}: {e}") from None
        if found is None:
            raise ActionError(f"no instance {instance} (it was removed)")
        node = msgspec.convert(found.value, InstanceRecord).node
        self._where[instance] = node
        return node

    async def _propose(self, command: Command, failed: str) -> Outcome:
        """Commit `command`; its outcome, or ActionError saying `failed` and why."""
        try:
            reply = await self.management.propose(command)
        except ManagementError as e:
            hint = " (is a majority of the voters up?)" if e.retryable else ""
            raise ActionError(f"{failed}: {e}{hint}") from None
        [outcome] = reply.outcomes
        if not outcome.ok:
            raise ActionError(f"{failed}: {outcome.error}")
        return outcome
