"""A voter that joins must not replay the history of the voters: five Raft voters in this
process against a real nats-server, with a membership view the test controls.

x is removed and added back, with more than one frame's worth of log between the two,
and then leads. y is removed and added back too. Sent the log from its start, y would
apply `remove x` in one frame and `add x` only frames later: in between, x (the leader)
is a stranger to it, whose frames it drops, so it never catches up and campaigns instead.
The leader compacts its log before y is added: y is sent a snapshot holding the voters as
they are, and joins under x, at x's term.
"""

from __future__ import annotations

import pytest
from _voters import Membership, Voters

from colony.shared import subjects
from colony.shared.cluster import Cluster
from colony.shared.messages import (
    KvPut,
    Proposal,
    ProposeRequest,
    new_id,
)

VOTERS = ["v1", "v2", "v3", "v4", "v5"]
BIG = "x" * 120_000
"""A value large enough that a few entries fill a Raft frame (half a MiB)."""


@pytest.fixture
async def nodes(nats_server, tmp_path):
    group = Voters(nats_server, tmp_path, VOTERS)
    yield group
    await group.stop_all()


async def removed_and_back(nodes: Voters, membership: Membership, bus, node: str) -> None:
    await nodes.stop(node)
    membership.set(node, "dead")
    await Cluster(bus, VOTERS).wait_settled(30, voters=4)  # node removed
    nodes.start(node)
    membership.set(node, "alive")
    await Cluster(bus, VOTERS).wait_settled(60, voters=5)  # node a voter again


async def test_a_voter_added_back_is_sent_the_voters_as_they_are_not_their_history(nodes, bus):
    membership = Membership(VOTERS)
    await membership.serve(bus)
    for node in VOTERS:
        nodes.start(node)
    cluster = Cluster(bus, VOTERS)
    first = await cluster.wait_settled(30, voters=5)
    x, y = [n for n in VOTERS if n != first.node][:2]

    await nodes.stop(x)
    membership.set(x, "dead")
    await cluster.wait_settled(30, voters=4)  # x removed
    for _ in range(8):  # more than a frame's worth between `remove x` and `add x`
        write = ProposeRequest(proposals=[Proposal(new_id(), KvPut("big", BIG))])
        assert (await bus.request(subjects.propose(first.node), write, 10)).outcomes[0].ok
    nodes.start(x)
    membership.set(x, "alive")
    await cluster.wait_settled(60, voters=5)  # x a voter again

    membership.cpu[x] = 16.0  # far more free resources: the leadership moves to x
    leading = await cluster.until(
        lambda s: (top := s.settled(5)) and top.node == x and top, 60, f"settled leader {x}"
    )

    await removed_and_back(nodes, membership, bus, y)
    now = await cluster.status(x)
    assert (now.role, now.term) == ("leader", leading.term), "y's joining unseated x"
    assert (await cluster.status(y)).leader == x
