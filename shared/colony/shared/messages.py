"""Typed, versioned wire messages and their codec.

Every message is a msgspec struct with a schema major version ``v``, a
``cause`` id (what made it happen, so every effect can be traced) and a
timestamp ``ts``. Decoding validates types; unknown fields are ignored so
that a newer minor version can roll out node by node, while a message of a
newer *major* version than this code knows is refused (its meaning changed).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import msgspec

from colony.shared.jobspec import (
    MAX_REPLICAS,
    MAX_SOURCE_BYTES,
    HealthCheck,
    JobName,
    JobSpec,
    SpecChange,
)

M = TypeVar("M", bound="Message")

MAX_PAYLOAD = 1024 * 1024
"""Largest message accepted (NATS' default max_payload)."""
MAX_INT = 2**53 - 1
"""Largest counter (term, epoch, index) a message may carry: exact in JSON everywhere,
and far inside SQLite's 64-bit INTEGER, so applying it can never overflow."""

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
"""A term, epoch, index or sequence number: bounded at decode."""
Reason = Annotated[str, msgspec.Meta(max_length=1024)]
"""Free text that travels into the change log: bounded at decode."""


def new_id() -> str:
    """A fresh, unique id for causes and requests."""
    return uuid.uuid4().hex[:16]


class Message(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every wire message."""

    VERSION: ClassVar[int] = 1
    """The schema major version this code writes and understands."""

    v: int = 1
    """Schema major version of this message; `encode` stamps the type's VERSION
    (a type that bumps VERSION overrides this default too)."""
    cause: str = msgspec.field(default_factory=new_id)
    """Id of the stimulus this message stems from."""
    ts: float = msgspec.field(default_factory=time.time)
    """Wall-clock time (unix seconds) when the sender made it."""


class DecodeError(ValueError):
    """A payload is not a valid message of the expected type."""


class NewerVersion(DecodeError):
    """A message of a newer schema major version than this code knows (upgrade it)."""


_encoder = msgspec.json.Encoder()


class _Header(msgspec.Struct):
    v: int = 0


def encode(msg: Message) -> bytes:
    if msg.v != msg.VERSION:
        msg = msgspec.structs.replace(msg, v=msg.VERSION)
    return _encoder.encode(msg)


def decode(data: bytes, kind: type[M]) -> M:
    """Decode and validate `data` as `kind`, or raise DecodeError saying why."""
    if len(data) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(data)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    try:
        # The version first: a newer major version may have changed any field.
        version = msgspec.json.decode(data, type=_Header).v
        if version > kind.VERSION:
            raise NewerVersion(
                f"{kind.__name__} has schema version {version}; this node understands up to "
                f"{kind.VERSION} (upgrade it)"
            )
        return msgspec.json.decode(data, type=kind)
    except RecursionError:
        # msgspec stops at its own depth limit: refuse cleanly, never unwind the listener
        raise DecodeError(f"malformed {kind.__name__}: nested too deeply") from None
    except msgspec.ValidationError as e:
        raise DecodeError(f"invalid {kind.__name__}: {e}") from None
    except msgspec.DecodeError as e:
        raise DecodeError(f"malformed {kind.__name__}: {e}") from None


def decode_or_drop(data: bytes, kind: type[M], subject: str, log: logging.Logger) -> M | None:
    """Decode, or log what was wrong with the message on `subject` and return None."""
    try:
        return decode(data, kind)
    except DecodeError as e:
        preview = data[:120].decode("utf-8", "replace")
        log.warning(
            "dropped message",
            extra={"subject": subject, "reason": str(e), "payload": preview},
        )
        return None


def to_builtins(msg: Message) -> dict[str, Any]:
    """The message as plain JSON-able data (for --json output)."""
    return msgspec.to_builtins(msg)


class Signed(Message, kw_only=True, frozen=True):
    """A message only the cluster's own nodes may send: `colony.shared.signing` signs
    and verifies it with the cluster secret."""

    mac: str = ""
    """HMAC-SHA256 (hex) of the message encoded with mac = ''."""


# --- resources ------------------------------------------------------------------


class Resources(msgspec.Struct, frozen=True):
    """An amount of compute: cpu in cores, memory in bytes."""

    cpu: float = 0.0
    memory: int = 0

    def __sub__(self, other: Resources) -> Resources:
        return Resources(cpu=self.cpu - other.cpu, memory=self.memory - other.memory)


# --- monitor ---------------------------------------------------------------------


class ProcessUsage(msgspec.Struct, frozen=True):
    """What one of the node's own processes uses."""

    name: str
    pid: int
    rss: int
    """Resident memory, bytes."""
    cpu_percent: float
    """Percent of one core since the previous sample."""


class HostMetrics(msgspec.Struct, frozen=True):
    """The host a node runs on, as psutil reads it."""

    cpu_count: int
    cpu_percent: float
    """Percent of all cores."""
    load: tuple[float, float, float]
    memory_total: int
    memory_available: int
    disk_path: str
    """The node's state dir, whose disk is measured."""
    disk_total: int
    disk_free: int
    process_count: int
    """Processes on the host."""


class LatestMetricsRequest(Message, kw_only=True, frozen=True):
    """Ask a monitor for its most recent sample."""


class NodeMetrics(Signed, kw_only=True, frozen=True):
    """One sample of a node's host and of the node's own processes.

    Observed state, written only by the monitor of the node it describes.
    """

    node: str
    """Node id."""
    name: str
    """Human name of the node (node-1, ...)."""
    seq: int
    """Sample number since the monitor started; advances by one per interval."""
    interval: float
    """Seconds between samples."""
    node_started: float
    """When the node's agent started (unix seconds); its age derives from it."""
    nats_url: str = ""
    """The node's own nats-server, which its services talk to."""
    metrics_url: str = ""
    """The monitor's Prometheus endpoint."""
    host: HostMetrics
    processes: list[ProcessUsage]
    """The node's own processes (nats-server and services)."""
    capacity: Resources
    """Declared in the node's config: what the scheduler may hand out on it."""
    used: Resources
    """What the node's own processes use now."""
    free: Resources
    """capacity - used: what scheduling and leader preference read."""


# --- service metrics -------------------------------------------------------------
# What a service knows best (Raft, membership) it hands to its node's monitor, which
# serves it on the node's Prometheus endpoint with its own figures (subjects.service_metrics).

MetricName = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,199}$")]
"""A Prometheus metric name (no ':' , which is reserved for recording rules)."""
LabelName = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]{0,99}$")]
LabelValue = Annotated[str, msgspec.Meta(max_length=256)]


