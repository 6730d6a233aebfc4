"""What the console knows of the cluster: pure, no I/O, no clock.

The feed (colony.console.feed) turns what it hears on the bus into feed items; the app
applies them in batches (`ConsoleModel.apply`), which says which areas changed, and
reads rows for its tables (`node_rows`, `job_rows`, ...), computed on demand in one
pass over what is held. Memory stays bounded: the event history is a deque of
`history` rows, each node keeps `samples` metrics samples, and a deleted object is
dropped.

A change carries its object's whole record (`Change.detail`; version 0: deleted), so
the model upserts records from changes. A job's change leaves its spec out (it can be
large): the job keeps the spec it had, and `stale_specs` names the jobs whose spec is
of an older version (or unknown), for the feed to read them (`JobsRead`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from colony.cli.events import Summaries
from colony.cli.rollout import rollout_line, waiting_canaries
from colony.shared.messages import (
    Change,
    InstanceRecord,
    JobRecord,
    MembersReply,
    NodeMetrics,
    NodeRecord,
    Resources,
)
from colony.shared.reservations import reserved

AREAS = frozenset(
    {"connection", "nodes", "jobs", "instances", "events", "metrics", "members", "roles"}
)
"""Every area `ConsoleModel.apply` may say changed."""

# --- feed items ------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    state: Literal["connecting", "connected", "reconnecting", "disconnected"] = "connecting"
    server: str = ""
    """The NATS URL in use."""
    node: str = ""
    """The name (node-1) of the node whose server that is ('' : unknown)."""
    detail: str = ""
    """The last error, in words."""


@dataclass(frozen=True)
class ConnectionChanged:
    connection: Connection


@dataclass(frozen=True)
class Loaded:
    """A full read of the three kinds, consistent with change index `index` (every change
    up to it is in the read): replaces what the model holds."""

    index: int
    nodes: list[NodeRecord]
    jobs: list[JobRecord]
    instances: list[InstanceRecord]


@dataclass(frozen=True)
class Changed:
    change: Change
    live: bool = True
    """False: replayed history."""


@dataclass(frozen=True)
class Sampled:
    """A monitor's sample."""

    metrics: NodeMetrics


@dataclass(frozen=True)
class MembersSeen:
    """One node's view of the membership group."""

    reply: MembersReply


@dataclass(frozen=True)
class RolesSeen:
    """Who leads Raft, who acts as manager (at which epoch), who votes: node ids ('' :
    none now)."""

    leader: str
    manager: str
    epoch: int
    voters: list[str]


@dataclass(frozen=True)
class JobsRead:
    """Job records read whole (spec included): each replaces the model's copy unless that
    one is of a newer version. The feed reads a job whose change brought a new version,
    since changes leave the spec out."""

    jobs: list[JobRecord]


FeedItem = ConnectionChanged | Loaded | Changed | Sampled | MembersSeen | RolesSeen | JobsRead

# --- rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    """One per node record (and per node only seen in metrics or membership)."""

    node: str
    name: str
    address: str
    status: str
    """alive, suspect, dead, left, unknown."""
    drain: str
    """'', draining, drained."""
    eligible: bool
    roles: list[str]
    """e.g. ["voter", "leader", "manager e7"]."""
    cpu_reserved: float
    cpu_used: float
    cpu_capacity: float
    memory_reserved: int
    memory_used: int
    memory_capacity: int
    instances: int
    """Instances desired to run placed on it."""
    cpu_history: list[float]
    """Cores used (the node's own processes, as its monitor measures), oldest first."""
    memory_history: list[float]
    """Bytes used, oldest first."""
    seen: float = 0.0
    """When its newest sample was taken (0: none heard)."""


