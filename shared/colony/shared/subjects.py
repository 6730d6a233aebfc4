"""Every NATS subject Colony uses, built here and nowhere else.

Shape: ``colony.<service>.<verb>[.<id>]``. Each function returns the subject
paired with its payload type (and reply type for requests), so publish,
request and subscribe are typed end to end: the bus encodes and decodes with
the type the subject carries, never with one the caller guesses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Generic, TypeVar

from colony.shared.messages import (
    Change,
    CheckStates,
    CheckStatesRequest,
    CheckTargets,
    CheckTargetsRequest,
    ConsensusStatus,
    ConsensusStatusRequest,
    DigestReply,
    DigestRequest,
    EndpointsReply,
    EndpointsRequest,
    Gossip,
    JoinReply,
    JoinRequest,
    LatestMetricsRequest,
    LogsReply,
    LogsRequest,
    ManagerActing,
    MemberChanged,
    MembersReply,
    MembersRequest,
    NodeMetrics,
    PingReqRequest,
    PlanReply,
    PlanRequest,
    ProposeReply,
    ProposeRequest,
    QueryReply,
    QueryRequest,
    ReplicationStatus,
    ReplicationStatusRequest,
    RetireReply,
    RetireRequest,
    ServiceMetrics,
    ServiceMetricsRequest,
    SnapshotFetchReply,
    SnapshotFetchRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
)

P = TypeVar("P")
Q = TypeVar("Q")
R = TypeVar("R")

ROOT = "colony"
ANY = "*"
"""Wildcard for one token: subscribe to ``node_metrics(ANY)`` to hear every node."""

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SubjectError(ValueError):
    """A value cannot be used as a subject token."""


@dataclass(frozen=True, slots=True)
class Subject(Generic[P]):
    """A publish/subscribe subject and the type of what travels on it."""

    name: str
    payload: type[P]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class RequestSubject(Generic[Q, R]):
    """A request/reply subject: requests of type Q, replies of type R."""

    name: str
    payload: type[Q]
    reply: type[R]

    def __str__(self) -> str:
        return self.name


def token(value: str, what: str = "id", *, wildcard: bool = False) -> str:
    """Check that `value` is one subject token (letters, digits, '-', '_')."""
    if wildcard and value == ANY:
        return value
    if not _TOKEN.fullmatch(value):
        raise SubjectError(
            f"{what} {value!r} cannot be used in a subject: "
            "use 1-64 letters, digits, '-' or '_' (no dots, spaces or wildcards)"
        )
    return value


# --- monitor ---------------------------------------------------------------


def node_metrics(node: str) -> Subject[NodeMetrics]:
    """Where the monitor of `node` publishes one sample per interval (ANY: all nodes)."""
    return Subject(f"{ROOT}.monitor.metrics.{token(node, 'node id', wildcard=True)}", NodeMetrics)


def latest_metrics(node: str) -> RequestSubject[LatestMetricsRequest, NodeMetrics]:
    """Ask the monitor of `node` for its latest sample."""
    return RequestSubject(
        f"{ROOT}.monitor.latest.{token(node, 'node id')}", LatestMetricsRequest, NodeMetrics
    )


def service_metrics(
    node: str, service: str
) -> RequestSubject[ServiceMetricsRequest, ServiceMetrics]:
    """Ask `service` on `node` for its metric families (its node's monitor serves them)."""
    return RequestSubject(
        f"{ROOT}.{token(service, 'service')}.prometheus.{token(node, 'node id')}",
        ServiceMetricsRequest,
        ServiceMetrics,
    )


# --- membership --------------------------------------------------------------


def member_ping(node: str) -> RequestSubject[Gossip, Gossip]:
    """Probe `node` directly; its ack carries gossip back."""
    return RequestSubject(f"{ROOT}.membership.ping.{token(node, 'node id')}", Gossip, Gossip)


def member_ping_req(node: str) -> RequestSubject[PingReqRequest, Gossip]:
    """Ask `node` to probe another member on the sender's behalf."""
    return RequestSubject(
        f"{ROOT}.membership.pingreq.{token(node, 'node id')}", PingReqRequest, Gossip
    )


def member_sync(node: str) -> RequestSubject[Gossip, Gossip]:
    """Push-pull: send `node` a full state, get its full state back."""
    return RequestSubject(f"{ROOT}.membership.sync.{token(node, 'node id')}", Gossip, Gossip)


def member_tell(node: str) -> Subject[Gossip]:
    """Gossip for `node` that needs no answer (what members tell a newcomer)."""
    return Subject(f"{ROOT}.membership.tell.{token(node, 'node id')}", Gossip)


def member_news() -> Subject[Gossip]:
    """News every member must hear at once (an accusation, a death, a refutation, a
    leave): one publish, fanned out by the server to every member."""
    return Subject(f"{ROOT}.membership.news", Gossip)


def member_announce() -> Subject[Gossip]:
    """Where a joining member announces itself to every member."""
    return Subject(f"{ROOT}.membership.announce", Gossip)


def member_traffic() -> str:
    """Every membership protocol subject, for counting traffic (payloads differ)."""
    return f"{ROOT}.membership.>"


def members(node: str) -> RequestSubject[MembersRequest, MembersReply]:
    """Ask `node` for its view of the group."""
    return RequestSubject(
        f"{ROOT}.membership.members.{token(node, 'node id')}", MembersRequest, MembersReply
    )


def member_changes(node: str) -> Subject[MemberChanged]:
    """Change events about `node` (ANY: about every node)."""
    return Subject(
        f"{ROOT}.changes.{MEMBER}.{token(node, 'node id', wildcard=True)}", MemberChanged
    )


# --- consensus ---------------------------------------------------------------


def raft_frames(node: str) -> str:
    """Where voter `node` receives Raft frames (signed bytes, not our structs)."""
    return f"{ROOT}.consensus.raft.{token(node, 'node id', wildcard=True)}"


def propose(node: str) -> RequestSubject[ProposeRequest, ProposeReply]:
    """Ask voter `node` to commit proposals (a follower hands them to the leader)."""
    return RequestSubject(
        f"{ROOT}.consensus.propose.{token(node, 'node id')}", ProposeRequest, ProposeReply
    )


def query(node: str) -> RequestSubject[QueryRequest, QueryReply]:
    """Ask voter `node` to read from the management database."""
    return RequestSubject(
        f"{ROOT}.consensus.query.{token(node, 'node id')}", QueryRequest, QueryReply
    )


def consensus_status(node: str) -> RequestSubject[ConsensusStatusRequest, ConsensusStatus]:
    """Ask voter `node` for its view of the Raft group."""
    return RequestSubject(
        f"{ROOT}.consensus.status.{token(node, 'node id')}",
        ConsensusStatusRequest,
        ConsensusStatus,
    )


def consensus_digest(node: str) -> RequestSubject[DigestRequest, DigestReply]:
    """Ask voter `node` for a digest of its management database."""
    return RequestSubject(
        f"{ROOT}.consensus.digest.{token(node, 'node id')}", DigestRequest, DigestReply
    )


def consensus_join(node: str) -> RequestSubject[JoinRequest, JoinReply]:
    """Tell standby node `node` that it was added to the voters: start its replica."""
    return RequestSubject(f"{ROOT}.consensus.join.{token(node, 'node id')}", JoinRequest, JoinReply)


def consensus_retire(node: str) -> RequestSubject[RetireRequest, RetireReply]:
    """Tell node `node` that it is no longer a voter: drop its replica and stand by."""
    return RequestSubject(
        f"{ROOT}.consensus.retire.{token(node, 'node id')}", RetireRequest, RetireReply
    )


def manager_acting() -> Subject[ManagerActing]:
    """Who acts as manager, at which epoch (event; from the manager's node)."""
    return Subject(f"{ROOT}.manager.acting", ManagerActing)


# --- jobs: the curator (on the manager) and the node agents ----------------------


def curator_plan() -> RequestSubject[PlanRequest, PlanReply]:
    """Ask the manager's curator what submitting a job would do (only the acting manager
    listens: no responders means no manager now)."""
    return RequestSubject(f"{ROOT}.curator.plan", PlanRequest, PlanReply)


def agent_logs(node: str) -> RequestSubject[LogsRequest, LogsReply]:
    """Read the output of an instance that runs on `node`."""
    return RequestSubject(f"{ROOT}.agent.logs.{token(node, 'node id')}", LogsRequest, LogsReply)


def agent_checks(node: str) -> RequestSubject[CheckTargetsRequest, CheckTargets]:
    """Ask `node`'s agent what runs there now and how to check it (its monitor asks at
    start; `agent_checks_changed` tells every change after)."""
    return RequestSubject(
        f"{ROOT}.agent.checks.{token(node, 'node id')}", CheckTargetsRequest, CheckTargets
    )


def agent_checks_changed(node: str) -> Subject[CheckTargets]:
    """`node`'s agent publishes the whole set of its running instances when it changes
    (event; a few seconds apart at most while nothing changes)."""
    return Subject(f"{ROOT}.agent.checks.changed.{token(node, 'node id')}", CheckTargets)


def monitor_checks(node: str) -> RequestSubject[CheckStatesRequest, CheckStates]:
    """Ask `node`'s monitor for its instances' checks as they last ran (output included)."""
    return RequestSubject(
        f"{ROOT}.monitor.checks.{token(node, 'node id')}", CheckStatesRequest, CheckStates
    )


def endpoints() -> RequestSubject[EndpointsRequest, EndpointsReply]:
    """Ask for a job's healthy instances' addresses (the acting manager's curator
    answers; programs use this, or watch `endpoints_changed`)."""
    return RequestSubject(f"{ROOT}.endpoints.get", EndpointsRequest, EndpointsReply)


def endpoints_changed(job: str) -> Subject[EndpointsReply]:
    """A job's healthy endpoints, published by the acting manager's curator whenever the
    set changes (and when a manager starts acting); ENDPOINTS_STREAM keeps the last."""
    return Subject(f"{ROOT}.endpoints.changed.{token(job, 'job', wildcard=True)}", EndpointsReply)


def snapshot_save(node: str) -> RequestSubject[SnapshotSaveRequest, SnapshotSaveReply]:
    """Served by a voter's consensus: write a snapshot of its database to `SNAPSHOT_BUCKET`."""
    return RequestSubject(
        f"{ROOT}.consensus.snapshot.{token(node, 'node')}", SnapshotSaveRequest, SnapshotSaveReply
    )


def snapshot_fetch(node: str) -> RequestSubject[SnapshotFetchRequest, SnapshotFetchReply]:
    """Served by a node's snapshotter: restore the freshest replica into a snapshot file."""
    return RequestSubject(
        f"{ROOT}.snapshotter.fetch.{token(node, 'node')}", SnapshotFetchRequest, SnapshotFetchReply
    )


def replication_status(
    node: str,
) -> RequestSubject[ReplicationStatusRequest, ReplicationStatus]:
    """Served by a node's snapshotter: its replica's position and health."""
    return RequestSubject(
        f"{ROOT}.snapshotter.status.{token(node, 'node')}",
        ReplicationStatusRequest,
        ReplicationStatus,
    )


REPLICAS_BUCKET = "COLONY_REPLICAS"
"""Key-value bucket: the manifest, one `ReplicaPosition` per voter's node id."""
SNAPSHOT_BUCKET = "COLONY_SNAPSHOTS"
"""Object store bucket: snapshots saved with `colony snapshot save` (snapshot files)."""
REPLICA_BUCKET_PREFIX = "COLONY_REPLICA_"


def replica_bucket(node: str) -> str:
    """The object store bucket litestream replicates voter `node`'s database into (one
    writer per replica: each voter its own)."""
    return REPLICA_BUCKET_PREFIX + token(node, "node")


SKIPPED = "skipped"
"""The change kind of a marker the relay publishes in place of a change it could not
publish (a bug or a newer version's kind): its detail says what and why."""

MEMBER = "member"
"""The change kind of membership's events, which membership publishes itself."""

RESERVED_CHANGE_KINDS = (SKIPPED, MEMBER)
"""Change kinds no kind of the management database may record. Which kinds it records
is the consensus service's to say (its registry: colony.consensus.kinds); a subscriber
takes ``change(kind, ANY)`` for the kinds it knows, or every kind with ``ANY``."""


def change(kind: str, id: str) -> Subject[Change]:
    """Where the Raft leader relays the change of object `id` of `kind` (ANY: all)."""
    return Subject(
        f"{ROOT}.changes.{token(kind, 'kind')}.{token(id, 'object id', wildcard=True)}", Change
    )


def every_change() -> str:
    """Every change of every kind (a subscription's filter: ``colony.changes.>``)."""
    return f"{ROOT}.changes.>"


# --- JetStream streams -------------------------------------------------------

CHANGES_STREAM = "COLONY_CHANGES"
"""The change log, relayed by the Raft leader, in index order (a stream sequence is
usually, not always, the change's index: read `Change.index`; colony.shared.changes). Captures
``change(kind, ANY)`` for every change kind of the consensus service's registry and
SKIPPED (membership's events stay apart)."""

METRICS_STREAM = "COLONY_METRICS"
"""Keeps the last sample of every node, so a node that stopped answering can
still be shown with when it was last heard. Captures ``node_metrics(ANY)``."""


ENDPOINTS_STREAM = "COLONY_ENDPOINTS"
"""Keeps the last endpoint set of every job (``endpoints_changed(ANY)``), so a watcher
starts from the current set."""


# --- service discovery (NATS micro protocol) ---------------------------------

SERVICE_PREFIX = "colony-"
"""Colony services register with the NATS micro protocol as ``colony-<service>``."""


def service_ping(service: str | None = None) -> str:
    """The micro discovery subject: every service (or every `service`) answers a ping."""
    return "$SRV.PING" if service is None else f"$SRV.PING.{token(service, 'service')}"


def service_info(service: str | None = None) -> str:
    """The micro info subject: endpoints, metadata (node id) of every running service."""
    return "$SRV.INFO" if service is None else f"$SRV.INFO.{token(service, 'service')}"
