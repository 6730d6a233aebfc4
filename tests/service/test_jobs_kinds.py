"""Nodes, jobs and instances through three real voters and a real nats-server: a job
submitted by a client, instances placed with the manager's epoch, reports from the node
they are on (and refused from another), read back by node and job from every voter, and
every change on the change stream, signed."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from _voters import running

from colony.harness.processes import poll
from colony.shared import changes, subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.cluster import Cluster
from colony.shared.jobspec import JobSpec, Task
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Change,
    InstanceRecord,
    InstanceReport,
    InstancesPlace,
    InstancesReport,
    JobRecord,
    JobRun,
    NodeRegister,
    NodeStatus,
    Placement,
    QueryRequest,
    Stored,
)
from colony.shared.signing import read_secret

VOTERS = ["v1", "v2", "v3"]


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


async def read(bus, voter: str, kind: str, id: str = "", **select) -> list[Stored]:
    request = QueryRequest(key=id, kind=kind, **select)
    return (await bus.request(subjects.query(voter), request, timeout=6)).objects


def register(node: str) -> NodeRegister:
    return NodeRegister(
        node=node, name=node, address="127.0.0.1", cpu=2.0, memory=2**30,
        drivers=["process"], port_lo=21000, port_hi=21099,
    )  # fmt: skip


def placement(id: str, node: str, slot: int) -> Placement:
    return Placement(
        id=id, job="web", version=1, slot=slot, node=node, cpu=0.5, memory=2**26,
        ports={"http": 21000 + slot}, reason="new job",
    )  # fmt: skip


async def collect(feed, count: int) -> list[Change]:
    async with asyncio.timeout(15):
        return [await anext(feed) for _ in range(count)]


async def test_a_job_placed_reported_and_read_through_every_voter(voters, bus, tmp_path):
    manager = await Cluster(bus, VOTERS).wait_manager(20)
    client = Management(bus, VOTERS)
    spec = JobSpec(name="web", task=Task(command="sleep", args=["60"]), replicas=2)

    replies = await client.propose(register("node-a"), register("node-b"), JobRun(spec=spec))
    assert [o.ok for o in replies.outcomes] == [True] * 3
    assert replies.outcomes[2].value == "new"
    status = await client.propose(NodeStatus("node-a", "alive"), epoch=manager.epoch)
    assert status.outcomes[0].ok
    with pytest.raises(ManagementError, match="needs the manager's epoch"):
        await client.propose(InstancesPlace([placement("web-0-aaaa", "node-a", 0)]))

    place = InstancesPlace(
        [placement("web-0-aaaa", "node-a", 0), placement("web-1-bbbb", "node-b", 1)]
    )
    placed = await client.propose(place, epoch=manager.epoch)
    assert placed.outcomes[0].ok, placed.outcomes[0].error

    running_report = InstanceReport(id="web-0-aaaa", state="running", seq=1, pid=7)
    [right] = (await client.propose(InstancesReport("node-a", [running_report]))).outcomes
    assert right.ok and right.value == "1 recorded"
    wrong_report = InstanceReport(id="web-1-bbbb", state="running", seq=1)
    [wrong] = (await client.propose(InstancesReport("node-a", [wrong_report]))).outcomes
    assert wrong.error == "instance web-1-bbbb is placed on node node-b, not node-a"

    for voter in VOTERS:
        on_a = await read(bus, voter, "instances", where={"node": "node-a"})
        assert [(s.id, s.value["state"], s.value["pid"]) for s in on_a] == [
            ("web-0-aaaa", "running", 7)
        ]
        of_web = await read(bus, voter, "instances", where={"job": "web"})
        records = [msgspec.convert(s.value, InstanceRecord) for s in of_web]
        assert [(r.id, r.node, r.state) for r in records] == [
            ("web-0-aaaa", "node-a", "running"),
            ("web-1-bbbb", "node-b", "pending"),
        ]
    [job] = await read(bus, VOTERS[0], "jobs", "web", where={"version": "1"})
    assert msgspec.convert(job.value, JobRecord).spec == spec
    alive = await read(bus, VOTERS[1], "nodes", where={"status": "alive"})
    assert [s.id for s in alive] == ["node-a"]
    one = await read(bus, VOTERS[2], "instances", limit=1)
    assert [s.id for s in one] == ["web-0-aaaa"]
    with pytest.raises(RemoteError, match="instances cannot be selected by state"):
        await read(bus, VOTERS[0], "instances", where={"state": "running"})

    # the change stream: each write's whole record, signed by the relay
    await poll(lambda: _stream_exists(bus), 10, "the change stream")
    feed = changes.follow(
        bus, after=0, kinds=["node", "job", "instance"], secret=read_secret(tmp_path / "secret")
    )
    seen = await collect(feed, 7)
    await feed.aclose()
    assert [(c.kind, c.id, c.version) for c in seen] == [
        ("node", "node-a", 1),
        ("node", "node-b", 1),
        ("job", "web", 1),
        ("node", "node-a", 2),
        ("instance", "web-0-aaaa", 1),
        ("instance", "web-1-bbbb", 1),
        ("instance", "web-0-aaaa", 2),
    ]  # the wrong node's report changed nothing
    assert seen[3].epoch == manager.epoch and seen[3].detail["status"] == "alive"
    assert (seen[4].detail["node"], seen[4].detail["state"]) == ("node-a", "pending")
    assert seen[4].epoch == manager.epoch and seen[6].detail == on_a[0].value
    assert seen[2].detail["replicas"] == 2 and "spec" not in seen[2].detail


async def _stream_exists(bus) -> bool:
    try:
        await bus.stream_state(subjects.CHANGES_STREAM)
    except BusError:
        return False
    return True
