"""`colony status`: every node's live figures, read over NATS.

Each node is asked for its latest sample directly; one that does not answer
within the timeout is shown as unreachable, with how long ago it was last
heard (its last sample, kept by the metrics stream). Every step has a
deadline, so status never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

from colony.cli import records
from colony.cli.local.plan import ClusterError
from colony.cli.members import first_view
from colony.cli.output import human_age, human_bytes
from colony.cli.snapshot import manifest
from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.cluster import Cluster
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    ConsensusStatus,
    LatestMetricsRequest,
    NodeMetrics,
    QueryRequest,
    ReplicaPosition,
    ReplicationStatus,
    ReplicationStatusRequest,
    Resources,
    to_builtins,
)
from colony.shared.reservations import reserved
from colony.shared.statedir import natural_key

LABELS = "labels"
"""The object kind of node labels in the management database."""
LAST_HEARD_ATTEMPT = 0.25
"""Seconds one read of a silent node's last sample may take before it is retried."""


@dataclass
class NodeStatus:
    id: str
    name: str
    nats_url: str = ""
    reachable: bool = False
    services: list[str] = field(default_factory=list)
    metrics: NodeMetrics | None = None
    """Latest sample if reachable, else the last one heard (may be None)."""
    last_heard: float | None = None
    """Seconds since its newest sample was taken."""
    member: str = ""
    """Its membership status (alive, suspect, dead, left) in the first reachable node's view."""
    raft: str = ""
    """Its Raft role if it is a voter (leader, follower, candidate; down if silent; stopped
    if its replica stopped itself)."""
    raft_stopped: str = ""
    """Why its replica stopped itself ('' while it runs)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Its labels in the management database (`colony node label`)."""
    declared: Resources | None = None
    """The capacity its agent registered for jobs (None: it registered none)."""
    reserved: Resources | None = None
    """What the instances placed on it reserve of `declared` (the scheduler's figures,
    beside the measured use in `metrics`)."""
    drain: str = ""
    """draining or drained (`colony node drain`), '' : neither."""
    eligible: bool = True
    """Whether the manager may place instances there (as the nodes kind records it)."""
    replica: ReplicaPosition | None = None
    """Its replica of the management database (a voter's), as its snapshotter reports it
    (or, when that does not answer, its last entry in the replica manifest)."""

    def to_json(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "name": self.name,
            "nats_url": self.nats_url,
            "state": "up" if self.reachable else "unreachable",
            "reachable": self.reachable,
            "services": self.services,
            "member": self.member or None,
            "raft": self.raft or None,
            "raft_stopped": self.raft_stopped or None,
            "labels": self.labels,
            "declared": to_builtins(self.declared) if self.declared else None,
            "reserved": to_builtins(self.reserved) if self.reserved else None,
            "drain": self.drain or None,
            "eligible": self.eligible,
            "replica": to_builtins(self.replica) if self.replica else None,
            "last_heard_seconds": _round(self.last_heard),
            "age_seconds": _round(time.time() - self.metrics.node_started)
            if self.metrics
            else None,
            "metrics": to_builtins(self.metrics) if self.metrics else None,
        }
        return data


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def gather(bus: Bus, known: dict[str, tuple[str, str]], timeout: float) -> list[NodeStatus]:
    """Status of every node in `known` (id -> (name, nats url)) and any other that answers."""
    stored = await _stored_nodes(bus, timeout)
    ids = list(dict.fromkeys([*known, *stored]))
    services_task = asyncio.create_task(_services(bus))
    results = await asyncio.gather(*(_node(bus, i, known.get(i), timeout) for i in ids))
    services = await services_task
    view = await first_view(bus, [s.id for s in results if s.reachable], timeout)
    member = {m.node: m.status for m in view.members} if view else {}
    for status in results:
        status.services = sorted(services.get(status.id, []))
        status.member = member.get(status.id, "")
    return sorted(results, key=lambda s: natural_key(s.name))


async def _node(
    bus: Bus, node_id: str, known: tuple[str, str] | None, timeout: float
) -> NodeStatus:
    name, url = known or (node_id, "")
    status = NodeStatus(node_id, name, url)
    try:
        status.metrics = await bus.request(
            subjects.latest_metrics(node_id), LatestMetricsRequest(), timeout=timeout
        )
        status.reachable = True
    except BusError:
        status.metrics = await _last_heard(bus, node_id, timeout)
    if status.metrics:
        status.name = status.metrics.name
        status.nats_url = status.nats_url or status.metrics.nats_url
        status.last_heard = max(0.0, time.time() - status.metrics.ts)
    return status


