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
    HealthReport,
    InstanceRecord,
    InstanceReport,
    InstancesHealth,
    InstancesPlace,
    InstancesReport,
    JobPromote,
    JobRecord,
    JobRollback,
    JobRun,
    JobVersion,
    NodeDrain,
    NodeDrained,
    NodeRegister,
    NodeStatus,
    Placement,
    QueryRequest,
    RolloutProgress,
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


async def test_rollouts_history_health_and_drain_through_every_voter(voters, bus):
    """Issue 14's commands through real voters: each voter holds the same records."""
    manager = await Cluster(bus, VOTERS).wait_manager(20)
    client = Management(bus, VOTERS)
    v1 = JobSpec(name="web", task=Task(command="sleep", args=["60"]), replicas=1)
    v2 = msgspec.structs.replace(v1, task=Task(command="sleep", args=["61"]))
    await client.propose(register("node-a"), register("node-b"))
    [new] = (await client.propose(JobRun(spec=v1, cause="ann@box: colony job run"))).outcomes
    assert new.value == "new"
    place = InstancesPlace([placement("web-0-aaaa", "node-a", 0)])
    assert (await client.propose(place, epoch=manager.epoch)).outcomes[0].ok
    started = InstanceReport(id="web-0-aaaa", state="running", seq=1, started_at=5.0)
    await client.propose(InstancesReport("node-a", [started]))

    # health: only from the instance's node
    report = HealthReport(id="web-0-aaaa", health="healthy", run=5.0, seq=10, output="ok")
    [wrong] = (await client.propose(InstancesHealth("node-b", [report]))).outcomes
    assert wrong.error == "instance web-0-aaaa is placed on node node-a, not node-b"
    [right] = (await client.propose(InstancesHealth("node-a", [report]))).outcomes
    assert right.value == "1 recorded"

    # the rollout: the manager's progress, then a new version and a rollback to the first
    with pytest.raises(ManagementError, match="needs the manager's epoch"):
        await client.propose(RolloutProgress("web", 1, status="succeeded"))
    done = RolloutProgress("web", 1, status="succeeded", placed=1, healthy=1)
    assert (await client.propose(done, epoch=manager.epoch)).outcomes[0].value == "recorded"
    await client.propose(JobRun(spec=v2, cause="ann@box: colony job run"))
    [promote] = (await client.propose(JobPromote("web"))).outcomes
    assert "has no canaries to promote" in promote.error
    [back] = (await client.propose(JobRollback("web"))).outcomes
    assert (back.ok, back.value, back.version) == (True, "rollback", 3)

    # drain
    [drain] = (await client.propose(NodeDrain("node-a", True, deadline=60.0))).outcomes
    assert drain.value == "draining"
    [ghost] = (await client.propose(NodeDrain("ghost", True))).outcomes
    assert "no node ghost is known" in ghost.error
    [drained] = (await client.propose(NodeDrained("node-a"), epoch=manager.epoch)).outcomes
    assert drained.value == "drained"

    seen = []
    for voter in VOTERS:
        [job] = await read(bus, voter, "jobs", "web")
        [instance] = await read(bus, voter, "instances", "web-0-aaaa")
        [node] = await read(bus, voter, "nodes", "node-a")
        seen.append((job.value, instance.value, node.value))
    assert seen[0] == seen[1] == seen[2]
    job, instance, node = seen[0]
    assert (job["version"], job["stable"], job["cause"]) == (3, 1, "rollback to version 1")
    assert (job["rollout"]["version"], job["rollout"]["previous"]) == (3, 2)
    assert (instance["health"], instance["health_run"], instance["health_output"]) == (
        "healthy", 5.0, "ok",
    )  # fmt: skip
    assert (node["drain"], node["eligible"]) == ("drained", False)

    # history: every version newest first, a page at a time; an unknown job at once
    listing = await client.query_all("job_versions", key="web", limit=2)
    versions = [msgspec.convert(s.value, JobVersion) for s in listing.objects]
    assert [(v.version, v.outcome, v.current) for v in versions] == [
        (3, "", True), (2, "superseded", False), (1, "succeeded", False),
    ]  # fmt: skip
    assert versions[0].spec == v1 and versions[1].cause == "ann@box: colony job run"
    loop = asyncio.get_running_loop()
    asked = loop.time()
    with pytest.raises(ManagementError, match="no job nope"):
        await client.query_all("job_versions", key="nope")
    assert loop.time() - asked < 5  # refused, not retried until the client gives up
