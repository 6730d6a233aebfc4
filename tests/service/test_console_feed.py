"""The console's BusFeed against a real nats-server and a real (in-process) voter: the
state read whole, the change stream replayed then followed live, metrics, roles and
membership; after the server restarts, it reconnects, reads again and misses no change.
Everything it emits is applied to a ConsoleModel, as the app does."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from _voters import Membership, running

from colony.console.feed import BusFeed
from colony.console.model import (
    Changed,
    ConnectionChanged,
    ConsoleModel,
    JobsRead,
    Loaded,
    MembersSeen,
    RolesSeen,
    Sampled,
)
from colony.harness.processes import example_metrics, poll
from colony.shared import changes, subjects
from colony.shared.cluster import Cluster
from colony.shared.jobspec import JobSpec, Task
from colony.shared.management import Management
from colony.shared.messages import (
    JobRun,
    JobScale,
    NodeRegister,
    QueryReply,
    QueryRequest,
    Resources,
    decode,
    encode,
)
from colony.shared.signing import read_secret

VOTER = "v1"


def register(node: str, name: str) -> NodeRegister:
    return NodeRegister(
        node=node, name=name, address="127.0.0.1", cpu=2.0, memory=2**30,
        drivers=["process"], port_lo=21000, port_hi=21099,
    )  # fmt: skip


def web(replicas: int = 2, command: str = "sleep") -> JobRun:
    return JobRun(spec=JobSpec(name="web", task=Task(command=command), replicas=replicas))


class Watched:
    """A BusFeed running in a task, every item it emits kept and applied to a model."""

    def __init__(self, feed: BusFeed) -> None:
        self.items: list = []
        self.model = ConsoleModel()
        self.task = asyncio.create_task(feed.run(self.emit))

    def emit(self, item) -> None:
        self.items.append(item)
        self.model.apply([item])

    def of(self, kind) -> list:
        return [i for i in self.items if isinstance(i, kind)]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        assert self.task.cancelled()  # it ran until cancelled: it never gave up by itself


@pytest.fixture
async def voter(nats_server, tmp_path):
    async with running(nats_server, tmp_path, [VOTER]) as group:
        yield group


async def test_reads_replays_follows_and_reconnects(nats_server, voter, bus, tmp_path):
    await Cluster(bus, [VOTER]).wait_manager(20)
    client = Management(bus, [VOTER])
    replies = await client.propose(register("n1-aaaa", "node-1"), web())
    assert all(o.ok for o in replies.outcomes)
    await Membership(["n1-aaaa"]).serve(bus)
    secret = read_secret(tmp_path / "secret")
    # (the leader relays commits to the stream a moment later: wait for these two)
    await poll(lambda: _relayed(bus, secret, 2), 10, "the node and job relayed")

    watched = Watched(BusFeed([nats_server.url], [VOTER], secret, history=100, roles_every=0.2))
    try:
        model = watched.model
        await poll(lambda: watched.of(Loaded), 15, "the state read whole")
        [loaded] = watched.of(Loaded)
        assert [n.name for n in loaded.nodes] == ["node-1"]
        assert [(j.name, j.version, j.replicas) for j in loaded.jobs] == [("web", 1, 2)]
        states = [c.connection.state for c in watched.of(ConnectionChanged)]
        assert states[:2] == ["connecting", "connected"]
        assert model.connection.server == nats_server.url

        # the history kept: every change so far, replayed (not live), as events only
        # (the stream holds the manager's lease and the leader's changes too, before them)
        def replayed() -> list:
            return [(e.kind, e.id, e.live) for e in model.events if e.kind in ("node", "job")]

        await poll(lambda: len(replayed()) >= 2, 10, "the history replayed")
        assert replayed() == [("node", "n1-aaaa", False), ("job", "web", False)]

        # live: a scale, then a new spec (its version's spec is read: changes leave it out)
        await client.propose(JobScale(job="web", replicas=5))
        await poll(lambda: model.jobs["web"].replicas == 5, 10, "the scale heard live")
        assert model.events[-1].live and model.events[-1].summary == "job web v1 scaled to 5"
        await client.propose(web(replicas=5, command="true"))
        await poll(lambda: watched.of(JobsRead), 10, "version 2's spec read")
        await poll(lambda: model.jobs["web"].spec.task.command == "true", 5, "the new spec")
        assert model.stale_specs() == set() and model.jobs["web"].version == 2

        # metrics name the node connected through; roles and membership every roles_every
        await bus.publish(
            subjects.node_metrics("n1-aaaa"),
            example_metrics(
                "n1-aaaa", name="node-1", nats_url=nats_server.url, used=Resources(0.1)
            ),
        )
        await poll(lambda: watched.of(Sampled), 10, "a sample")
        await poll(lambda: model.connection.node == "node-1", 5, "the node connected through")
        await poll(lambda: watched.of(RolesSeen) and watched.of(MembersSeen), 10, "roles")
        assert (model.leader, model.manager, model.voters) == (VOTER, VOTER, [VOTER])
        assert model.epoch >= 1 and model.members_of("n1-aaaa") is not None
        [row] = model.node_rows()
        assert (row.name, row.status, row.cpu_history) == ("node-1", "alive", [0.1])

        # the server restarts: the feed says so, reconnects, reads again, misses nothing
        seen = model.index
        nats_server.stop()
        await poll(lambda: model.connection.state == "reconnecting", 10, "reconnecting said")
        nats_server.start()
        await poll(lambda: model.connection.state == "connected", 20, "connected again")
        await poll(lambda: len(watched.of(Loaded)) == 2, 30, "the state read again")
        await client.propose(JobScale(job="web", replicas=3))
        await poll(lambda: model.jobs["web"].replicas == 3, 20, "a change after the restart")
        indexes = [c.change.index for c in watched.of(Changed)]
        assert indexes == sorted(set(indexes)), "a change was emitted twice or out of order"
        assert [e.index for e in model.events if e.index > seen][-1] == model.index
    finally:
        await watched.stop()


async def _relayed(bus, secret: bytes, count: int) -> bool:
    """Whether the stream holds `count` changes of nodes and jobs."""
    feed = changes.follow(bus, after=0, kinds=["node", "job"], secret=secret)
    try:
        async with asyncio.timeout(0.5):
            for _ in range(count):
                await anext(feed)
        return True
    except TimeoutError:
        return False
    finally:
        await feed.aclose()


async def test_with_no_server_it_says_why_and_keeps_trying():
    watched = Watched(BusFeed(["nats://127.0.0.1:1"], [VOTER], None, connect_timeout=0.2))
    try:
        await poll(lambda: len(watched.of(ConnectionChanged)) >= 3, 10, "attempts said")
        shown = watched.model.connection
        assert shown.state == "connecting" and "cannot reach any nats server" in shown.detail
        assert shown.server == "nats://127.0.0.1:1" and not watched.task.done()
    finally:
        await watched.stop()


async def test_a_lagging_voter_does_not_hide_what_changed(nats_server, voter, bus, tmp_path):
    # a voter whose copy is behind (a follower): its stale reads hold nothing yet, and it
    # leaves linearizable reads to the leader (here: it does not answer them)
    async def lagging(msg) -> None:
        request = decode(msg.data, QueryRequest)
        if request.stale:
            await msg.respond(encode(QueryReply(key=request.key, value=None, version=0, index=0)))

    await bus.nc.subscribe(subjects.query("lag").name, cb=lagging)
    await Cluster(bus, [VOTER]).wait_manager(20)
    client = Management(bus, [VOTER])
    replies = await client.propose(register("n1-aaaa", "node-1"), web())
    assert all(o.ok for o in replies.outcomes)
    secret = read_secret(tmp_path / "secret")
    await poll(lambda: _relayed(bus, secret, 2), 10, "the node and job relayed")

    watched = Watched(BusFeed([nats_server.url], ["lag", VOTER], secret, history=100))
    try:
        await poll(lambda: watched.of(Loaded), 15, "the state read whole")
        await poll(lambda: len(watched.model.events) >= 2, 10, "the history replayed")
        # the changes up to the read are events only: the read itself must hold them
        assert list(watched.model.nodes) == ["n1-aaaa"]
        assert list(watched.model.jobs) == ["web"]
    finally:
        await watched.stop()