class Bucket(msgspec.Struct, frozen=True):
    """Observations of a histogram at most `le` (cumulative). Bounds are finite: the
    +Inf bucket is the sample's count (JSON has no infinity)."""

    le: float
    count: Count


class MetricSample(msgspec.Struct, frozen=True):
    """One series of a family: its labels and value (a histogram's buckets, count, sum)."""

    labels: dict[LabelName, LabelValue] = {}
    value: float = 0.0
    """A gauge's or a counter's value (finite: JSON carries no NaN or infinity)."""
    buckets: list[Bucket] = []
    count: Count = 0
    sum: float = 0.0


class MetricFamily(msgspec.Struct, frozen=True):
    """One metric family, as Prometheus shows it: a counter's name ends in _total."""

    name: MetricName
    type: Literal["gauge", "counter", "histogram"]
    help: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    samples: list[MetricSample] = []


class ServiceMetricsRequest(Message, kw_only=True, frozen=True):
    """Ask a service for its metric families now (the monitor does, at each scrape)."""


class ServiceMetrics(Message, kw_only=True, frozen=True):
    """A service's metric families; each name starts with colony_<service>_."""

    node: str
    service: str
    families: list[MetricFamily]


# --- membership ------------------------------------------------------------------

MemberStatus = Literal["alive", "suspect", "dead", "left"]


class NodeMeta(msgspec.Struct, frozen=True):
    """What a member says about itself; carried with its membership, bounded in size."""

    nats_url: str = ""
    roles: tuple[str, ...] = ()
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    version: str = ""
    free: Resources = Resources()
    """Free resources, from the node's monitor."""


class MemberUpdate(msgspec.Struct, frozen=True):
    """One piece of gossip: `node` is `status` at `incarnation` (meta rides with alive)."""

    node: str
    status: MemberStatus
    incarnation: Count
    meta: NodeMeta | None = None
    by: str = ""
    """With suspect: the member whose own probe failed (its accuser). Suspicion
    is confirmed by distinct accusers, not by members merely passing it on."""


class Gossip(Message, kw_only=True, frozen=True):
    """A membership protocol message: a ping, an ack, a push-pull half, a tell or news."""

    sender: str
    seq: int = 0
    """The probe this ping or ack belongs to (0 for other gossip)."""
    updates: list[MemberUpdate] = msgspec.field(default_factory=list)


class PingReqRequest(Message, kw_only=True, frozen=True):
    """Ask a member to probe `target` for `sender`: it answers with the target's ack, or
    with a 504 error (a nack) if the target did not answer it either."""

    sender: str
    target: str
    seq: int
    updates: list[MemberUpdate] = msgspec.field(default_factory=list)


class MemberChanged(Message, kw_only=True, frozen=True):
    """Change event: in `observer`'s view, `node` is now `status` (cause: who said so)."""

    observer: str
    node: str
    status: MemberStatus
    incarnation: int
    previous: MemberStatus | None = None
    """None when `node` just joined."""


class MembersRequest(Message, kw_only=True, frozen=True):
    """Ask a member for its view of the group."""


class MemberView(msgspec.Struct, frozen=True):
    node: str
    status: MemberStatus
    incarnation: int
    meta: NodeMeta
    since: float
    """Seconds since its status last changed in this view."""


class MembersReply(Message, kw_only=True, frozen=True):
    observer: str
    members: list[MemberView]
    health: int = 0
    """The observer's Lifeguard health score: 0 is healthy; higher means it has
    been missing its own deadlines and has slowed its probing down."""


# --- consensus -------------------------------------------------------------------
# Commands are only ever appended: a kind's tag and meaning never change, so an
# old log entry means the same thing to every version that applies it. A field is
# never added to a released command (a new tag is): commands forbid unknown fields,
# so a voter that meets a field it does not know stops (it needs a newer version)
# rather than apply the command without it and diverge from the voters that know it.