@dataclass(frozen=True)
class JobRow:
    name: str
    version: int
    status: str
    """running / stopped."""
    desired: int
    running: int
    healthy: int
    rollout: str
    """One line, in `colony job status`' words (colony.cli.rollout.rollout_line):
    "version 3: 1 canary healthy; waiting for promote", "version 2: succeeded — 3 of 3
    healthy", ... ('' : no rollout recorded)."""
    progress: float
    """0..1: while the current version rolls out, its healthy instances / desired; once
    settled, the healthy instances / desired (a rollback to an earlier spec keeps the
    instances of that spec's version)."""
    waiting_promote: bool
    last_event: str
    """The summary of the latest change of the job or of one of its instances."""
    last_event_ts: float
    blocked: str = ""


@dataclass(frozen=True)
class InstanceRow:
    id: str
    job: str
    version: int
    slot: int
    node: str
    """The node's name."""
    state: str
    desired: str
    health: str
    restarts: int
    started_at: float
    """0: unknown (the UI computes the age with its clock)."""
    address: str
    """host:port of its first port ('' : none, or its node's address unknown)."""
    canary: bool
    reason: str
    node_id: str = ""


@dataclass(frozen=True)
class EventRow:
    index: int
    ts: float
    kind: str
    id: str
    version: int
    summary: str
    """In `colony events`' words (colony.cli.events.Summaries)."""
    job: str
    """The job it concerns ('' : none)."""
    node: str
    """The name of the node it concerns ('' : none)."""
    detail: dict[str, Any]
    live: bool
    node_id: str = ""
    """The id of the node it concerns ('' : none)."""


@dataclass(frozen=True)
class EventFilter:
    """Which events to show: of these kinds (none: every kind), of this job, of this node
    (its name or id), whose kind, id or summary holds `text` (any case)."""

    kinds: frozenset[str] = frozenset()
    job: str = ""
    node: str = ""
    text: str = ""

    def matches(self, row: EventRow) -> bool:
        if self.kinds and row.kind not in self.kinds:
            return False
        if self.job and row.job != self.job:
            return False
        if self.node and self.node not in (row.node, row.node_id):
            return False
        if self.text:
            wanted = self.text.casefold()
            return any(wanted in s.casefold() for s in (row.summary, row.id, row.kind))
        return True


# --- the model -------------------------------------------------------------------------

_PLACEHOLDER_TASK = {"command": "?"}
"""The task of a spec the model has not read yet (a job first heard of by a change)."""


@dataclass
class _Held:
    """What the model tracks per job beside its record."""

    spec_version: int = 0
    """The version the record's spec is of (0: a placeholder)."""
    last_event: str = ""
    last_event_ts: float = 0.0


