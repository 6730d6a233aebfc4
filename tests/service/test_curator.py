"""The curator against three real voters on a real nats-server, one curator per voter (only
the manager's acts), the agents played by the test (NodeRegister, InstancesReport), their
monitors too (InstancesHealth), and membership by a stand-in that answers `members` and
publishes `MemberChanged`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import msgspec
import pytest
from _voters import Membership, Voters

from colony.curator.service import CuratorService
from colony.harness.processes import poll
from colony.shared import runner, subjects, tasks
from colony.shared.bus import RemoteError
from colony.shared.cluster import Cluster
from colony.shared.config import ConsensusSettings
from colony.shared.jobspec import JobResources, JobSpec, RestartPolicy, Task, UpdateStrategy
from colony.shared.management import Management
from colony.shared.messages import (
    EndpointsReply,
    EndpointsRequest,
    HealthReport,
    InstanceRecord,
    InstanceReport,
    InstancesHealth,
    InstancesPlace,
    InstancesReport,
    JobRecord,
    JobRun,
    JobScale,
    MemberChanged,
    NodeRecord,
    NodeRegister,
    Placement,
    PlanRequest,
    QueryRequest,
)

VOTERS = ["v1", "v2", "v3"]
AGENTS = ["a1", "a2", "a3"]
MiB = 2**20


class Curators:
    """A curator per voter, in this process, each stoppable on its own."""

    def __init__(self, voters: Voters, resync: float = 5.0) -> None:
        self.voters = voters
        self.resync = resync
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}
        self.services: dict[str, CuratorService] = {}

    def start(self, node: str) -> None:
        config = self.voters.server.node_config(node)
        config.consensus = ConsensusSettings(
            voters=VOTERS,
            secret_file=str(self.voters.secret),
            change_stream_replicas=1,  # one nats-server: the endpoints stream's replicas too
        )
        self.stops[node] = asyncio.Event()
        service = self.services[node] = CuratorService(resync=self.resync)
        self.tasks[node] = asyncio.create_task(runner.run(service, config, stop=self.stops[node]))

    async def stop(self, node: str) -> None:
        self.stops[node].set()
        assert await asyncio.wait_for(self.tasks.pop(node), runner.SHUTDOWN_GRACE) == 0


@contextlib.asynccontextmanager
async def running_with(membership: Membership, nats_server, tmp_path, bus, resync: float = 5.0):
    """Three voters and their curators, membership played by `membership`."""
    await membership.serve(bus)
    voters = Voters(nats_server, tmp_path, VOTERS)
    curators = Curators(voters, resync)
    for node in VOTERS:
        voters.start(node)
        curators.start(node)
    try:
        yield voters, curators, membership
    finally:
        for node in list(curators.tasks):
            await curators.stop(node)
        await voters.stop_all()


@pytest.fixture
async def cluster(nats_server, tmp_path, bus):
    async with running_with(Membership(AGENTS), nats_server, tmp_path, bus) as found:
        yield found


def web(replicas: int = 3, then: str = "reschedule") -> JobSpec:
    return JobSpec(
        name="web",
        task=Task(command="sleep", args=["600"]),
        replicas=replicas,
        resources=JobResources(cpu=1.0, memory=256 * MiB),
        ports=["http"],
        restart=RestartPolicy(then=then),  # type: ignore[arg-type]
    )


async def register(client: Management) -> None:
    for node in AGENTS:
        command = NodeRegister(
            node=node,
            name=node,
            address="127.0.0.1",
            cpu=2.0,
            memory=2048 * MiB,
            drivers=["process"],
            port_lo=30000,
            port_hi=30099,
        )
        assert (await client.propose(command)).outcomes[0].ok


async def read(client: Management, kind: str, record: type) -> list:
    reply = await client.query(QueryRequest(key="", kind=kind, limit=1000))
    return [msgspec.convert(s.value, record) for s in reply.objects]


async def running(client: Management, job: str = "web") -> list[InstanceRecord] | None:
    """The job's instances desired run; None while a slot has two of them."""
    found = [i for i in await read(client, "instances", InstanceRecord) if i.job == job]
    wanted = [i for i in found if i.desired == "run"]
    return wanted if max(Counter(i.slot for i in wanted).values(), default=0) <= 1 else None


async def report(client: Management, instance: InstanceRecord, state: str, seq: int, **fields):
    said = InstanceReport(id=instance.id, state=state, seq=seq, **fields)  # type: ignore[arg-type]
    await client.propose(InstancesReport(node=instance.node, reports=[said]))


