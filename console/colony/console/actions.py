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

from colony.shared.messages import JobVersion


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