class ConsoleModel:
    def __init__(self, history: int = 5000, samples: int = 60) -> None:
        self.connection = Connection()
        self.index = 0
        """The last change index applied (or loaded)."""
        self.loaded_index = 0
        """The index the last `Loaded` was consistent with: changes up to it only add events."""
        self.leader = ""
        self.manager = ""
        self.epoch = 0
        self.voters: list[str] = []
        self.nodes: dict[str, NodeRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        self.instances: dict[str, InstanceRecord] = {}
        self.events: deque[EventRow] = deque(maxlen=history)
        self.metrics: dict[str, NodeMetrics] = {}
        """Each node's latest sample."""
        self.samples = samples
        self._cpu: dict[str, deque[float]] = {}
        self._memory: dict[str, deque[float]] = {}
        self.members: dict[str, MembersReply] = {}
        """Each observer's latest view of the group."""
        self._jobs: dict[str, _Held] = {}
        self._summaries = Summaries()
        self._last_event = 0
        """The index of the last change made an event row (a replay after a reconnect
        may bring it again)."""

    # --- applying --------------------------------------------------------------------

    def apply(self, items: Iterable[FeedItem]) -> set[str]:
        """Apply `items` in order; the areas that changed (of AREAS)."""
        changed: set[str] = set()
        for item in items:
            if isinstance(item, Changed):
                self._changed(item, changed)
            elif isinstance(item, Sampled):
                self._sampled(item.metrics)
                changed.add("metrics")
                changed.add("nodes")
            elif isinstance(item, Loaded):
                self._loaded(item)
                changed.update(("nodes", "jobs", "instances"))
            elif isinstance(item, ConnectionChanged):
                self.connection = item.connection
                changed.add("connection")
            elif isinstance(item, MembersSeen):
                self.members[item.reply.observer] = item.reply
                changed.update(("members", "nodes"))
            elif isinstance(item, RolesSeen):
                roles = (item.leader, item.manager, item.epoch, list(item.voters))
                if roles != (self.leader, self.manager, self.epoch, self.voters):
                    self.leader, self.manager, self.epoch, self.voters = roles
                    changed.update(("roles", "nodes"))
            elif isinstance(item, JobsRead):
                for job in item.jobs:
                    self._read_job(job)
                changed.add("jobs")
        return changed

    def _read_job(self, job: JobRecord) -> None:
        """Take a job read whole: its spec for the version held (the rest of the record
        may be older than a change applied since the read), or all of it if newer."""
        held = self.jobs.get(job.name)
        if held is not None and held.version > job.version:
            return
        if held is not None and held.version == job.version:
            job = msgspec.structs.replace(held, spec=job.spec, source=job.source)
        self.jobs[job.name] = job
        self._jobs.setdefault(job.name, _Held()).spec_version = job.version

    def _loaded(self, item: Loaded) -> None:
        self.nodes = {n.node: n for n in item.nodes}
        self.jobs = {j.name: j for j in item.jobs}
        self.instances = {i.id: i for i in item.instances}
        self._jobs = {
            name: _read_whole(self._jobs.get(name), job.version) for name, job in self.jobs.items()
        }
        self._summaries.names.update({n.node: n.name for n in item.nodes if n.name})
        self.loaded_index = item.index
        self.index = max(self.index, item.index)

    def _changed(self, item: Changed, changed: set[str]) -> None:
        change = item.change
        if change.index <= self._last_event:
            return  # heard already (a replay after a reconnect)
        self._last_event = change.index
        if change.index > self.loaded_index:  # (else the last read holds it, or newer)
            self.index = change.index
            try:
                if self._upsert(change):
                    # a node's name shows on instances; an instance counts on its job and node
                    changed.update(("nodes", "jobs", "instances"))
            except msgspec.ValidationError:
                pass  # a record this console cannot read (a newer version's): its event shows
        row = self._event_row(change, item.live)
        self.events.append(row)
        changed.add("events")
        if row.job in self._jobs:
            held = self._jobs[row.job]
            held.last_event, held.last_event_ts = row.summary, row.ts
            changed.add("jobs")

    def _upsert(self, change: Change) -> bool:
        """Take the record a change carries; whether it is of a kind the model holds."""
        kind, id, detail = change.kind, change.id, change.detail
        if kind == "node":
            if change.version == 0:  # forgotten: its samples and membership view go too
                self.nodes.pop(id, None)
                self.metrics.pop(id, None)
                self.members.pop(id, None)
                self._cpu.pop(id, None)
                self._memory.pop(id, None)
            else:
                self.nodes[id] = msgspec.convert(detail, NodeRecord)
            return True
        if kind == "instance":
            if change.version == 0:
                self.instances.pop(id, None)
            else:
                self.instances[id] = msgspec.convert(detail, InstanceRecord)
            return True
        if kind == "job":
            if change.version == 0:
                self.jobs.pop(id, None)
                self._jobs.pop(id, None)
            else:
                self.jobs[id] = self._job_from(id, detail)
            return True
        return False

    def _job_from(self, name: str, detail: dict[str, Any]) -> JobRecord:
        """The job record a change carries, with the spec the model holds (a placeholder
        until one is read)."""
        held = self.jobs.get(name)
        placeholder = {"name": name, "task": _PLACEHOLDER_TASK}
        record = msgspec.convert({**detail, "spec": placeholder}, JobRecord)
        self._jobs.setdefault(name, _Held())
        if held is not None:
            record = msgspec.structs.replace(record, spec=held.spec)
        return record

    def _sampled(self, m: NodeMetrics) -> None:
        self.metrics[m.node] = m
        if m.node not in self._cpu:
            self._cpu[m.node] = deque(maxlen=self.samples)
            self._memory[m.node] = deque(maxlen=self.samples)
        self._cpu[m.node].append(m.used.cpu)
        self._memory[m.node].append(float(m.used.memory))

    def _event_row(self, change: Change, live: bool) -> EventRow:
        summary = self._summaries(change)  # (it learns node names from node changes)
        d = change.detail
        job = node_id = ""
        if change.kind == "job":
            job = change.id
        elif change.kind in ("node", "label"):
            node_id = change.id
        if not job and isinstance(d.get("job"), str):
            job = d["job"]
        if not node_id and isinstance(d.get("node"), str):
            node_id = d["node"]
        return EventRow(
            index=change.index,
            ts=change.ts,
            kind=change.kind,
            id=change.id,
            version=change.version,
            summary=summary,
            job=job,
            node=self.node_name(node_id) if node_id else "",
            detail=d,
            live=live,
            node_id=node_id,
        )

    # --- reading ---------------------------------------------------------------------

    def node_name(self, node: str) -> str:
        """A node's name as people know it (its id while no name is known)."""
        record = self.nodes.get(node)
        if record is not None and record.name:
            return record.name
        metrics = self.metrics.get(node)
        if metrics is not None and metrics.name:
            return metrics.name
        return self._summaries.names.get(node, node)

    def members_of(self, node: str) -> MembersReply | None:
        """`node`'s own view of the group (None: it has not said)."""
        return self.members.get(node)

    def stale_specs(self) -> set[str]:
        """The jobs whose spec the model holds is not of their current version."""
        return {
            name
            for name, job in self.jobs.items()
            if self._jobs.get(name, _Held()).spec_version != job.version
        }

    def node_rows(self) -> list[NodeRow]:
        """Every node, by name."""
        ids = set(self.nodes) | set(self.metrics)
        for reply in self._views():
            ids.update(m.node for m in reply.members)
        held = reserved(self.instances.values())
        placed: dict[str, int] = {}
        for i in self.instances.values():
            if i.desired == "run":
                placed[i.node] = placed.get(i.node, 0) + 1
        rows = [self._node_row(node, held, placed) for node in ids]
        return sorted(rows, key=lambda r: (r.name, r.node))

    def _node_row(self, node: str, held: dict[str, Resources], placed: dict[str, int]) -> NodeRow:
        record = self.nodes.get(node)
        m = self.metrics.get(node)
        used = held.get(node)
        return NodeRow(
            node=node,
            name=self.node_name(node),
            address=record.address if record else "",
            # (the record's status is the manager's word; until it says, membership's)
            status=record.status
            if record and record.status != "unknown"
            else self._member_status(node),
            drain=record.drain if record else "",
            eligible=record.eligible if record else False,
            roles=self._roles(node),
            cpu_reserved=used.cpu if used else 0.0,
            cpu_used=m.used.cpu if m else 0.0,
            cpu_capacity=record.cpu if record and record.cpu else (m.capacity.cpu if m else 0.0),
            memory_reserved=used.memory if used else 0,
            memory_used=m.used.memory if m else 0,
            memory_capacity=record.memory
            if record and record.memory
            else (m.capacity.memory if m else 0),
            instances=placed.get(node, 0),
            cpu_history=list(self._cpu.get(node, ())),
            memory_history=list(self._memory.get(node, ())),
            seen=m.ts if m else 0.0,
        )

    def _member_status(self, node: str) -> str:
        """What a membership view says of a node that has no record ('unknown': none says)."""
        for reply in self._views():
            for member in reply.members:
                if member.node == node:
                    return member.status
        return "unknown"

    def _views(self) -> Iterable[MembersReply]:
        """The membership views of the nodes known (by a record or a sample): a forgotten
        node's last view, held from before, names nodes no longer there."""
        known = self.nodes.keys() | self.metrics.keys()
        return (reply for observer, reply in self.members.items() if observer in known)

    def _roles(self, node: str) -> list[str]:
        roles = ["voter"] if node in self.voters else []
        if node == self.leader:
            roles.append("leader")
        if node == self.manager:
            roles.append(f"manager e{self.epoch}")
        return roles

    def job_rows(self) -> list[JobRow]:
        """Every job, by name."""
        by_job: dict[str, list[InstanceRecord]] = {}
        for i in self.instances.values():
            if i.desired == "run":
                by_job.setdefault(i.job, []).append(i)
        return [self._job_row(job, by_job.get(name, [])) for name, job in sorted(self.jobs.items())]

    def _job_row(self, job: JobRecord, wanted: list[InstanceRecord]) -> JobRow:
        running = [i for i in wanted if i.state == "running"]
        # (the monitor says a run without checks is healthy at once: no spec needed)
        healthy = [i for i in running if i.health == "healthy"]
        desired = job.replicas if job.status == "running" else 0
        r = job.rollout
        if r is not None and r.version == job.version and r.status == "running":
            # the manager's count also takes older instances whose spec is the same
            current = max(r.healthy, sum(i.version >= job.version for i in healthy))
        else:  # settled: what runs is the current version (a rollback's may be older)
            current = len(healthy)
        held = self._jobs.get(job.name, _Held())
        return JobRow(
            name=job.name,
            version=job.version,
            status=job.status,
            desired=desired,
            running=len(running),
            healthy=len(healthy),
            rollout=rollout_line(job, promote="waiting for promote"),
            progress=min(1.0, current / desired) if desired else 1.0,
            waiting_promote=waiting_promote(job),
            last_event=held.last_event,
            last_event_ts=held.last_event_ts,
            blocked=job.blocked,
        )

    def instance_rows(self, job: str) -> list[InstanceRow]:
        """The job's instances: those desired to run first, by slot."""
        mine = [i for i in self.instances.values() if i.job == job]
        mine.sort(key=lambda i: (i.desired != "run", i.slot, i.id))
        return [self._instance_row(i) for i in mine]

    def _instance_row(self, i: InstanceRecord) -> InstanceRow:
        record = self.nodes.get(i.node)
        host = record.address if record else ""
        port = next(iter(i.ports.values()), 0)
        return InstanceRow(
            id=i.id,
            job=i.job,
            version=i.version,
            slot=i.slot,
            node=self.node_name(i.node),
            state=i.state,
            desired=i.desired,
            health=i.health,
            restarts=i.restarts,
            started_at=i.started_at,
            address=f"{host}:{port}" if host and port else "",
            canary=i.canary,
            reason=i.reason or i.desired_reason,
            node_id=i.node,
        )

    def events_matching(
        self, f: EventFilter, limit: int = 1000, upto: int | None = None
    ) -> list[EventRow]:
        """The newest `limit` events `f` matches (with `upto`: of those at or before that
        change index), newest last."""
        found: list[EventRow] = []
        for row in reversed(self.events):
            if upto is not None and row.index > upto:
                continue
            if f.matches(row):
                found.append(row)
                if len(found) >= limit:
                    break
        found.reverse()
        return found


def _read_whole(held: _Held | None, version: int) -> _Held:
    """A job's tracking after a read of its whole record (at `version`, spec included)."""
    held = held or _Held()
    held.spec_version = version
    return held


def waiting_promote(job: JobRecord) -> bool:
    """Whether the rollout's canaries are all healthy and wait for someone to promote
    them (with auto_promote, the manager does)."""
    return waiting_canaries(job.rollout) and not job.spec.update.auto_promote