async def test_jobs_are_placed_failed_instances_and_dead_nodes_replaced(cluster, bus):
    _voters, _curators, membership = cluster
    manager = await Cluster(bus, VOTERS).wait_manager(30)
    client = Management(bus, VOTERS)
    await register(client)
    await client.propose(JobRun(spec=web(replicas=3)))

    async def placed(count: int, job: str = "web"):
        found = await running(client, job) or []
        return found if sorted(i.slot for i in found) == list(range(count)) else None

    first = await poll(lambda: placed(3), 20, "3 instances of web placed")
    assert {i.node for i in first} <= set(AGENTS)
    assert all(i.desired_reason == "job web submitted" for i in first)
    assert len({(i.node, i.ports["http"]) for i in first}) == 3  # no port given twice
    nodes = {n.node: n for n in await read(client, "nodes", NodeRecord)}
    assert {nodes[a].status for a in AGENTS} == {"alive"}  # from membership
    for i in first:
        await report(client, i, "running", 1, pid=100)

    # The plan answers only on the manager: what running the same spec again would do.
    plan = await bus.request(subjects.curator_plan(), PlanRequest(spec=web(3)), timeout=5)
    assert (plan.change, plan.version, plan.place, plan.epoch) == (
        "unchanged",
        1,
        [],
        manager.epoch,
    )
    bigger = await bus.request(subjects.curator_plan(), PlanRequest(spec=web(4)), timeout=5)
    # replicas change in place: nothing replaced, one more placed
    assert (bigger.change, bigger.version, len(bigger.stop), bigger.in_place) == (
        "update", 2, 0, True,
    )  # fmt: skip
    assert len(bigger.place) == 1 and [c.path for c in bigger.diff] == ["replicas"]
    bigger = await bus.request(subjects.curator_plan(), PlanRequest(spec=web(3, "fail")), timeout=5)
    assert (bigger.change, len(bigger.stop), bigger.in_place, bigger.replace) == (
        "update", 3, False, 3,
    )  # fmt: skip

    # Restarts ran out on one node: a replacement in its slot on another node.
    failed = first[0]
    await report(client, failed, "failed", 2, exit_code=1, reason="exit code 1")

    async def replaced():
        found = {i.slot: i for i in await running(client) or []}
        again = found.get(failed.slot)
        return again if again and again.replaces == failed.id else None

    replacement = await poll(replaced, 20, f"a replacement of {failed.id}")
    assert replacement.node != failed.node
    assert replacement.desired_reason == f"restarts ran out on node {failed.node}: exit code 1"
    everything = {i.id for i in await read(client, "instances", InstanceRecord)}
    assert failed.id not in everything  # stopped and removed: it ran nothing any more

    # A node membership finds dead: its instances run elsewhere.
    now = await running(client)
    assert now is not None
    by_node = Counter(i.node for i in now)
    dead = by_node.most_common(1)[0][0]
    membership.set(dead, "dead")
    for observer in VOTERS:  # whichever curator acts hears it from its own membership
        event = MemberChanged(observer=observer, node=dead, status="dead", incarnation=1)
        await bus.publish(subjects.member_changes(dead), event)

    async def moved():
        found = await running(client) or []
        return found if len(found) == 3 and dead not in {i.node for i in found} else None

    after = await poll(moved, 20, f"web's instances moved off dead node {dead}")
    assert {i.desired_reason for i in after if i.node != dead} >= {f"node {dead} is dead"}
    nodes = {n.node: n for n in await read(client, "nodes", NodeRecord)}
    assert nodes[dead].status == "dead"


async def test_what_cannot_be_placed_is_blocked_and_placed_once_it_fits(cluster, bus):
    await Cluster(bus, VOTERS).wait_manager(30)
    client = Management(bus, VOTERS)
    await register(client)
    await client.propose(JobRun(spec=web(replicas=8)))  # 3 nodes x 2 cores: 6 fit

    async def blocked():
        [job] = [j for j in await read(client, "jobs", JobRecord) if j.name == "web"]
        return job.blocked

    why = await poll(blocked, 20, "web blocked")
    assert why.startswith("2 of 8 instances cannot be placed: 3 nodes lack cpu")
    assert len(await running(client) or []) == 6
    await client.propose(JobScale(job="web", replicas=6))
    assert await poll(lambda: _not(blocked), 20, "web no longer blocked")


async def _not(check):
    return not await check()


