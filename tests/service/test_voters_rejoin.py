"""Five Raft voters in this process against a real nats-server, with a membership view the
test controls: two removed voters that restart on their old journals hear each other and
campaign at ever higher terms; when membership says they are alive again, the leader has
each retire, adds it back, and it joins afresh, without the leader losing its term."""

from __future__ import annotations

import asyncio
import time

import pytest

from colony.consensus.service import ConsensusService
from colony.shared import runner, subjects
from colony.shared.bus import BusError
from colony.shared.config import ConsensusSettings
from colony.shared.messages import (
    ConsensusStatusRequest,
    DigestRequest,
    KvPut,
    MembersReply,
    MemberView,
    NodeMeta,
    Proposal,
    ProposeRequest,
    encode,
    new_id,
)
from colony.shared.testing import poll

VOTERS = ["v1", "v2", "v3", "v4", "v5"]


class Membership:
    """Every node's membership view, the same one, as the test sets it."""

    def __init__(self, nodes: list[str]) -> None:
        now = time.monotonic()
        self.status = dict.fromkeys(nodes, "alive")
        self.changed = dict.fromkeys(nodes, now - 60)

    def set(self, node: str, status: str) -> None:
        self.status[node], self.changed[node] = status, time.monotonic()

    async def serve(self, bus) -> None:
        async def answer(msg) -> None:
            now = time.monotonic()
            members = [
                MemberView(n, s, 1, NodeMeta(), round(now - self.changed[n], 3))
                for n, s in self.status.items()
            ]
            await msg.respond(encode(MembersReply(observer="test", members=members)))

        any_node = subjects.members("v1").name.rsplit(".", 1)[0] + ".*"
        await bus.nc.subscribe(any_node, cb=answer)


class Nodes:
    def __init__(self, server, tmp_path) -> None:
        self.server = server
        self.secret = tmp_path / "secret"
        self.secret.write_text("a-cluster-secret-for-tests")
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}

    def start(self, node: str) -> None:
        config = self.server.node_config(node)
        config.consensus = ConsensusSettings(
            voters=VOTERS, secret_file=str(self.secret), change_stream_replicas=1
        )
        self.stops[node] = asyncio.Event()
        service = ConsensusService()
        self.tasks[node] = asyncio.create_task(runner.run(service, config, stop=self.stops[node]))

    async def stop(self, node: str) -> None:
        self.stops[node].set()
        assert await asyncio.wait_for(self.tasks.pop(node), runner.SHUTDOWN_GRACE) == 0


@pytest.fixture
async def nodes(nats_server, tmp_path):
    group = Nodes(nats_server, tmp_path)
    yield group
    for node in list(group.tasks):
        await group.stop(node)


async def status(bus, node: str):
    try:
        return await bus.request(subjects.consensus_status(node), ConsensusStatusRequest(), 1)
    except BusError:
        return None


async def settled(bus, count: int):
    """The leader's view once it has `count` voters, all connected and caught up, and
    every one of them follows it."""
    views = {n: await status(bus, n) for n in VOTERS}
    leaders = [v for v in views.values() if v and v.role == "leader"]
    if len(leaders) != 1:
        return None
    [top] = leaders
    group = [v.node for v in top.voters if v.connected and (v.node == top.node or v.lag == 0)]
    if len(top.voters) != count or len(group) != count:
        return None
    followers = [views[n] for n in group if n != top.node]
    return top if all(f and f.leader == top.node for f in followers) else None


async def test_removed_voters_that_come_back_rejoin_without_unseating_the_leader(nodes, bus):
    membership = Membership(VOTERS)
    await membership.serve(bus)
    for node in VOTERS:
        nodes.start(node)
    first = await poll(lambda: settled(bus, 5), 30, "five voters and a leader")
    leader, term = first.node, first.term

    # Two followers die: once membership has said so for the grace, the leader removes them.
    gone = [n for n in VOTERS if n != leader][:2]
    for node in gone:
        await nodes.stop(node)
        membership.set(node, "dead")
    three = await poll(lambda: settled(bus, 3), 30, f"{gone} to be removed")
    assert not set(gone) & {v.node for v in three.voters}

    # They restart on their old journals, each still believing it votes: they hear each
    # other, and campaign at ever higher terms while membership has not yet seen them back.
    for node in gone:
        nodes.start(node)
    for node in gone:
        await poll(lambda n=node: _term_above(bus, n, term + 2), 30, f"{node} to campaign")

    # Membership sees them alive: each is told to retire, then added back, and joins afresh.
    for node in gone:
        membership.set(node, "alive")
    five = await poll(lambda: settled(bus, 5), 60, f"{gone} to be voters again")
    assert (five.node, five.term) == (leader, term), "a returning voter unseated the leader"
    for node in gone:
        back = await status(bus, node)
        assert back.role == "follower" and back.term == term
    write = ProposeRequest(proposals=[Proposal(new_id(), KvPut("after", "yes"))])
    assert (await bus.request(subjects.propose(gone[0]), write, 6)).outcomes[0].ok
    # Each started afresh, and holds what everyone holds.
    await poll(lambda: _identical(bus), 20, "every voter's database to be the same")


async def _identical(bus) -> bool:
    try:
        digests = [
            await bus.request(subjects.consensus_digest(n), DigestRequest(), 5) for n in VOTERS
        ]
    except BusError:
        return False
    return len({(d.applied_index, d.sha256) for d in digests}) == 1


async def _term_above(bus, node: str, term: int) -> bool:
    view = await status(bus, node)
    return bool(view and view.role != "standby" and view.term > term)
