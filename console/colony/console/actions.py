"""What the console does to the cluster: scale, roll back, promote, stop, drain, undrain,
and the one-off reads behind its screens (a job's versions, an instance's output).

The app calls an `Actions`; `ClusterActions` is the real one, through the management
database's client, sending the very commands the CLI sends (colony.cli.commands builds
them for both). Every failure is an `ActionError` whose text says what was not done
and why, ready for a notification.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import msgspec

from colony.cli import commands, records
from colony.cli.job import stopped_said
from colony.cli.rollout import versions_of
from colony.shared import subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Command,
    InstanceRecord,
    JobVersion,
    LogsRequest,
    NodeRecord,
    Outcome,
)


class ActionError(Exception):
    """An action failed: str(e) says what was not done and why."""


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int
    """Where to read next."""
    running: bool = True
    """Whether the instance still runs (its output may grow)."""
    more: bool = False
    """The read was cut at its size limit: more output waits (read again at once)."""


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
        with failing(f"{job} not scaled"):
            await self._propose(commands.job_scale(job, replicas))
        return f"{job}: scaled to {replicas}"

    async def rollback(self, job: str, version: int | None = None) -> str:
        command = commands.job_rollback(job, version or 0, by=(BY, "rollback"))
        with failing(f"{job} not rolled back"):
            outcome = await self._propose(command)
        to = f"version {version}'s spec" if version else "the last good version's spec"
        now = f"version {outcome.version}" if outcome.version else "a new version"
        return f"{job}: rolled back: {now} runs {to}"

    async def promote(self, job: str) -> str:
        with failing(f"{job} not promoted"):
            await self._propose(commands.job_promote(job, by=(BY, "promote")))
        return f"{job}: canaries promoted: the rest of the instances are replaced next"

    async def stop(self, job: str, purge: bool = False) -> str:
        with failing(f"{job} not stopped"):
            outcome = await self._propose(commands.job_stop(job, purge))
        return f"{job}: {stopped_said(purge, outcome.value)}"

    async def drain(self, node: str, deadline: float | None = None) -> str:
        until = commands.DRAIN_DEADLINE if deadline is None else deadline
        name = await self._name_of(node)
        command = commands.node_drain(node, name or node, until, by=(BY, "drain"))
        name = name or f"node {node}"
        with failing(f"{name} not drained"):
            outcome = await self._propose(command)
        if outcome.value == "drained":  # (drained before: it stays so)
            return f"{name}: drained already (nothing runs there)"
        return f"{name}: draining (its instances move away)"

    async def undrain(self, node: str) -> str:
        name = await self._name_of(node)
        command = commands.node_undrain(node, name or node, by=(BY, "undrain"))
        name = name or f"node {node}"
        with failing(f"{name} not undrained"):
            await self._propose(command)
        return f"{name}: eligible again"

    async def versions(self, job: str) -> list[JobVersion]:
        with failing(f"cannot read the versions of {job}"):
            return await versions_of(self.management, job, stale=True)

    async def logs(self, instance: str, stream: str = "stdout", offset: int = 0) -> LogChunk:
        node = self._where.get(instance) or await self._node_of(instance)
        request = LogsRequest(instance=instance, stream=stream, offset=offset, max_bytes=LOG_BYTES)
        with failing(f"no output of {instance}"):
            try:
                reply = await self.management.bus.request(
                    subjects.agent_logs(node), request, timeout=LOG_ASK
                )
            except RemoteError as e:
                self._where.pop(instance, None)
                raise Refused(e.description or str(e)) from None
            except BusError as e:
                self._where.pop(instance, None)  # it may have moved: ask again next time
                raise ActionError(
                    f"node {node}, which runs {instance}, does not answer: {e}"
                ) from None
        more = reply.next - reply.offset >= LOG_BYTES
        return LogChunk(reply.data, reply.next, reply.running, more)

    async def _node_of(self, instance: str) -> str:
        with failing(f"cannot find instance {instance}"):
            found = await records.one_of(self.management, records.INSTANCES, instance, stale=True)
            if found is None:
                raise ActionError(f"no instance {instance} (it was removed)")
            node = msgspec.convert(found.value, InstanceRecord).node
        self._where[instance] = node
        return node

    async def _name_of(self, node: str) -> str:
        """The name (node-2) of node id `node`, as people know it, for what an action says
        ('' : its record cannot be read; the action then says why it fails)."""
        with contextlib.suppress(ManagementError, BusError, msgspec.ValidationError):
            found = await records.one_of(self.management, records.NODES, node, stale=True)
            if found is not None:
                return msgspec.convert(found.value, NodeRecord).name
        return ""

    async def _propose(self, command: Command) -> Outcome:
        """Commit `command`: its outcome (a refusal raises Refused saying why)."""
        reply = await self.management.propose(command)
        [outcome] = reply.outcomes
        if not outcome.ok:
            raise Refused(outcome.error)
        return outcome


class Refused(Exception):
    """The cluster (or an agent) refused: str(e) says why."""


@contextlib.contextmanager
def failing(what: str) -> Iterator[None]:
    """Any error inside as an ActionError saying `what` (was not done) and why: the app
    shows ActionErrors, so nothing else may escape an action."""
    try:
        yield
    except ActionError:
        raise  # said already
    except Refused as e:
        raise ActionError(f"{what}: {e}") from None
    except ManagementError as e:
        hint = " (is a majority of the voters up?)" if e.retryable else ""
        raise ActionError(f"{what}: {e}{hint}") from None
    except BusError as e:
        raise ActionError(f"{what}: {e}") from None
    except msgspec.ValidationError as e:
        raise ActionError(f"{what}: the cluster's answer is unreadable here ({e})") from None
    except Exception as e:  # a bug: still said, not a dead worker or a silent action
        raise ActionError(f"{what}: unexpected {type(e).__name__}: {e}") from e
