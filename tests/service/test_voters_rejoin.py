"""Five Raft voters in this process against a real nats-server, with a membership view the
test controls: two removed voters that restart on their old journals hear each other and
campaign at ever higher terms; when membership says they are alive again, the leader has
each retire, adds it back, and it joins afresh, without the leader losing its term."""

from __future__ import annotations

import pytest
from _voters import Membership, Voters

from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import BusError
from colony.shared.cluster import Cluster
from colony.shared.messages import DigestRequest, KvPut, Proposal, ProposeRequest, new_id

VOTERS = ["v1", "v2", "v3", "v4", "v5"]


@pytest.fixture
async def nodes(nats_server, tmp_path):
    group = Voters(nats_server, tmp_path, VOTERS)
    yield group
    await group.stop_all()


async def test_removed_voters_that_come_back_rejoin_without_unseating_the_leader(nodes, bus):
    membership = Membership(VOTERS)
    await membership.serve(bus)
    for node in VOTERS:
        nodes.start(node)
    cluster = Cluster(bus, VOTERS)
    first = await cluster.wait_settled(30, voters=5)
    leader, term = first.node, first.term

    # Two followers die: once membership has said so for the grace, the leader removes them.
    gone = [n for n in VOTERS if n != leader][:2]
    for node in gone:
        await nodes.stop(node)
        membership.set(node, "dead")
    three = await cluster.wait_settled(30, voters=3)  # the two gone removed
    assert not set(gone) & set(three.voters)

    # They restart on their old journals, each still believing it votes: they hear each
    # other, and campaign at ever higher terms while membership has not yet seen them back.
    for node in gone:
        nodes.start(node)
    for node in gone:
        await cluster.until(
            lambda s, n=node: _term_above(s.of[n], term + 2), 30, f"{node} campaigning", [node]
        )

    # Membership sees them alive: each is told to retire, then added back, and joins afresh.
    for node in gone:
        membership.set(node, "alive")
    five = await cluster.wait_settled(60, voters=5)  # the two gone voters again
    assert (five.node, five.term) == (leader, term), "a returning voter unseated the leader"
    for node in gone:
        back = await cluster.status(node)
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


def _term_above(view, term: int) -> bool:
    return bool(view and view.role != "standby" and view.term > term)
