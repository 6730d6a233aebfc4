"""End to end, in a real `colony up --nodes 5` cluster (3 voters, 2 standby nodes): the change
stream's replicas stay on live voters.

The stream's three replicas are on the three voters. A voter holding one dies for good:
a standby replaces it, and the replica follows it onto the new voter. Then the last
standby dies too: two non-voter nodes lost for good (the old voter and the standby), the
Raft group is fine, and changes keep flowing on the stream through all of it.

As a user saw it: a voter holding a replica dies, its replica starts moving to the
standby that replaces it, and the stream leader's node dies before the move is done. The
replicas left cannot elect a leader; the voters (a majority lives) must get the stream
back by themselves once the second lost voter is replaced, with every change on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from _cli import colony, down, up

from colony.cli.local.ports import free_base_port
from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import Bus, BusError, connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

STREAM = subjects.CHANGES_STREAM
REPLACED = 60
"""Seconds for membership to declare a killed voter dead and the leader to replace it."""
RESCUED = 60
"""Seconds for the stream keeper to bring back a stream that lost its quorum, once the voters
are replaced (the meta leader describes it after some 10 s, re-created after 30 s more)."""


async def test_the_change_stream_follows_the_voters_and_outlives_non_voters(tmp_path):
    await on_five_nodes(tmp_path, story)


async def test_the_change_stream_comes_back_when_its_leader_dies_while_it_moves(tmp_path):
    await on_five_nodes(tmp_path, leader_lost_while_moving)


async def on_five_nodes(tmp_path: Path, scenario) -> None:
    """Run `scenario(state, bus, nodes)` on a `colony up --nodes 5` cluster."""
    state = tmp_path / "state"
    up(state, free_base_port(5), nodes=5)
    try:
        nodes = {n.read_id(): n for n in StateDir(state).nodes()}
        bus = await connect(NatsSettings(servers=[n.nats_url() for n in nodes.values()]), "test")
        try:
            await scenario(state, bus, nodes)
        finally:
            await bus.close()
    finally:
        down(state)


async def leader_lost_while_moving(state: Path, bus: Bus, nodes: dict) -> None:
    cluster = Cluster(bus, list(nodes))
    voters = set((await cluster.wait_settled(60, voters=3)).voters)
    await poll(lambda: on(bus, voters), 30, f"the stream's replicas on the voters {voters}")
    await flows(bus, state, "first")

    # 1. A voter holding a replica, not the stream's leader, dies: its replica starts moving.
    leader = (await bus.stream_placement(STREAM)).leader
    lost = min(voters - {leader})
    nodes[lost].crash()
    await poll(
        lambda: moving(bus, lost), REPLACED + 30, f"{lost}'s replica to start moving", every=0.05
    )
    # 2. The stream leader's node dies before the move is done (if it was seen under way).
    leader = (await bus.stream_placement(STREAM)).leader or leader
    nodes[leader].crash()
    await flows(bus, state, "stuck", within=REPLACED + RESCUED)

    # 3. Its voter replaced too, the stream is on the voters, every change on it.
    top = await cluster.until(
        lambda s: (t := s.settled(3)) and not {lost, leader} & set(t.voters) and t,
        REPLACED,
        "standbys to replace both lost voters",
    )
    await poll(lambda: on(bus, set(top.voters)), 30, f"the stream on the voters {top.voters}")
    for key in ("first", "stuck"):
        assert await bus.last_message(STREAM, subjects.change("kv", key)) is not None
    await flows(bus, state, "back")


async def moving(bus: Bus, lost: str) -> bool:
    """JetStream moves `lost`'s replica (more peers than replicas), or has moved it already."""
    with contextlib.suppress(BusError):
        where = await bus.stream_placement(STREAM)
        return len(where.peers) > where.replicas or lost not in {p.name for p in where.peers}
    return False


async def story(state: Path, bus: Bus, nodes: dict) -> None:
    cluster = Cluster(bus, list(nodes))
    top = await cluster.wait_settled(60, voters=3)
    voters = set(top.voters)
    await poll(lambda: on(bus, voters), 30, f"the stream's replicas on the voters {voters}")
    await flows(bus, state, "first")

    # 1. A voter holding a replica dies for good: a standby replaces it, the replica follows.
    lost = min(voters - {top.node})
    nodes[lost].crash()
    await flows(bus, state, "one-lost")
    top = await cluster.until(
        lambda s: (t := s.settled(3)) and lost not in t.voters and t,
        REPLACED,
        f"a standby to replace the lost voter {lost}",
    )
    voters = set(top.voters)
    await poll(lambda: on(bus, voters), 30, f"the lost voter's replica to move onto {voters}")
    await flows(bus, state, "replaced")

    # 2. The last standby dies too: two non-voter nodes are lost for good; the stream goes on.
    [standby] = set(nodes) - voters - {lost}
    nodes[standby].crash()
    await flows(bus, state, "two-lost")
    assert await on(bus, voters)


async def on(bus: Bus, servers: set[str]) -> bool:
    """The stream has a leader, and its replicas, every one current, are on `servers`."""
    with contextlib.suppress(BusError):
        where = await bus.stream_placement(STREAM)
        current = where.leader and all(p.current for p in where.peers)
        return bool(current) and {p.name for p in where.peers} == servers
    return False


async def flows(bus: Bus, state: Path, key: str, within: float = 30) -> None:
    """A write through the CLI comes out on the change stream (within `within` seconds)."""
    await asyncio.to_thread(colony, "kv", "put", key, "yes", state=state)

    async def relayed() -> bool:
        with contextlib.suppress(BusError):
            change = await bus.last_message(STREAM, subjects.change("kv", key))
            return change is not None
        return False

    await poll(relayed, within, f"the change of {key} on the stream", every=0.2)
