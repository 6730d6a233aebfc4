"""The agent's pure decisions: what an instance gets to run with, what a node should do
about an instance, when to restart one that ended (or is unhealthy), and what its node's
monitor is to check. No I/O, no clock reads."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from colony.shared.jobspec import JobSpec, RestartPolicy
from colony.shared.management import Listing
from colony.shared.messages import Change, CheckTarget, InstanceRecord

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def instance_env(
    record: InstanceRecord,
    spec: JobSpec,
    node: str,
    address: str,
    inherited: Mapping[str, str],
) -> dict[str, str]:
    """The instance's environment: `inherited` (the agent's PATH and locale), the spec's
    env, then what Colony tells every instance (which wins)."""
    env = {**inherited, **spec.task.env}
    ports = [(name, record.ports[name]) for name in spec.ports if name in record.ports]
    ports += [(n, p) for n, p in sorted(record.ports.items()) if n not in spec.ports]
    if ports:
        env["PORT"] = str(ports[0][1])
    for name, port in ports:
        env[f"PORT_{name.upper()}"] = str(port)
    env.update(
        COLONY_INSTANCE=record.id,
        COLONY_JOB=record.job,
        COLONY_NODE=node,
        COLONY_ADDRESS=address,
    )
    return env


def check_target(
    record: InstanceRecord,
    spec: JobSpec,
    run: float,
    pid: int,
    host: str,
    env: Mapping[str, str],
    folder: str,
) -> CheckTarget:
    """What the node's monitor checks of one run of an instance (`run`: its started_at),
    started with `env` in its own `folder`."""
    return CheckTarget(
        id=record.id,
        job=record.job,
        version=record.version,
        run=run,
        pid=pid,
        host=host,
        ports=dict(record.ports),
        env=dict(env),
        # as the driver takes it: relative to the instance's folder ('' : the folder)
        workdir=str(Path(folder, spec.task.workdir)),
        checks=list(spec.checks),
    )


def unhealthy(record: InstanceRecord, run: float) -> str | None:
    """Why to restart the run of an instance that started at `run`, by what its record
    says of its health: None unless the record says that very run is unhealthy (health
    said of an earlier run is never acted on)."""
    if record.health != "unhealthy" or not run or record.health_run != run:
        return None
    check = f"health check {record.health_check}" if record.health_check else "health check"
    return f"{check} failed: {record.health_output}" if record.health_output else f"{check} failed"


def substitute(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """`${NAME}` in each arg replaced by the env's NAME (a name it lacks is left as is)."""
    return [_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), arg) for arg in args]


class Assignments:
    """The instances placed on a node: as read (page by page, each page at its own log
    index), then as the change stream says they change."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.records: dict[str, InstanceRecord] = {}
        self.read_at: dict[str, int] = {}
        """The log index each record was read at: its changes up to it are in it."""
        self.floor = 0
        """The log index every page was read at or after: an instance no page held had
        none of its changes up to it in effect (not placed here yet, or no longer)."""

    def load(self, listing: Listing) -> None:
        """Take the instances a query of this node's read (`Management.query_all`)."""
        self.records = {s.id: msgspec.convert(s.value, InstanceRecord) for s in listing.objects}
        self.read_at = {stored.id: index for index, stored in listing.each()}
        self.floor = listing.index

    def apply(self, change: Change) -> bool:
        """Take an instance change; True if it changed what is placed on this node (an
        instance placed, changed, removed or placed elsewhere). Raises msgspec's
        ValidationError for a change whose detail is no InstanceRecord."""
        if change.log_index <= self.read_at.get(change.id, self.floor):
            return False  # the copy read has it already
        if change.version != 0 and change.detail.get("node") == self.node:
            self.records[change.id] = msgspec.convert(change.detail, InstanceRecord)
            return True
        return self.records.pop(change.id, None) is not None  # removed, or placed elsewhere

    def get(self, id: str) -> InstanceRecord | None:
        return self.records.get(id)


Wanted = Literal["run", "stop", "forget"]


def wanted(record: InstanceRecord | None) -> Wanted:
    """What this node should do about an instance, given the manager's record of it
    placed here (None: none, it was removed or placed elsewhere): run it, stop it
    (desired stop), or stop and forget it."""
    if record is None:
        return "forget"
    return "run" if record.desired == "run" else "stop"


def restart_delay(policy: RestartPolicy, restarted: Sequence[float], now: float) -> float | None:
    """Seconds to wait before restarting an instance that ended, given when it was
    restarted before (`restarted`); None once the policy's attempts within its interval
    are used up (the instance has failed)."""
    recent = sum(1 for at in restarted if now - at < policy.interval)
    if recent >= policy.attempts:
        return None
    return min(policy.delay * policy.backoff**recent, policy.max_delay)


def gave_up(policy: RestartPolicy, why: str) -> str:
    """The reason of an instance whose restarts ran out."""
    return (
        f"{why}; restarted {policy.attempts} times within {policy.interval:g} s, "
        "as many as its restart policy allows"
    )


def ports_taken(ports: Sequence[int]) -> str:
    """The reason of an instance not started: other processes hold ports it was given."""
    if len(ports) == 1:
        return f"port {ports[0]} is already in use on this host (another process holds it)"
    listed = ", ".join(str(p) for p in ports)
    return f"ports {listed} are already in use on this host (other processes hold them)"
