"""One scrape of a node's Prometheus endpoint shows the node, its Raft and its membership.

Three nodes in this process against a real nats-server, each running its monitor,
consensus and membership services; scrapes go over HTTP to the monitors' endpoints,
and every exposition must pass the promtool-equivalent check (and promtool itself,
where it is installed).
"""

from __future__ import annotations

import asyncio
import urllib.request

import msgspec
import pytest
from _voters import settled, status

from colony.consensus.service import ConsensusService
from colony.harness.processes import poll
from colony.harness.promlint import Family, lint, parse, promtool
from colony.membership.service import MembershipService
from colony.monitor.service import Monitor
from colony.shared import runner, subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.config import ConsensusSettings
from colony.shared.messages import (
    KvPut,
    LatestMetricsRequest,
    LeaseEnd,
    MetricFamily,
    MetricSample,
    Proposal,
    ProposeRequest,
    ServiceMetrics,
    encode,
    new_id,
)

NODES = ["node-1", "node-2", "node-3"]
SERVICES = (Monitor, ConsensusService, MembershipService)


class Nodes:
    """Each node's services running in this process, each stoppable on its own."""

    def __init__(self, nats_server, tmp_path) -> None:
        self.server = nats_server
        self.secret = tmp_path / "secret"
        self.secret.write_text("a-cluster-secret-for-tests")
        self.stops: dict[tuple[str, str], asyncio.Event] = {}
        self.tasks: dict[tuple[str, str], asyncio.Task[int]] = {}

    def start(self, node: str, services=SERVICES) -> None:
        config = self.server.node_config(node)
        config.consensus = ConsensusSettings(
            voters=NODES, secret_file=str(self.secret), change_stream_replicas=1
        )
        config.monitor = msgspec.structs.replace(config.monitor, interval=0.5)
        for kind in services:
            key = (node, kind.name)
            self.stops[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(runner.run(kind(), config, stop=self.stops[key]))

    async def stop(self, node: str, service: str) -> None:
        self.stops[(node, service)].set()
        assert await asyncio.wait_for(self.tasks.pop((node, service)), runner.SHUTDOWN_GRACE) == 0

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(*key) for key in list(self.tasks)))


@pytest.fixture
async def nodes(nats_server, tmp_path):
    running = Nodes(nats_server, tmp_path)
    yield running
    await running.stop_all()


async def scrape(bus, node: str) -> dict[str, Family]:
    """One scrape of `node`'s endpoint, checked as promtool would; its families by name."""
    sample = await poll(lambda: _latest(bus, node), 10, f"the monitor of {node}")
    text = await asyncio.to_thread(fetch, sample.metrics_url)
    assert lint(text) == []
    said = promtool(text)
    assert said in (None, []), said  # None: promtool is not installed here
    families, problems = parse(text)
    assert problems == []
    return {f.name: f for f in families}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()


def value(families: dict[str, Family], name: str, **labels: str) -> float | None:
    """The value of the sample of `name` with (at least) these labels; None if none."""
    family = families.get(name.removesuffix("_count").removesuffix("_bucket"))
    for sample, have, number in family.samples if family else ():
        if sample == name and labels.items() <= have.items():
            return number
    return None