async def _last_heard(bus: Bus, node_id: str, timeout: float) -> NodeMetrics | None:
    """The node's last sample kept by the metrics stream, trying for `timeout` seconds.

    Right after a server dies the stream may not answer at once (a read
    routed to the dead replica, or replicas electing a new leader for a
    few seconds): a failed read is retried until the time is up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(TimeoutError, BusError):
            async with asyncio.timeout(LAST_HEARD_ATTEMPT):
                return await bus.last_message(
                    subjects.METRICS_STREAM, subjects.node_metrics(node_id)
                )
        await asyncio.sleep(0.05)
    return None


async def _stored_nodes(bus: Bus, timeout: float) -> list[str]:
    """Ids of nodes the metrics stream has heard from (to find nodes not in the state dir)."""
    try:
        async with asyncio.timeout(timeout):
            names = await bus.stream_subjects(subjects.METRICS_STREAM)
    except (BusError, TimeoutError):
        return []  # no JetStream right now: status still shows what answers directly
    ids = [name.rpartition(".")[2] for name in names]
    return [i for i in ids if _is_token(i)]  # whatever else was published there is not a node


def _is_token(value: str) -> bool:
    try:
        subjects.token(value)
    except subjects.SubjectError:
        return False
    return True


async def _services(bus: Bus) -> dict[str, list[str]]:
    """Node id -> names of the Colony services answering NATS micro discovery on it."""
    found: dict[str, list[str]] = {}
    for service in await Cluster(bus).services():
        found.setdefault(service.node, []).append(service.service)
    return found


async def raft(bus: Bus, nodes: list[NodeStatus], timeout: float) -> ConsensusStatus | None:
    """Set each voter's Raft role; return the leader's view of the group (None: no leader
    its answering voters agree on)."""
    asked = [n.id for n in nodes if "consensus" in n.services]
    statuses = await Cluster(bus, asked, ask=timeout).statuses()
    answered, leader = statuses.answered, statuses.leader()
    everyone = set(leader.voters) if leader else set(asked)
    for node in nodes:
        if node.id in answered and answered[node.id].stopped:
            node.raft, node.raft_stopped = "stopped", answered[node.id].stopped
        elif node.id in everyone:
            node.raft = answered[node.id].role if node.id in answered else "down"
        elif node.id in answered and answered[node.id].role == "standby":
            node.raft = "standby"
    return leader.status if leader else None


async def labels(bus: Bus, nodes: list[NodeStatus], leader: ConsensusStatus | None, timeout: float):
    """Set each node's labels, as the Raft leader holds them (its copy: no commit needed
    to show them); none if there is no leader or it does not answer."""
    if leader is None:
        return
    request = QueryRequest(key="", kind=LABELS, stale=True)
    try:
        reply = await bus.request(subjects.query(leader.node), request, timeout=timeout)
    except BusError:
        return
    held = {stored.id: stored.value for stored in reply.objects}
    for node in nodes:
        node.labels = held.get(node.id, {})


async def reservations(
    bus: Bus, nodes: list[NodeStatus], leader: ConsensusStatus | None, timeout: float
) -> None:
    """Set each node's declared capacity and reservations, as the Raft leader holds them;
    none if there is no leader, or it does not answer (or holds no nodes kind yet)."""
    if leader is None:
        return
    client = Management(bus, [leader.node], timeout=timeout)
    try:
        declared = await records.nodes(client, stale=True)
        held = reserved(await records.instances(client, stale=True))
    except ManagementError:
        return
    registered = {n.node: n for n in declared}
    for node in nodes:
        if node.id in registered:
            record = registered[node.id]
            node.declared = Resources(cpu=record.cpu, memory=record.memory)
            node.reserved = held.get(node.id, Resources())
            node.drain, node.eligible = record.drain, record.eligible


async def replication(bus: Bus, nodes: list[NodeStatus], timeout: float) -> None:
    """Set each voter's replica: its snapshotter's answer, else its manifest entry."""

    async def ask(node: NodeStatus) -> ReplicationStatus | None:
        try:
            subject = subjects.replication_status(node.id)
            return await bus.request(subject, ReplicationStatusRequest(), timeout=timeout)
        except BusError:
            return None

    asked = [n for n in nodes if "snapshotter" in n.services]
    answers = await asyncio.gather(*(ask(n) for n in asked))
    live = {a.node: a.replica for a in answers if a is not None and a.replica is not None}
    kept: dict[str, ReplicaPosition] = {}
    if any(n.id not in live for n in nodes if n.raft):
        with contextlib.suppress(ClusterError, TimeoutError):  # status shows what answers
            async with asyncio.timeout(timeout):
                kept = await manifest(bus)
    for node in nodes:
        node.replica = live.get(node.id) or kept.get(node.id)


def replication_lines(nodes: list[NodeStatus]) -> list[Text]:
    """A line for each replica that is not healthy, and why: what is lost in a disaster
    grows while it lasts."""
    return [
        Text.assemble(
            ("replication: ", "red"),
            (f"{n.name} unhealthy", "red"),
            f": {n.replica.problem or 'no reason given'}",
        )
        for n in nodes
        if n.replica is not None and not n.replica.healthy
    ]


def raft_line(leader: ConsensusStatus | None, nodes: list[NodeStatus]) -> Text:
    """One line for people: who leads, the term, the commit index, each voter's lag."""
    if not any(n.raft for n in nodes):
        return Text("raft: no voters")
    if leader is None:
        return Text.assemble(
            ("raft: no leader", "red"), " (a majority of the voters must be up to elect one)"
        )
    names = {n.id: n.name for n in nodes}
    line = Text.assemble(
        "raft: leader ",
        (names.get(leader.node, leader.node), "bold"),
        f", term {leader.term}, commit index {leader.commit_index}; voters: ",
    )
    for i, v in enumerate(leader.voters):
        name = names.get(v.node, v.node)
        if i:
            line.append(", ")
        if v.node == leader.node:
            line.append(f"{name} (leader)")
        elif not v.connected:
            line.append(f"{name} (unreachable)", style="red")
        else:
            line.append(f"{name} (lag {v.lag})" if v.lag is not None else name)
    return line