async def test_a_new_manager_finishes_what_the_old_one_began(cluster, bus):
    voters, curators, _membership = cluster
    manager = await Cluster(bus, VOTERS).wait_manager(30)
    await curators.stop(manager.node)  # the test plays its curator, then its node dies
    client = Management(bus, VOTERS)
    await register(client)
    await client.propose(JobRun(spec=web(replicas=6)))
    # Half placed, and slot 0 twice (a replacement placed, what it replaced not stopped
    # yet: another proposal), when the manager's node goes away.
    half = [
        Placement(id=id, job="web", version=1, slot=slot, node="a1", cpu=1.0, memory=256 * MiB)
        for id, slot in (("web-0-aaaa", 0), ("web-0-bbbb", 0), ("web-1-cccc", 1))
    ]
    placed = await client.propose(InstancesPlace(placements=half), epoch=manager.epoch)
    assert placed.outcomes[0].ok, placed.outcomes[0].error
    await voters.stop(manager.node)
    others = [n for n in VOTERS if n != manager.node]
    await Cluster(bus, others).wait_manager(30, above_epoch=manager.epoch)
    client = Management(bus, others)

    async def all_placed():
        found = await running(client) or []
        return found if sorted(i.slot for i in found) == list(range(6)) else None

    done = {i.slot: i.id for i in await poll(all_placed, 30, "6 instances, one per slot")}
    assert done[0] in ("web-0-aaaa", "web-0-bbbb") and done[1] == "web-1-cccc"
    plan = await bus.request(subjects.curator_plan(), PlanRequest(spec=web(6)), timeout=5)
    assert plan.epoch > manager.epoch and plan.change == "unchanged"


async def test_a_deposed_curator_stands_by_and_the_new_one_alone_acts(cluster, bus):
    voters, curators, _membership = cluster
    manager = await Cluster(bus, VOTERS).wait_manager(30)
    old = curators.services[manager.node]
    await poll(lambda: old.view is not None, 20, "the manager's curator acting")
    await voters.stop(manager.node)  # its curator goes on running, its lease does not
    others = [n for n in VOTERS if n != manager.node]
    chief = await Cluster(bus, others).wait_manager(30, above_epoch=manager.epoch)
    await poll(lambda: old.epoch == 0 and old.view is None, 20, "the old curator standing by")
    # the new manager's curator hears that its node acts (an event, or its next poll)
    new = curators.services[chief.node]
    await poll(lambda: new.epoch >= chief.epoch, 20, "the new manager's curator acting")
    client = Management(bus, others)
    await register(client)
    await client.propose(JobRun(spec=web(replicas=4)))

    async def placed():
        found = await running(client) or []
        return found if sorted(i.slot for i in found) == list(range(4)) else None

    await poll(placed, 20, "4 instances placed by the new manager")
    plan = await bus.request(subjects.curator_plan(), PlanRequest(spec=web(4)), timeout=5)
    assert plan.epoch > manager.epoch  # never the deposed one (a loaded machine may move it on)


async def test_a_membership_change_heard_before_its_answer_is_read_is_not_lost(
    nats_server, tmp_path, bus
):
    membership = Membership(AGENTS)
    async with running_with(membership, nats_server, tmp_path, bus, resync=120.0) as started:
        told: list[str] = []

        def late(node: str, curator: CuratorService) -> None:
            """a3 dies just after membership answered the curator reading its view: the
            change is queued before the curator takes the answer in."""
            asked = curator._members

            async def members():
                answer = await asked()
                if not told:
                    told.append(node)
                    membership.set("a3", "dead")
                    event = MemberChanged(observer=node, node="a3", status="dead", incarnation=2)
                    await bus.publish(subjects.member_changes("a3"), event)
                    await poll(lambda: curator.queue and curator.queue.qsize(), 5, "a3's change")
                return answer

            curator._members = members  # type: ignore[method-assign]

        for node, curator in started[1].services.items():
            late(node, curator)
        await Cluster(bus, VOTERS).wait_manager(30)
        client = Management(bus, VOTERS)
        await register(client)

        async def a3_dead():
            nodes = {n.node: n.status for n in await read(client, "nodes", NodeRecord)}
            return nodes.get("a3") == "dead"

        await poll(a3_dead, 20, "a3 recorded dead")
        assert told


async def health(client: Management, instance: InstanceRecord, said: str, seq: int) -> None:
    """What `instance`'s node's monitor proposes when it decides its health."""
    report = HealthReport(id=instance.id, health=said, run=instance.started_at, seq=seq)  # type: ignore[arg-type]
    reply = await client.propose(InstancesHealth(node=instance.node, reports=[report]))
    assert reply.outcomes[0].ok, reply.outcomes[0].error