class CommandStruct(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every command (each has its own tag): unknown fields are refused."""


ObjectId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""An object's id: it names the object's change subject, so one subject token."""


class KvPut(CommandStruct, tag="kv.put"):
    """Set `key` to `value` (the debug key-value table)."""

    key: ObjectId
    value: str


class KvDelete(CommandStruct, tag="kv.delete"):
    key: ObjectId


class KvCas(CommandStruct, tag="kv.cas"):
    """Set `key` to `value` only if it now holds `expected` (None: only if absent)."""

    key: ObjectId
    expected: str | None
    value: str


class Barrier(CommandStruct, tag="barrier"):
    """Changes nothing: once applied here, this replica has every earlier commit."""


MANAGER = "manager"
"""The name of the manager lease: its holder is the one node acting as manager."""


class LeaseGrant(CommandStruct, tag="lease.grant"):
    """Give the free lease `name` to `holder` for `ttl` seconds of its own clock, at
    epoch `expected_epoch` + 1; refused unless the lease is at `expected_epoch` and free."""

    holder: ObjectId
    ttl: Annotated[float, msgspec.Meta(gt=0, le=3600)]
    expected_epoch: Count
    reason: Reason = ""
    name: ObjectId = MANAGER
    term: Count = 0
    """The Raft term the holder asked in (0: unknown); see LeaseRenew.term."""


class LeaseRenew(CommandStruct, tag="lease.renew"):
    """The holder renews its lease: sent with the holder's epoch (Proposal.epoch)."""

    holder: ObjectId
    name: ObjectId = MANAGER
    term: Count = 0
    """The Raft term the holder asked in (0: unknown). A leader of a later term knows
    the entry reached it before it led, however late it applies it: its expiry clock
    can start from then (`lease.countdown_from` in the consensus service)."""


class LeaseEnd(CommandStruct, tag="lease.end"):
    """End the lease at `epoch`: released by its holder, or expired (the Raft leader
    saw no renewal for its ttl plus a drift margin on its own clock)."""

    epoch: Count
    how: Literal["released", "expired"]
    reason: Reason = ""
    name: ObjectId = MANAGER


class LeaderElected(CommandStruct, tag="leader.elected"):
    """`node` leads Raft in `term` (its first entry of the term: also a barrier)."""

    node: ObjectId
    term: Count


class VoterChanged(CommandStruct, tag="voter.changed"):
    """Recorded after Raft's own cluster change committed: `node` became or ceased to be a voter."""

    node: ObjectId
    change: Literal["added", "removed"]
    reason: Reason


class LeadershipTransferred(CommandStruct, tag="leader.transfer"):
    """The leader hands Raft leadership from `source` to `target`, and why."""

    source: ObjectId
    target: ObjectId
    reason: Reason


class Prune(CommandStruct, tag="log.prune"):
    """The Raft leader bounds the management database (colony.consensus.kinds.retention):
    forget the idempotency records of the entries up to log index `proposals_upto`, refuse
    from now on a proposal made before `refuse_before` (unix seconds: its record may be
    gone), and drop the changes up to `changes_upto` (on the change stream already)."""

    proposals_upto: Count
    refuse_before: Annotated[float, msgspec.Meta(ge=0, le=MAX_INT)]
    changes_upto: Count


LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
"""A label's name (and a non-empty value): Kubernetes' rule, 1-63 characters."""
LABEL_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
"""A label key's optional prefix (before a '/'): a DNS subdomain, at most 253 characters."""
NodeLabelKey = Annotated[
    str, msgspec.Meta(pattern=rf"^({LABEL_PREFIX}/)?{LABEL_NAME}$", max_length=253 + 1 + 63)
]
NodeLabelValue = Annotated[str, msgspec.Meta(pattern=rf"^({LABEL_NAME})?$", max_length=63)]
MAX_NODE_LABELS = 64
"""Labels one node may have."""


class NodeLabel(CommandStruct, tag="node.label"):
    """Set labels of node `node` (a value) or remove them (None); its other labels stay."""

    node: ObjectId
    labels: Annotated[
        dict[NodeLabelKey, NodeLabelValue | None],
        msgspec.Meta(min_length=1, max_length=MAX_NODE_LABELS),
    ]


# --- nodes, jobs, instances (colony.consensus.kinds.nodes / jobs / instances) ---------

NodeStatusName = Literal["alive", "suspect", "dead", "left"]


class NodeRegister(CommandStruct, tag="node.register"):
    """A node's agent says what its node offers (on start, and when that changes).
    Observed state: proposed by the node itself, without an epoch."""

    node: ObjectId
    name: Annotated[str, msgspec.Meta(max_length=64)]
    address: Annotated[str, msgspec.Meta(max_length=255)]
    """The host its instances are reached at."""
    cpu: Annotated[float, msgspec.Meta(ge=0, le=65536)]
    """Declared cores."""
    memory: Annotated[int, msgspec.Meta(ge=0, le=2**50)]
    """Declared bytes of memory."""
    drivers: list[Annotated[str, msgspec.Meta(max_length=32)]]
    port_lo: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    port_hi: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    """The range instance ports are given from (both ends included)."""


class NodeStatus(CommandStruct, tag="node.status"):
    """The manager records a node's status as membership sees it (with its epoch)."""

    node: ObjectId
    status: NodeStatusName
    reason: Reason = ""


class NodeEligibility(CommandStruct, tag="node.eligibility"):
    """An operator makes a node (in)eligible for new instances."""

    node: ObjectId
    eligible: bool
    reason: Reason = ""


MAX_DRAIN_DEADLINE = 7 * 86400.0


class NodeDrain(CommandStruct, tag="node.drain"):
    """An operator drains a node (ineligible; its instances move away under each job's
    update strategy, all of them at the deadline) or undrains it (eligible again).
    Open to clients."""

    node: ObjectId
    drain: bool
    deadline: Annotated[float, msgspec.Meta(ge=0, le=MAX_DRAIN_DEADLINE)] = 3600.0
    """Seconds from now after which what still runs there is stopped at once (0: none)."""
    reason: Reason = ""


class NodeDrained(CommandStruct, tag="node.drained"):
    """The manager records that a draining node runs nothing any more (with its epoch)."""

    node: ObjectId


class JobRun(CommandStruct, tag="job.run"):
    """Submit a job: a new job, or a new version of it when its spec changed (the same
    spec again changes nothing). Open to clients."""

    spec: JobSpec
    source: Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_BYTES)] = ""
    """The job file's text, as given."""
    file: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    """Where it came from (for history)."""
    cause: Reason = ""
    """Who submitted it and how ("alice@host: colony job run web.yaml"), for history."""