def stopped_lines(nodes: list[NodeStatus]) -> list[Text]:
    """A line for each voter whose replica stopped itself, and why: it needs an operator."""
    return [
        Text.assemble((f"raft: {n.name} stopped", "red"), f": {n.raft_stopped}")
        for n in nodes
        if n.raft_stopped
    ]


def manager_line(leader: ConsensusStatus | None, nodes: list[NodeStatus]) -> Text | None:
    """One line for people: who acts as manager, at which epoch, how fresh its lease is."""
    if leader is None or leader.manager is None:
        return None
    lease, names = leader.manager, {n.id: n.name for n in nodes}
    if not lease.holder:
        return Text.assemble(
            ("manager: none", "yellow"), f" (epoch {lease.epoch} ended; the leader takes it next)"
        )
    age = "" if lease.granted_age is None else f", granted {human_age(lease.granted_age)} ago"
    renewed = "" if lease.renewed_age is None else f", renewed {lease.renewed_age:.1f} s ago"
    line = Text.assemble(
        "manager: ",
        (names.get(lease.holder, lease.holder), "bold"),
        f", epoch {lease.epoch}{age}{renewed} (ttl {lease.ttl:g} s)",
    )
    if not leader.acting and lease.holder == leader.node:
        line.append(" (not acting)", "red")
    return line


def scheduling(node: NodeStatus) -> Text:
    """' (draining)', ' (drained)', ' (ineligible)': why no instance is placed there."""
    if node.drain:
        return Text(f" ({node.drain})", "yellow")
    if not node.eligible:
        return Text(" (ineligible)", "yellow")
    return Text("")


def table(nodes: list[NodeStatus]) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    columns = [
        "NODE",
        "ID",
        "STATE",
        "MEMBER",
        "RAFT",
        "NATS",
        "SERVICES",
        "CPU FREE/CAP",
        "MEM FREE/CAP",
        "RESERVED CPU",
        "RESERVED MEM",
    ]
    for column in columns:
        grid.add_column(column, no_wrap=True)
    grid.add_column("HOST CPU", justify="right")
    grid.add_column("AGE", justify="right")
    labelled = any(node.labels for node in nodes)
    if labelled:
        grid.add_column("LABELS")
    for node in nodes:
        m = node.metrics
        if node.reachable:
            state = Text("up", "green")
        elif node.last_heard is not None:
            state = Text.assemble(
                ("unreachable", "red"), f" (last heard {human_age(node.last_heard)} ago)"
            )
        else:
            state = Text("unreachable", "red")
        state.append_text(scheduling(node))
        measured = ["-", "-"]
        figures = ["-", "-"]
        if m and node.reachable:
            measured = [
                f"{m.free.cpu:.2f}/{m.capacity.cpu:.2f}",
                f"{human_bytes(m.free.memory)} / {human_bytes(m.capacity.memory)}",
            ]
            figures = [f"{m.host.cpu_percent:.0f}%", human_age(time.time() - m.node_started)]
        reserved = ["-", "-"]
        if node.reserved is not None and node.declared is not None:
            r, d = node.reserved, node.declared
            reserved = [
                f"{r.cpu:.2f}/{d.cpu:.2f}",
                f"{human_bytes(r.memory)} / {human_bytes(d.memory)}",
            ]
        services = ", ".join(node.services) or "-"
        member = node.member or "-"
        # cells that are plain strings are shown as they are (the console parses no markup)
        role = {
            "leader": Text("leader", "bold"),
            "down": Text("down", "red"),
            "standby": Text("standby", "dim"),
        }.get(node.raft, node.raft)
        shown = [", ".join(f"{k}={v}" for k, v in node.labels.items()) or "-"] if labelled else []
        grid.add_row(
            node.name, node.id, state, member, role or "-", node.nats_url or "-", services,
            *measured, *reserved, *figures, *shown,
        )  # fmt: skip
    return grid