async def test_one_scrape_shows_the_node_its_raft_and_its_membership(nodes, bus):
    for node in NODES:
        nodes.start(node)
    top = await poll(lambda: settled(bus, NODES, 3), 30, "a leader with 3 caught-up voters")
    leader = top.node
    await poll(lambda: _has_lease(bus, leader), 15, "a manager lease held by the leader")
    # Proposals through the leader: one applied, one refused (an internal command)
    put = ProposeRequest(proposals=[Proposal(new_id(), KvPut("colour", "blue"))])
    await bus.request(subjects.propose(leader), put, timeout=5)
    forbidden = ProposeRequest(proposals=[Proposal(new_id(), LeaseEnd(1, "released"))])
    with pytest.raises(RemoteError) as refused:
        await bus.request(subjects.propose(leader), forbidden, timeout=5)
    assert refused.value.code == 403

    async def probed() -> dict[str, Family] | None:
        families = await scrape(bus, leader)
        probes = value(families, "colony_membership_probes_total", kind="direct")
        return families if probes and probes > 0 else None

    families = await poll(probed, 20, "a scrape after the leader's membership probed")
    on = {"node": leader}
    # the monitor's own figures, with the renamed cpu figure
    assert value(families, "colony_host_cpu_cores", **on) >= 1
    assert "colony_host_cpu_count" not in families
    # consensus: role, term, indexes, followers' lag, lease, proposals, apply time
    assert value(families, "colony_consensus_role", role="leader", **on) == 1
    assert value(families, "colony_consensus_role", role="follower", **on) == 0
    assert value(families, "colony_consensus_term", **on) >= 1
    commit = value(families, "colony_consensus_commit_index", **on)
    assert 2 <= value(families, "colony_consensus_applied_index", **on) <= commit
    for follower in set(NODES) - {leader}:
        lag = value(families, "colony_consensus_follower_lag_entries", follower=follower, **on)
        assert lag is not None and 0 <= lag <= commit
        assert value(families, "colony_consensus_voter_connected", voter=follower) == 1
    assert value(families, "colony_consensus_has_quorum", **on) == 1
    assert value(families, "colony_consensus_lease_holder", holder=leader, **on) == 1
    assert value(families, "colony_consensus_lease_epoch", **on) >= 1
    assert value(families, "colony_consensus_acting_manager", **on) == 1
    assert value(families, "colony_consensus_proposals_total", **on) == 2
    assert value(families, "colony_consensus_proposals_refused_total", reason="forbidden") == 1
    assert value(families, "colony_consensus_proposals_refused_total", reason="not_applied") == 0
    applied = value(families, "colony_consensus_apply_seconds_count", **on)
    assert applied >= 2  # the leader's first entry, the lease, the put...
    assert value(families, "colony_consensus_apply_seconds_bucket", le="+Inf") == applied
    # membership: everyone alive, probes and messages counted
    assert value(families, "colony_membership_members", status="alive", **on) == 3
    assert value(families, "colony_membership_members", status="dead", **on) == 0
    assert value(families, "colony_membership_health", **on) >= 0
    assert value(families, "colony_membership_messages_sent_total", kind="ping", **on) > 0
    assert value(families, "colony_membership_messages_received_total", kind="ping", **on) > 0
    for service in ("consensus", "membership"):
        assert value(families, "colony_service_metrics_up", service=service, **on) == 1

    # A follower's scrape: its own role, and no lag figures (the leader alone knows them)
    follower = sorted(set(NODES) - {leader})[0]
    theirs = await scrape(bus, follower)
    assert value(theirs, "colony_consensus_role", role="follower", node=follower) == 1
    assert theirs["colony_consensus_follower_lag_entries"].samples == []


async def test_with_a_service_down_the_scrape_still_shows_the_rest(nodes, bus):
    nodes.start("node-1", services=(Monitor, MembershipService))

    async def membership_in() -> dict[str, Family] | None:
        families = await scrape(bus, "node-1")
        return families if "colony_membership_members" in families else None

    families = await poll(membership_in, 15, "the membership families in a scrape")
    assert value(families, "colony_service_metrics_up", service="consensus") == 0
    assert value(families, "colony_service_metrics_up", service="membership") == 1
    assert not [name for name in families if name.startswith("colony_consensus_")]
    assert value(families, "colony_host_memory_total_bytes") > 0

    await nodes.stop("node-1", "membership")
    families = await scrape(bus, "node-1")
    assert value(families, "colony_service_metrics_up", service="membership") == 0
    assert value(families, "colony_host_memory_total_bytes") > 0


async def test_families_a_service_may_not_send_are_dropped_and_the_rest_served(nodes, bus):
    """A buggy (or newer) service cannot make Prometheus refuse the node's scrape."""
    nodes.start("node-1", services=(Monitor,))
    good = MetricFamily("colony_consensus_term", "gauge", "Raft term", [MetricSample(value=4)])
    sent = [
        good,
        good,  # twice
        MetricFamily("colony_host_cpu_cores", "gauge", "Not the consensus' own", []),
        MetricFamily("colony_consensus_x", "gauge", "Its own node label", [_on("node-9")]),
        MetricFamily("colony_consensus_y", "gauge", "Twice the same series", [_on(), _on()]),
        MetricFamily("colony_consensus_z_total", "gauge", "A gauge named as a counter", []),
    ]

    async def answer(msg) -> None:
        reply = ServiceMetrics(node="node-1", service="consensus", families=sent)
        await msg.respond(encode(reply))

    await bus.nc.subscribe(subjects.service_metrics("node-1", "consensus").name, cb=answer)
    families = await scrape(bus, "node-1")  # lint-clean, so nothing bad got through
    assert value(families, "colony_consensus_term", node="node-1") == 4
    assert not {"colony_consensus_x", "colony_consensus_y", "colony_consensus_z"} & families.keys()
    assert value(families, "colony_service_metrics_up", service="consensus") == 1


def _on(node: str | None = None) -> MetricSample:
    return MetricSample(labels={"node": node} if node else {"a": "b"}, value=1)


async def _latest(bus, node: str):
    try:
        return await bus.request(subjects.latest_metrics(node), LatestMetricsRequest())
    except BusError:
        return None  # not started yet


async def _has_lease(bus, leader: str) -> bool:
    view = await status(bus, leader)
    return bool(view and view.manager and view.manager.holder == leader and view.acting)
