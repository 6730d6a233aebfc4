"""The curator's view of the management database: nodes, labels, jobs, instances, and
membership's statuses, held in memory while its node acts as manager.

`load` reads it whole (paged queries); `View.apply` keeps it current from the change
stream, whose changes carry each object's whole record (`Change.detail`; version 0:
deleted). A job's change leaves its spec out, so a job at a spec version the view does
not hold waits in `waiting` until the shell reads that version (`missing`, `learn`).

Why log indexes and not versions decide what is newer: the stream is followed from a
point taken before the reads, so it replays changes the reads already hold, and a
deletion (version 0) or a purged job made again (its version starts over at 1) cannot
be ordered by version. Every object remembers the Raft log index its copy is from (a
read's index, or the change's `log_index`), and a kind remembers the index of its first
page: a change from no later than either is old news. One entry may change an object
more than once (a rollout's progress and the rollback it led to): of the changes from
one entry, the later in the change log is the newer. The curator's own writes apply
to the view at once (`committed`); a change from before one of them still brings what
others wrote (a node's registration, an instance's report), under the fields it wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from colony.shared.jobspec import JobSpec
from colony.shared.management import Management
from colony.shared.messages import (
    Change,
    Command,
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobPromote,
    JobRecord,
    NodeDrained,
    NodeRecord,
    NodeStatus,
    QueryRequest,
    RolloutProgress,
    Stored,
    placed_instance,
)

KINDS = {"node": "nodes", "label": "labels", "job": "jobs", "instance": "instances"}
"""The change kinds the view follows, and the kinds that read them."""
READ = 2**63
"""The change index a read stands for: after every change of the log index it was read at."""


@dataclass
class View:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    """The latest record of every job, with its spec."""
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)
    """Membership's status of each node, as this node's membership sees it."""
    answered: bool = False
    """Whether membership answered: until it has, a node it does not mention keeps the
    status recorded for it; from then on, such a node is unknown to it (`absent`)."""
    absent: dict[str, float] = field(default_factory=dict)
    """Recorded nodes membership does not mention -> for how many seconds now (the
    curator's clock, set before each reconcile: reconcile reads no clock)."""
    now: float = 0.0
    """The curator's clock (wall time), set before each reconcile: what time-based rules
    (min_healthy_time, rollout and drain deadlines) compare with."""
    specs: dict[tuple[str, int], JobSpec | None] = field(default_factory=dict)
    """Every (job, spec version) the view needs a spec of: None when it could not be read
    (the job is gone)."""
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Jobs changed to a spec version the view does not hold yet: the change's detail."""
    seen: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    """(change kind, id) -> the log index and change index the view's copy is from (a
    read's: READ), kept after a deletion."""
    floor: dict[str, int] = field(default_factory=dict)
    """Change kind -> the log index its first page was read at."""
    mine: dict[tuple[str, str], tuple[int, dict[str, Any] | None]] = field(default_factory=dict)
    """(change kind, id) -> the log index of the curator's own last write to it, and the
    fields it wrote (None: it removed it), until the stream brings that change: a change
    from before it keeps them (it still tells what others wrote, e.g. a registration)."""

    # --- reading it whole -------------------------------------------------------------

    def loaded(self, kind: str, index: int, objects: Iterable[Stored]) -> None:
        """Take one page of change kind `kind`'s objects, read at log `index`."""
        self.floor.setdefault(kind, index)
        for stored in objects:
            self.seen[(kind, stored.id)] = (index, READ)
            self._put(kind, stored.id, stored.value)

    def missing(self) -> set[tuple[str, int]]:
        """The (job, version) specs the view needs and does not hold."""
        wanted = {(job, int(detail["version"])) for job, detail in self.waiting.items()}
        wanted |= {(i.job, i.version) for i in self.instances.values() if i.job in self.jobs}
        return {key for key in wanted if key not in self.specs}

    def learn(self, job: str, version: int, record: JobRecord | None) -> None:
        """The spec of `job` at `version`, as read (None: there is none any more)."""
        self.specs[(job, version)] = record.spec if record else None
        detail = self.waiting.get(job)
        if detail is not None and int(detail["version"]) == version:
            del self.waiting[job]
            if record is not None:
                self.jobs[job] = msgspec.convert({**detail, "spec": record.spec}, JobRecord)

    def spec_of(self, instance: InstanceRecord) -> JobSpec | None:
        """The spec `instance` was placed with (its job's latest when that one is unknown)."""
        spec = self.specs.get((instance.job, instance.version))
        if spec is None and instance.job in self.jobs:
            spec = self.jobs[instance.job].spec
        return spec

    # --- following changes --------------------------------------------------------------

    def apply(self, change: Change) -> bool:
        """Take a change of the stream; False if the view holds as new a copy already."""
        key = (change.kind, change.id)
        if change.kind not in KINDS:
            return False
        this = (change.log_index, change.index)
        if this <= max(self.seen.get(key, (0, 0)), (self.floor.get(change.kind, 0), READ)):
            return False
        self.seen[key] = this
        detail = change.detail
        if key in self.mine:
            at, fields = self.mine[key]
            if change.log_index >= at:  # its own write, or later: the database's word
                del self.mine[key]
            elif fields is None or change.version == 0:  # it removed the object since
                return False
            else:  # from before its own write: the rest of the record is news
                detail = {**detail, **fields}
        if change.version == 0:
            self._drop(change.kind, change.id)
        elif change.kind == "label":  # a change says {"labels": ...}, a read the labels
            self._put(change.kind, change.id, change.detail.get("labels", {}))
        else:
            self._put(change.kind, change.id, detail)
        return True

    def _put(self, kind: str, id: str, value: Any) -> None:
        if kind == "node":
            self.nodes[id] = msgspec.convert(value, NodeRecord)
        elif kind == "label":
            self.labels[id] = dict(value)
        elif kind == "instance":
            self.instances[id] = msgspec.convert(value, InstanceRecord)
        elif kind == "job":
            self._put_job(id, value)

    def _put_job(self, name: str, value: dict[str, Any]) -> None:
        version = int(value["version"])
        if "spec" in value:  # read whole
            record = msgspec.convert(value, JobRecord)
            self.specs[(name, version)] = record.spec
        elif (spec := self.specs.get((name, version))) is not None:
            record = msgspec.convert({**value, "spec": spec}, JobRecord)
        else:
            self.waiting[name] = value
            return
        self.waiting.pop(name, None)
        self.jobs[name] = record

    def _drop(self, kind: str, id: str) -> None:
        if kind == "node":
            self.nodes.pop(id, None)
        elif kind == "label":
            self.labels.pop(id, None)
        elif kind == "instance":
            self.instances.pop(id, None)
        elif kind == "job":
            self.jobs.pop(id, None)
            self.waiting.pop(id, None)
            for key in [k for k in self.specs if k[0] == id]:
                del self.specs[key]

    # --- what the curator itself committed ------------------------------------------------

    def committed(self, command: Command, index: int, now: float) -> None:
        """Apply one of the curator's own commands, committed at log `index`, as the
        database did: the view must not wait for the stream to see its own decisions (a
        reconcile in between would decide them again)."""
        match command:
            case NodeStatus(node=node, status=status, reason=reason):
                self._own("node", node, index, {"status": status, "reason": reason})
            case JobBlocked(job=job, reason=reason):
                self._own("job", job, index, {"blocked": reason})
            case RolloutProgress():
                self._rollout(command, index, now)
            case JobPromote(job=job):
                rollout = self.jobs[job].rollout if job in self.jobs else None
                if rollout and rollout.status == "running" and not rollout.promoted:
                    promoted = msgspec.structs.replace(rollout, promoted=True)
                    self._own("job", job, index, {"rollout": promoted})
            case NodeDrained(node=node):
                if node in self.nodes and self.nodes[node].drain == "draining":
                    self._own("node", node, index, {"drain": "drained"})
            # JobRollback (auto_revert) makes a new version: the view learns its spec from
            # the stream, as of any submitted version (its RolloutProgress, committed
            # with it, already halted the rollout it reverts).
            case InstancesPlace(placements=placements):
                for p in placements:
                    self.instances[p.id] = placed_instance(p, now)
                    self.mine[("instance", p.id)] = (index, {})
            case InstancesStop(ids=ids, reason=reason):
                for id in ids:
                    if id in self.instances and self.instances[id].desired != "stop":
                        fields = {"desired": "stop", "desired_reason": reason}
                        self._own("instance", id, index, fields)
            case InstancesRemove(ids=ids):
                for id in ids:
                    self.instances.pop(id, None)
                    self.mine[("instance", id)] = (index, None)

    def _rollout(self, progress: RolloutProgress, index: int, now: float) -> None:
        """As the jobs kind records a rollout's progress: only that of the job's current
        rollout while it runs (a failed one may still be marked reverted); a final status
        ends it, keeping the counters and reason it leaves 0 or empty, and a success makes
        the version stable (`colony.consensus.kinds.jobs.progress`: change both together)."""
        record = self.jobs.get(progress.job)
        rollout = record.rollout if record else None
        open_to = ("running", "failed") if progress.status == "reverted" else ("running",)
        if not rollout or rollout.version != progress.version or rollout.status not in open_to:
            return
        final = progress.status != "running"
        fields: dict[str, Any] = {
            name: getattr(progress, name) or (getattr(rollout, name) if final else 0)
            for name in ("batch", "batch_started", "placed", "healthy")
        }
        fields["reason"] = progress.reason or (rollout.reason if final else "")
        rollout = msgspec.structs.replace(
            rollout, status=progress.status, ended=now if final else 0.0, **fields
        )
        stable = {"stable": progress.version} if progress.status == "succeeded" else {}
        self._own("job", progress.job, index, {"rollout": rollout, **stable})

    def _own(self, kind: str, id: str, index: int, fields: dict[str, Any]) -> None:
        """Write `fields` of object `id` (which the curator owns), committed at `index`."""
        held = {"node": self.nodes, "job": self.jobs, "instance": self.instances}[kind]
        base = held.get(id) or (NodeRecord(node=id) if kind == "node" else None)
        if base is not None:
            held[id] = msgspec.structs.replace(base, **fields)
            self.mine[(kind, id)] = (index, fields)

    def with_job(self, record: JobRecord) -> View:
        """A copy in which job `record.name` is `record` (what a plan reconciles)."""
        other = copy.copy(self)
        other.jobs = {**self.jobs, record.name: record}
        return other


async def load(management: Management) -> View:
    """The whole view, read page by page. Instances before jobs: while this node acts
    nobody else places or stops an instance (fenced), so only clients change what the
    reads may disagree on, and a job read after its instances is the newer of the two
    (it never looks as if its newest instances were missing)."""
    view = View()
    for change_kind in ("node", "label", "instance", "job"):
        for page in (await management.query_all(KINDS[change_kind])).pages:
            view.loaded(change_kind, page.index, page.objects)
    await fill(view, management)
    return view


async def fill(view: View, management: Management) -> None:
    """Read the specs the view misses (a job changed to a new version; instances placed
    at an older version than their job's latest)."""
    for job, version in sorted(view.missing()):
        where = {"version": str(version)}
        reply = await management.query(QueryRequest(key=job, kind="jobs", where=where))
        found = [msgspec.convert(s.value, JobRecord) for s in reply.objects]
        view.learn(job, version, found[0] if found else None)