async def test_endpoints_are_the_healthy_instances_served_and_published_by_the_manager(
    cluster, bus
):
    voters, _curators, _membership = cluster
    manager = await Cluster(bus, VOTERS).wait_manager(30)
    client = Management(bus, VOTERS)
    await register(client)
    await client.propose(JobRun(spec=web(replicas=3)))

    async def placed():
        found = await running(client) or []
        return found if sorted(i.slot for i in found) == [0, 1, 2] else None

    instances = sorted(await poll(placed, 20, "3 instances of web placed"), key=lambda i: i.id)
    seen: list[EndpointsReply] = []
    watching = await bus.subscribe(subjects.endpoints_changed("web"))

    async def watch():
        async for reply in watching:
            seen.append(reply)

    watcher = asyncio.create_task(watch())

    async def served(port: str = "") -> list[tuple[str, int]]:
        reply = await bus.request(subjects.endpoints(), EndpointsRequest(job="web", port=port))
        return [(e.instance, e.port) for e in reply.endpoints]

    def published() -> list[str] | None:
        return [e.instance for e in seen[-1].endpoints] if seen else None

    def all_of(*chosen: InstanceRecord) -> list[tuple[str, int]]:
        return [(i.id, i.ports["http"]) for i in chosen]

    try:
        # running is not enough: healthy too, as the node's monitor says
        for seq, i in enumerate(instances, 1):
            await report(client, i, "running", 1, pid=100 + seq, started_at=1000.0 + seq)
        instances = sorted(await running(client) or [], key=lambda i: i.id)
        assert await served() == []
        for i in instances:
            await health(client, i, "healthy", 1)
        every = all_of(*instances)
        await poll(lambda: _equal(served, every), 20, "3 endpoints served")
        await poll(lambda: published() == [i.id for i in instances], 20, "3 endpoints published")
        last = seen[-1]
        assert (last.port, last.epoch) == ("http", manager.epoch)
        assert {(e.host, e.node) for e in last.endpoints} == {
            ("127.0.0.1", i.node) for i in instances
        }
        kept = await bus.last_message(subjects.ENDPOINTS_STREAM, subjects.endpoints_changed("web"))
        assert kept is not None and [e.instance for e in kept.endpoints] == published()

        # unhealthy: out of the set, not stopped (its agent restarts it)
        sick, *others = instances
        await health(client, sick, "unhealthy", 2)
        await poll(lambda: _equal(served, all_of(*others)), 20, f"{sick.id} out of the set")
        await poll(lambda: published() == [i.id for i in others], 20, f"{sick.id} unpublished")

        # stopped (scaled down): out of the set at the commit of its stop, its agent has
        # not said anything yet
        await client.propose(JobScale(job="web", replicas=2))
        stopped = next(i for i in instances if i.slot == 2)
        left = [i for i in others if i.id != stopped.id]
        await poll(lambda: published() == [i.id for i in left], 20, f"{stopped.id} unpublished")
        assert await served() == all_of(*left)
        assert stopped.id in {i.id for i in await read(client, "instances", InstanceRecord)}

        # what a program may ask wrong
        with pytest.raises(RemoteError, match="no job named 'api'") as unknown:
            await bus.request(subjects.endpoints(), EndpointsRequest(job="api"))
        assert unknown.value.code == 404
        with pytest.raises(RemoteError, match=r"no port named 'grpc' \(its ports: http\)") as bad:
            await served("grpc")
        assert bad.value.code == 400

        # a new manager publishes every set again, at its epoch
        await voters.stop(manager.node)
        others_voters = [n for n in VOTERS if n != manager.node]
        chief = await Cluster(bus, others_voters).wait_manager(30, above_epoch=manager.epoch)
        await poll(
            lambda: seen[-1].epoch >= chief.epoch and published() == [i.id for i in left],
            30,
            "the new manager's endpoints of web",
        )
    finally:
        await tasks.cancel(watcher)
        await watching.stop()


async def _equal(check, expected) -> bool:
    return await check() == expected


async def test_a_time_based_rule_is_reconciled_when_due_with_nothing_else_happening(
    nats_server, tmp_path, bus
):
    """A new job's rollout succeeds once its instances have been healthy for
    min_healthy_time: no event comes then, the curator wakes up for it (its resync is
    much later)."""
    async with running_with(Membership(AGENTS), nats_server, tmp_path, bus, resync=120.0):
        await Cluster(bus, VOTERS).wait_manager(30)
        client = Management(bus, VOTERS)
        await register(client)
        spec = msgspec.structs.replace(web(replicas=2), update=UpdateStrategy(min_healthy_time=1.5))
        await client.propose(JobRun(spec=spec))

        async def placed():
            found = await running(client) or []
            return found if sorted(i.slot for i in found) == [0, 1] else None

        for seq, i in enumerate(await poll(placed, 20, "2 instances of web placed"), 1):
            await report(client, i, "running", 1, pid=100 + seq, started_at=1000.0 + seq)
        for i in await running(client) or []:
            await health(client, i, "healthy", 1)

        async def rollout():
            [job] = [j for j in await read(client, "jobs", JobRecord) if j.name == "web"]
            return job if job.rollout and job.rollout.status != "running" else None

        job = await poll(rollout, 20, "web's rollout ended")
        assert (job.rollout.status, job.rollout.healthy, job.stable) == ("succeeded", 2, 1)
        since = max(i.healthy_since for i in await running(client) or [])
        assert job.rollout.ended - since >= 1.5
