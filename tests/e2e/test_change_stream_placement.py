"""End to end, in a real `colony up --nodes 5` cluster (3 voters, 2 standby nodes): the change
stream's replicas stay on live voters.

The stream's three replicas are on the three voters. A voter holding one dies for good:
a standby replaces it, and the replica follows it onto the new voter. Then the last
standby dies too: two non-voter nodes lost for good (the old voter and the standby), the
Raft group is fine, and changes keep flowing on the stream through all of it.
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


async def test_the_change_stream_follows_the_voters_and_outlives_non_voters(tmp_path):
    state = tmp_path / "state"
    up(state, free_base_port(5), nodes=5)
    try:
        nodes = {n.read_id(): n for n in StateDir(state).nodes()}
        bus = await connect(NatsSettings(servers=[n.nats_url() for n in nodes.values()]), "test")
        try:
            await story(state, bus, nodes)
        finally:
            await bus.close()
    finally:
        down(state)


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


async def flows(bus: Bus, state: Path, key: str) -> None:
    """A write through the CLI comes out on the change stream."""
    await asyncio.to_thread(colony, "kv", "put", key, "yes", state=state)

    async def relayed() -> bool:
        with contextlib.suppress(BusError):
            change = await bus.last_message(STREAM, subjects.change("kv", key))
            return change is not None
        return False

    await poll(relayed, 30, f"the change of {key} on the stream", every=0.2)
