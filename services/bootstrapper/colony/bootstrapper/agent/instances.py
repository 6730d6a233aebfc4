"""What the agent keeps about each instance on its node, on disk.

``<folder>/<instance>/instance.json`` is written at every transition, before the
report about it is sent: a restarted agent (even after kill -9) finds the driver's
handle (to adopt what still runs), the report sequence (never reused: the database
keeps only reports newer than the last it recorded) and the restart history (the
restart policy counts restarts within its interval across agent restarts).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import msgspec

from colony.bootstrapper.agent.drivers.base import Handle
from colony.shared.messages import InstanceRecord, InstanceReport, InstanceState

RECORD = "instance.json"
MAX_REASON = 1024
"""A report's reason, at most (the wire's bound)."""

log = logging.getLogger("colony.agent")


class LocalInstance(msgspec.Struct, kw_only=True):
    """One instance as its node's agent knows it."""

    id: str
    job: str
    version: int
    slot: int
    cpu: float
    memory: int
    ports: dict[str, int] = {}
    driver: str = ""
    """The job spec's driver ('' until the spec was read)."""
    handle: Handle | None = None
    """The driver's handle of what runs now (or ran last)."""
    state: InstanceState = "pending"
    reason: str = ""
    exit_code: int | None = None
    pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    restarts: int = 0
    restarted: list[float] = []
    """When it was restarted (wall clock), for the restart policy's interval."""
    seq: int = 0
    """The seq of its latest report."""
    done: bool = False
    """Failed for good (its restarts ran out): it is not started again."""

    @classmethod
    def of(cls, record: InstanceRecord) -> LocalInstance:
        return cls(
            id=record.id,
            job=record.job,
            version=record.version,
            slot=record.slot,
            cpu=record.cpu,
            memory=record.memory,
            ports=dict(record.ports),
            # what the database last recorded from this node (its own copy was lost, or
            # it never had one): a failed instance stays failed
            state=record.state,  # type: ignore[arg-type]
            reason=record.reason,
            exit_code=record.exit_code,
            pid=record.pid,
            seq=record.seq,
            restarts=record.restarts,
            done=record.state == "failed",
        )

    def report(self, at: float) -> InstanceReport:
        return InstanceReport(
            id=self.id,
            state=self.state,
            seq=self.seq,
            exit_code=self.exit_code,
            reason=self.reason[:MAX_REASON],
            restarts=self.restarts,
            pid=self.pid,
            started_at=self.started_at,
            finished_at=self.finished_at,
            at=at,
        )


class Store:
    """The instances' folders under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def dir(self, instance: str) -> Path:
        return self.folder / instance

    def save(self, instance: LocalInstance) -> None:
        path = self.dir(instance.id) / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(instance))
        tmp.replace(path)  # atomic: a restarted agent never reads half a record

    def load(self) -> list[LocalInstance]:
        """Every instance recorded (an unreadable record is logged and skipped)."""
        found = []
        for path in sorted(self.folder.glob(f"*/{RECORD}")):
            try:
                found.append(msgspec.json.decode(path.read_bytes(), type=LocalInstance))
            except (OSError, msgspec.DecodeError) as e:
                log.error(
                    "instance record unreadable; skipped", extra={"path": str(path), "why": str(e)}
                )
        return found

    def remove(self, instance: str) -> None:
        """Forget an instance: its folder (output included) goes."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir(instance))