class JobScale(CommandStruct, tag="job.scale"):
    job: JobName
    replicas: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]
    reason: Reason = ""


class JobStop(CommandStruct, tag="job.stop"):
    """Stop every instance of `job`; with `purge`, forget the job once they are gone."""

    job: JobName
    purge: bool = False
    reason: Reason = ""


class JobBlocked(CommandStruct, tag="job.blocked"):
    """The manager records why some of a job's instances cannot be placed now ('' : they
    can again)."""

    job: JobName
    reason: Reason


class JobPromote(CommandStruct, tag="job.promote"):
    """Promote the canaries of `job`'s rollout: the rest of its instances are replaced
    next. Open to clients (and the manager, for auto_promote)."""

    job: JobName
    reason: Reason = ""
    version: Count = 0
    """Only the canaries of this version's rollout (0: of the rollout running now): the
    manager's auto_promote must not promote a version submitted since it decided."""


class JobRollback(CommandStruct, tag="job.rollback"):
    """Make a new version of `job` whose spec is version `version`'s (0: the latest
    version before the current one whose rollout succeeded). Open to clients; the manager
    proposes it for auto_revert."""

    job: JobName
    version: Count = 0
    cause: Reason = ""
    from_version: Count = 0
    """Only if the job is at this version now (0: whichever): the manager's auto_revert
    must not undo a version submitted since it decided."""


RolloutStatus = Literal["running", "succeeded", "failed", "reverted", "superseded", "stopped"]
"""running: placing or replacing; succeeded: every instance of the version is healthy;
failed: a deadline passed or a new instance failed (the rollout halted where it was);
reverted: failed, and a rollback to the last healthy version was made; superseded: a newer
version was submitted first; stopped: the job was stopped first."""


class RolloutProgress(CommandStruct, tag="job.rollout"):
    """The manager records how `job`'s rollout of `version` is going (with its epoch).
    Ignored unless `version` is the job's current rollout."""

    job: JobName
    version: Count
    status: RolloutStatus = "running"
    reason: Reason = ""
    batch: Count = 0
    """Batches started so far."""
    batch_started: float = 0.0
    """When the current batch started (its progress deadline runs from then)."""
    placed: Count = 0
    """Instances of the version placed (canaries included)."""
    healthy: Count = 0
    """Of those, healthy for at least min_healthy_time."""


MAX_FAILED_ON = 16
"""Nodes a slot's failure history names at most (`Placement.failed_on`)."""


class Placement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The manager's decision that instance `id` (replica `slot` of `job` at `version`)
    runs on `node`, reserving `cpu` and `memory` and the given ports there."""

    id: ObjectId
    job: JobName
    version: Count
    slot: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPLICAS)]
    node: ObjectId
    cpu: Annotated[float, msgspec.Meta(ge=0, le=1024)]
    memory: Annotated[int, msgspec.Meta(ge=0, le=2**50)]
    ports: dict[str, Annotated[int, msgspec.Meta(ge=1, le=65535)]] = {}
    replaces: str = ""
    """The instance this one replaces ('' : none)."""
    reason: Reason = ""
    """Why it was placed (new job, scaled to 6, node-3 is dead...)."""
    failed_on: Annotated[list[ObjectId], msgspec.Meta(max_length=MAX_FAILED_ON)] = []
    """The nodes where earlier instances of this slot failed (their restarts ran out),
    least recent first: the slot's next replacement avoids them."""
    canary: bool = False
    """A canary of a rollout: it runs beside the slot's older instance until promoted."""


class InstancesPlace(CommandStruct, tag="instance.place"):
    """Desired state: place these instances (manager only, with its epoch)."""

    placements: Annotated[list[Placement], msgspec.Meta(min_length=1, max_length=4096)]


class InstancesStop(CommandStruct, tag="instance.stop"):
    """Desired state: these instances should no longer run (manager only)."""

    ids: Annotated[list[ObjectId], msgspec.Meta(min_length=1, max_length=4096)]
    reason: Reason


class InstancesRemove(CommandStruct, tag="instance.remove"):
    """Forget these instances: desired stopped and no longer running (manager only)."""

    ids: Annotated[list[ObjectId], msgspec.Meta(min_length=1, max_length=4096)]


InstanceState = Literal["pending", "starting", "running", "exited", "failed", "lost"]
"""pending: placed, not started yet; exited: ended (by itself or stopped); failed: it
could not start, or its restarts ran out; lost: its node is gone and cannot say."""


class InstanceReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What one instance is doing, as the node running it observed it."""

    id: ObjectId
    state: InstanceState
    seq: Count
    """This node's count of reports about this instance: an older one never overwrites a
    newer one (reports are re-sent until recorded)."""
    exit_code: int | None = None
    reason: Reason = ""
    """Why it is in this state, in plain words."""
    restarts: Count = 0
    pid: Count = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    at: float = 0.0
    """When the node observed this (its own clock)."""


class InstancesReport(CommandStruct, tag="instance.report"):
    """Observed state, from the node that runs the instances (no epoch: only `node` may
    report about instances placed on it)."""

    node: ObjectId
    reports: Annotated[list[InstanceReport], msgspec.Meta(min_length=1, max_length=4096)]


Health = Literal["healthy", "unhealthy"]


class HealthReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A health transition of one run of an instance, as its node's monitor saw it."""

    id: ObjectId
    health: Health
    run: float
    """The `started_at` of the run it checked: a report about an older run than the
    recorded one is ignored; a newer run's report is kept for when its start is recorded."""
    output: Reason = ""
    """The deciding check's last output (an HTTP status line, an error, an exec's output)."""
    check: Annotated[str, msgspec.Meta(max_length=128)] = ""
    """The name of the check that decided ('' : no checks: healthy while it runs)."""
    seq: Count
    """The monitor's clock in microseconds when it decided: a lower one never overwrites."""
    at: float = 0.0


class InstancesHealth(CommandStruct, tag="instance.health"):
    """Observed state: health transitions from the monitor of `node` (no epoch: only
    about instances placed on `node`)."""

    node: ObjectId
    reports: Annotated[list[HealthReport], msgspec.Meta(min_length=1, max_length=4096)]


Command = (
    KvPut
    | KvDelete
    | KvCas
    | Barrier
    | LeaseGrant
    | LeaseRenew
    | LeaseEnd
    | LeaderElected
    | VoterChanged
    | LeadershipTransferred
    | Prune
    | NodeLabel
    | NodeRegister
    | NodeStatus
    | NodeEligibility
    | NodeDrain
    | NodeDrained
    | JobRun
    | JobScale
    | JobStop
    | JobBlocked
    | JobPromote
    | JobRollback
    | RolloutProgress
    | InstancesPlace
    | InstancesStop
    | InstancesRemove
    | InstancesReport
    | InstancesHealth
)
"""Every command: the consensus service's kinds (colony.consensus.kinds) say which of
them only the service itself proposes, and which need the manager's epoch."""


# --- what the nodes, jobs and instances kinds hold (Stored.value; Change.detail) --------
# Clients read them with `msgspec.convert(stored.value, InstanceRecord)`.


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    name: str = ""
    address: str = ""
    cpu: float = 0.0
    memory: int = 0
    drivers: list[str] = []
    port_lo: int = 0
    port_hi: int = 0
    status: str = "unknown"
    """alive, suspect, dead, left (membership, as the manager recorded it); unknown
    until the manager has recorded it."""
    reason: str = ""
    eligible: bool = True
    drain: Literal["", "draining", "drained"] = ""
    drain_deadline: float = 0.0
    """When what still runs on a draining node is stopped at once (0: never)."""
    drain_reason: str = ""
    registered: float = 0.0
    """When its agent last registered it (the entry's time)."""
    changed: float = 0.0


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: int
    """The spec's version: 1, then one more for every changed spec submitted."""
    spec: JobSpec
    source: str = ""
    file: str = ""
    replicas: int = 0
    """How many instances are wanted now (the spec's, or the last `colony job scale`)."""
    status: Literal["running", "stopped"] = "running"
    purge: bool = False
    """Stopped with --purge: forgotten once its instances are gone."""
    blocked: str = ""
    """Why some instances cannot be placed now ('' : none blocked)."""
    cause: str = ""
    """Who or what made this version (JobRun.cause, or the rollback's)."""
    rollout: Rollout | None = None
    """The rollout of this version (None: the job predates rollouts)."""
    stable: int = 0
    """The latest version whose rollout succeeded (0: none yet): what auto_revert and a
    plain `colony job rollback` go back to."""
    submitted: float = 0.0
    changed: float = 0.0


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """How a job's current version is replacing the one before (state in the management
    database: a new manager resumes it from here)."""

    version: int
    previous: int = 0
    """The version it replaces (0: a new job)."""
    status: RolloutStatus = "running"
    reason: str = ""
    canaries: int = 0
    """Canaries it runs before the rest (0: none)."""
    promoted: bool = False
    """Canaries promoted (True from the start without canaries)."""
    batch: int = 0
    batch_started: float = 0.0
    placed: int = 0
    healthy: int = 0
    started: float = 0.0
    """When the version was submitted (the entry's time)."""
    ended: float = 0.0


class JobVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a job, for `colony job history` (the `job_versions` read)."""

    job: str
    version: int
    submitted: float
    cause: str = ""
    file: str = ""
    outcome: str = ""
    """Its rollout's end: succeeded, failed, reverted, superseded, stopped ('' : still
    rolling out, or from before rollouts)."""
    reason: str = ""
    current: bool = False
    spec: JobSpec | None = None


class InstanceRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    job: str
    version: int
    slot: int
    node: str
    cpu: float
    memory: int
    ports: dict[str, int] = {}
    replaces: str = ""
    desired: Literal["run", "stop"] = "run"
    desired_reason: str = ""
    """Why it was placed (desired run) or stopped (desired stop)."""
    state: str = "pending"
    """An InstanceState, as its node last reported it."""
    exit_code: int | None = None
    reason: str = ""
    restarts: int = 0
    pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    placed: float = 0.0
    """When it was placed (the entry's time)."""
    changed: float = 0.0
    seq: int = 0
    """The seq of the last report recorded."""
    failed_on: list[str] = []
    """Its placement's `failed_on`: where earlier instances of its slot failed."""
    canary: bool = False
    health: str = ""
    """healthy or unhealthy, as its node's monitor last said of its current run ('' : not
    known yet: starting, or in its grace)."""
    health_output: str = ""
    health_check: str = ""
    health_at: float = 0.0
    """When the monitor decided (its node's clock)."""
    health_run: float = 0.0
    """The `started_at` of the run the health is about."""
    healthy_since: float = 0.0
    """When it turned healthy (the entry's time; 0: not healthy)."""
    health_seq: int = 0


def placed_instance(p: Placement, at: float) -> InstanceRecord:
    """The record of instance `p` just placed, at `at` (the entry's time): desired run,
    pending. The instances kind stores it; the curator's view takes its own placements
    so, without waiting for their changes."""
    return InstanceRecord(
        id=p.id,
        job=p.job,
        version=p.version,
        slot=p.slot,
        node=p.node,
        cpu=p.cpu,
        memory=p.memory,
        ports=dict(p.ports),
        replaces=p.replaces,
        desired_reason=p.reason,
        placed=at,
        changed=at,
        failed_on=list(p.failed_on),
        canary=p.canary,
    )


# --- the node agent and the curator -------------------------------------------------


class LogsRequest(Message, kw_only=True, frozen=True):
    """Read an instance's output from the node that runs it."""

    instance: str
    stream: Literal["stdout", "stderr"] = "stdout"
    offset: int = -1
    """Where to read from, in bytes of everything it wrote to the stream (-1: the last
    `max_bytes`)."""
    max_bytes: Annotated[int, msgspec.Meta(ge=1, le=512 * 1024)] = 64 * 1024


class LogsReply(Message, kw_only=True, frozen=True):
    instance: str
    data: str
    """The bytes read, decoded as UTF-8 (undecodable bytes replaced)."""
    offset: int
    """Where `data` starts (later than asked when older output was rotated away)."""
    next: int
    """Where to read from next (follow: ask again from here)."""
    running: bool


class PlanRequest(Message, kw_only=True, frozen=True):
    """Ask the manager what submitting `spec` would do (nothing is stored)."""

    spec: JobSpec


class PlannedPlacement(msgspec.Struct, frozen=True):
    slot: int
    node: str
    ports: dict[str, int] = {}


class PlanReply(Message, kw_only=True, frozen=True):
    job: str
    change: Literal["new", "update", "unchanged", "restart"]
    """As JobRun's outcome would say: restart is a stopped job run again, same spec."""
    version: int
    """The version the job would be at."""
    place: list[PlannedPlacement] = []
    stop: list[str] = []
    """Instances that would be stopped."""
    unplaced: int = 0
    """Instances that would not fit anywhere (see `no_fit`)."""
    no_fit: list[str] = []
    """Why, per reason and node count ("3 nodes lack memory: ...")."""
    epoch: int = 0
    """The manager's epoch that planned it."""
    diff: list[SpecChange] = []
    """An update: every field that differs from the running version."""
    in_place: bool = False
    """An update the running instances take as they are (nothing is replaced)."""
    replace: int = 0
    """An update: instances it replaces, `max_parallel` at a time after `canary` canaries."""
    max_parallel: int = 0
    canary: int = 0


# --- health checks: the agent tells its node's monitor what to check ---------------


class CheckTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One run of an instance on this node, and how to check it."""

    id: str
    job: str
    version: int
    run: float
    """Its `started_at` (HealthReport.run)."""
    pid: int = 0
    host: str
    """Where its ports answer (the node's address)."""
    ports: dict[str, int] = {}
    env: dict[str, str] = {}
    """Its env as the agent gave it (exec checks run with it)."""
    workdir: str = ""
    checks: list[HealthCheck] = []
    """None: healthy while it runs."""


class CheckTargetsRequest(Message, kw_only=True, frozen=True):
    pass


class CheckTargets(Message, kw_only=True, frozen=True):
    """Every instance running on `node` now (the whole set, every time)."""

    node: str
    targets: list[CheckTarget] = []


class CheckState(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    check: str
    ok: bool
    output: str = ""
    at: float = 0.0
    """When it last ran (0: not yet)."""
    passes: int = 0
    """In a row, up to now."""
    failures: int = 0
    health: str = ""
    """The instance's health as this monitor decided it ('' : not yet)."""


class CheckStatesRequest(Message, kw_only=True, frozen=True):
    instances: list[str] = []
    """These instances' checks ([] : every instance on the node)."""


class CheckStates(Message, kw_only=True, frozen=True):
    node: str
    checks: list[CheckState] = []


# --- service discovery ----------------------------------------------------------------


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    node: str
    host: str
    port: int = 0
    """The asked-for port (0: the job has no ports)."""
    ports: dict[str, int] = {}
    version: int = 0
    healthy_since: float = 0.0


class EndpointsRequest(Message, kw_only=True, frozen=True):
    job: str
    port: str = ""
    """A port name of the job ('' : its first port)."""


class EndpointsReply(Message, kw_only=True, frozen=True):
    """The healthy instances of `job` (desired run, running, healthy), in instance order.
    Published on `endpoints_changed(job)` whenever the set changes."""

    job: str
    port: str = ""
    endpoints: list[Endpoint] = []
    epoch: int = 0
    """The manager's epoch that said it (a watcher ignores a lower one)."""
    index: int = 0
    """The change index the set reflects."""


class Proposal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    """Idempotency key, chosen by the proposer: a retried id gets the first result
    back and is never applied twice."""
    command: Command
    epoch: Count = 0
    """The manager's lease epoch when proposed on the manager's behalf (0: not): the
    command is refused, and nothing applied, unless that epoch is the current one."""


class Outcome(msgspec.Struct, frozen=True):
    """What applying one proposal did."""

    ok: bool
    value: str | None = None
    """For kv commands: the key's value after the command."""
    version: int = 0
    """For kv commands: the key's version after the command (0: absent)."""
    error: str = ""
    """Why it was refused (ok is False): the command was valid but did not apply."""
    index: int = 0
    """The log index where the proposal was first applied (a retry reports the same)."""
    code: str = ""
    """Why it was refused, for code to check ('' : no code; see FENCED)."""


FENCED = "fenced"
"""Outcome.code of a proposal refused for its manager's epoch: not the manager lease's
current one (the proposer no longer acts as manager)."""


class ProposeRequest(Message, kw_only=True, frozen=True):
    """Commit these proposals, in order, in one log entry; reply once committed and applied."""

    proposals: list[Proposal]


class ProposeReply(Message, kw_only=True, frozen=True):
    index: int
    """The Raft log index that holds the batch."""
    outcomes: list[Outcome]


class QueryRequest(Message, kw_only=True, frozen=True):
    """Read a key: linearizable by default (a barrier committed first), or this replica's copy."""

    key: str
    """The object to read (kind kv: a key); '' for every object of a kind other than kv."""
    stale: bool = False
    kind: str = "kv"
    """The object kind to read (a kind of colony.consensus.kinds that has a query): kv
    answers in `value` and `version`, every other kind in `objects`."""
    where: dict[str, str] = {}
    """Only objects whose fields have these values (which fields: the kind says, e.g.
    instances by `node` or `job`)."""
    after: str = ""
    """Only objects whose id sorts after this one: the next page (QueryReply.more)."""
    limit: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0
    """At most this many objects (0: the kind's page size)."""


class Stored(msgspec.Struct, frozen=True):
    """One object as the management database holds it."""

    id: str
    version: int
    value: Any
    """What the kind stores (node labels: {key: value})."""


class QueryReply(Message, kw_only=True, frozen=True):
    key: str
    value: str | None
    version: int
    """0 when the key is absent."""
    index: int
    """The log index this replica had applied when it read."""
    objects: list[Stored] = []
    """For a kind other than kv: the objects read (none when absent), by id."""
    more: bool = False
    """More objects follow: ask again with `after` = the last object's id."""


class ConsensusStatusRequest(Message, kw_only=True, frozen=True):
    """Ask a voter for its view of the Raft group."""


class VoterView(msgspec.Struct, frozen=True):
    node: str
    connected: bool
    """Heard from lately (always true for the answering voter itself)."""
    match_index: int | None = None
    """Known only to the leader: the last index this voter has stored."""
    lag: int | None = None
    """Known only to the leader: commit index - match index."""


class LeaseView(msgspec.Struct, frozen=True):
    """A lease as one replica sees it; ages are on that replica's own clock."""

    name: str
    holder: str
    """'' while the lease is free (released, or expired and not yet granted again)."""
    epoch: int
    ttl: float
    granted_age: float | None
    """Seconds since this replica applied the grant (None: before it started)."""
    renewed_age: float | None
    """Seconds since this replica applied the grant or the latest renewal."""


class ConsensusStatus(Message, kw_only=True, frozen=True):
    node: str
    role: Literal["leader", "follower", "candidate", "standby"]
    """standby: the node runs no Raft replica now, and may be promoted to voter."""
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    has_quorum: bool
    voters: list[VoterView]
    manager: LeaseView | None = None
    acting: bool = False
    """This node acts as manager now (it holds the lease and its own clock says it is valid)."""
    stopped: str = ""
    """Why this voter stopped its replica ('' while it runs): its Raft log conflicts with
    entries it committed, or it needs a newer version (a committed entry holds a command
    it does not know: upgrade it and it goes on from there). It applies, votes and serves
    nothing more until restarted."""


class JoinRequest(Signed, kw_only=True, frozen=True):
    """Sent by the Raft leader to a standby node it has just added to the cluster:
    start a voter with these `voters` (the node itself among them)."""

    voters: list[str]
    seed: bool = False
    """Start from the freshest replica snapshot (its snapshotter fetches it) and catch up
    from the leader's log after it. False when the leader compacted its log for the
    join instead (its log holds a removal of a current voter, unsafe to replay)."""


class JoinReply(Message, kw_only=True, frozen=True):
    node: str
    started: bool
    """False when it was a voter already (the request is idempotent)."""


class RetireRequest(Signed, kw_only=True, frozen=True):
    """Sent by the Raft leader to a node that was removed from the voters (declared dead,
    then back): drop its replica and its copy of the database, and stand by."""

    reason: str
    node: str = ""
    """The node told to retire: a request sent to another node is refused."""


class RetireReply(Message, kw_only=True, frozen=True):
    node: str
    retired: bool


class ManagerActing(Message, kw_only=True, frozen=True):
    """Event: whether `node` acts as manager, at `epoch` (published on start, while
    acting about once a second, and on stop)."""

    node: str
    epoch: int
    acting: bool
    valid_for: float
    """Seconds its lease is still valid on its own clock (0 when it stopped)."""
    reason: str = ""


class DigestRequest(Message, kw_only=True, frozen=True):
    """Ask a voter for a digest of its whole management database (to compare replicas)."""


class DigestReply(Message, kw_only=True, frozen=True):
    node: str
    applied_index: int
    sha256: str
    """Of the database's SQL dump (`iterdump`), read in one transaction, without the
    applied index (which lease renewals move without changing any state)."""
    statements: int


MAX_DETAIL_BYTES = 16 * 1024
"""A change's detail, encoded as JSON, at most (checked when the change is recorded)."""


class Change(Signed, kw_only=True, frozen=True):
    """Change event: an object of the management database changed (on the change stream).
    Signed by the relay: anything else on the stream's subjects is a forgery.

    `ts` is the commit's time: the timestamp of the log entry that made the change (its
    proposer's wall clock), recorded at apply, the same on every voter and in every
    relay of it (0 for changes recorded before entries carried one)."""

    index: int
    """The change's place in the replicated change log (1, 2, ...): also its
    sequence in the change stream, so gaps and duplicates show."""
    kind: str
    """What changed: kv, leader, lease, voter, transfer (later node, job, instance...)."""
    id: str
    version: int
    """The object's new version; 0 when it was deleted."""
    log_index: int
    """The Raft log index of the entry that made the change."""
    epoch: int = 0
    """The manager epoch the change was proposed under (0: not on the manager's behalf)."""
    detail: dict[str, Any] = {}
    """What the change's kind says about it (holder, term, reason...): a JSON object of
    any JSON values (nested objects, lists, booleans, null), at most MAX_DETAIL_BYTES
    encoded."""

    def __post_init__(self) -> None:
        size = len(_encoder.encode(self.detail))
        if size > MAX_DETAIL_BYTES:
            raise ValueError(
                f"a change's detail is {size} bytes of JSON, over the {MAX_DETAIL_BYTES}-byte limit"
            )


# --- snapshots and replication (snapshotter, consensus, `colony snapshot`) -----------


class SnapshotHeader(msgspec.Struct, frozen=True, kw_only=True):
    """What a snapshot file says of itself (colony.shared.snapshot: the format)."""

    format: int
    cluster: str
    """The cluster's id (15 hex digits) its database belongs to ('' : made before ids)."""
    index: int
    """The last Raft log index applied to its database."""
    term: int
    """That entry's Raft term."""
    schema: int
    """The database's schema version (SQLite's user_version)."""
    counts: dict[str, int]
    """Rows per table of objects (jobs, instances, nodes, kv, ...)."""
    size: int
    """Bytes of the database that follow the header."""
    sha256: str
    """Checksum of those bytes (hex)."""
    made_at: float
    made_by: str
    """The node that made it."""
    origin: str
    """How it was made: 'save' (colony snapshot save), 'compaction' (Raft's log
    compaction), 'replica' (restored from a litestream replica), 'seed'."""
    voters: list[str] = []
    raft: bytes = b""
    """pysyncobj's bookkeeping (its last two log entries and the voters), in a compaction
    snapshot only: opaque to everyone but consensus, and kept out of the database."""


class SnapshotSaveRequest(Message, kw_only=True, frozen=True):
    """Ask a voter to write a snapshot of its database, consistent at one Raft index, to
    the snapshot object store (`SNAPSHOT_BUCKET`) under `name`. Sent to the Raft leader,
    after a read barrier, so the snapshot holds every write acknowledged before."""

    name: str = ""
    """The object's name ('' : saved/<cluster>/<index>-<time>)."""


class SnapshotSaveReply(Message, kw_only=True, frozen=True):
    node: str
    name: str
    """Where it is in `SNAPSHOT_BUCKET`."""
    header: SnapshotHeader
    seconds: float


class SnapshotFetchRequest(Message, kw_only=True, frozen=True):
    """Ask a node's snapshotter to restore the freshest replica of the management database
    (by Raft term, then index, from the manifest) into a snapshot file at `path` on its
    node. Consensus asks it to seed a new voter; `colony up --restore replica` to bring a
    cluster back."""

    path: str
    """Where to write the snapshot file (on the snapshotter's node)."""
    min_index: int = 0
    """Refuse (404) if the freshest replica holds less than this index."""


class SnapshotFetchReply(Message, kw_only=True, frozen=True):
    node: str
    path: str
    replica: str
    """Whose replica it was restored from (a voter's node id)."""
    header: SnapshotHeader
    seconds: float


class ReplicaPosition(Message, kw_only=True, frozen=True):
    """A voter's replica of the management database, as its snapshotter reports it: the
    manifest, kept in the `REPLICAS_BUCKET` key-value bucket under the voter's node id."""

    node: str
    target: str
    """Where litestream writes it (nats://.../bucket, file:///dir, s3://...), without secrets."""
    index: int = 0
    """The Raft index the replica holds (the database's applied index at its last sync)."""
    term: int = 0
    synced_at: float = 0.0
    """When litestream last synced (wall clock); 0: never yet."""
    lag: float = 0.0
    """Seconds the replica is behind the database (0 when caught up)."""
    replica_bytes: int = 0
    """Storage the replica takes, where the target tells."""
    healthy: bool = True
    problem: str = ""
    """Why it is not healthy ('' when it is): litestream's own error, the target
    unwritable or full, the object store unavailable, litestream restarting."""
    restarts: int = 0


class ReplicationStatusRequest(Message, kw_only=True, frozen=True):
    pass


class ReplicationStatus(Message, kw_only=True, frozen=True):
    """A node's snapshotter: its replica (None when the node is no voter) and sidecar."""

    node: str
    voter: bool
    replica: ReplicaPosition | None = None
    litestream_pid: int = 0
