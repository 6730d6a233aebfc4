"""The change stream keeper against a real 5-server JetStream cluster (s1..s5, each tagged
with its name): the stream's replicas move onto the voters, follow a replaced voter, and a
stream whose non-voter replicas were lost for good is brought back.

The voters and the membership view are the test's (a set, and `_voters.Membership`); the
keeper itself is the real one, acting as if it led."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats.errors
import pytest
from _voters import Membership

from colony.consensus.stream import StreamKeeper
from colony.harness.processes import NatsCluster, poll
from colony.shared import bus as busmod
from colony.shared import subjects
from colony.shared.config import NatsSettings

STREAM = subjects.CHANGES_STREAM
SUBJECT = subjects.change("kv", subjects.ANY).name
SERVERS = ["s1", "s2", "s3", "s4", "s5"]


@pytest.fixture
async def cluster(tmp_path):
    cluster = NatsCluster(tmp_path / "nats", size=5).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def keeping(cluster: NatsCluster, voters: set[str], urls: list[str]):
    """A bus, the membership view (every server a node), and a keeper running on them."""
    bus = await busmod.connect(NatsSettings(servers=urls), "test")
    await Membership(SERVERS).serve(bus)
    keeper = StreamKeeper(bus, "s1", lambda: True, lambda: voters)
    task = asyncio.create_task(keeper.run())
    try:
        yield bus
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()


async def make_stream(urls: list[str], placement: list[str]) -> None:
    """The stream, R3, placed as asked (the meta leader may not know every server yet)."""
    ACKNOWLEDGED.clear()
    bus = await busmod.connect(NatsSettings(servers=urls), "maker")
    try:

        async def made() -> bool:
            with contextlib.suppress(busmod.BusError):
                await bus.ensure_stream(STREAM, [SUBJECT], replicas=3, placement=placement)
                return True
            return False

        await poll(made, 20, "the stream to be made", every=0.2)
    finally:
        await bus.close()


async def peers(bus) -> set[str] | None:
    """The servers holding the stream, once every one of them is current."""
    with contextlib.suppress(busmod.BusError):
        where = await bus.stream_placement(STREAM)
        if where.leader and all(p.current for p in where.peers):
            return {p.name for p in where.peers}
    return None


ACKNOWLEDGED: list[bytes] = []
"""What the stream acknowledged storing (an unacknowledged publish may be stored too)."""


async def stores(bus) -> bool:
    payload = f"publish {len(ACKNOWLEDGED)} {time.monotonic()}".encode()
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await bus.js.publish(subjects.change("kv", "k").name, payload, timeout=1)
        ACKNOWLEDGED.append(payload)
        return True
    return False


async def held(bus) -> list[bytes]:
    state = await bus.stream_state(STREAM)
    stored = [await bus.stored(STREAM, seq) for seq in range(state.first_seq, state.last_seq + 1)]
    return [m.data for m in stored if m is not None]


async def test_replicas_move_onto_the_voters_and_follow_a_replaced_voter(cluster):
    # started on s3, s4, s5: two of them do not vote
    await make_stream(cluster.urls, ["!node:s1", "!node:s2"])
    voters = {"s1", "s2", "s3"}
    async with keeping(cluster, voters, cluster.urls) as bus:
        await poll(lambda: on(bus, {"s1", "s2", "s3"}), 30, "the replicas to be on s1, s2, s3")
        where = await bus.stream_placement(STREAM)
        assert where.tags == ("!node:s4", "!node:s5")
        assert await stores(bus)

        voters -= {"s3"}  # s3 is replaced by s4 (the keeper reads the set at each look)
        voters |= {"s4"}
        await poll(lambda: on(bus, {"s1", "s2", "s4"}), 30, "s3's replica to move to s4")
        assert await stores(bus)


async def on(bus, servers: set[str]) -> bool:
    return await peers(bus) == servers


async def test_a_stream_whose_non_voter_replicas_died_for_good_comes_back(cluster):
    # on s3, s4, s5 as an older version left it, when s4 and s5 (not voters) die for good
    await make_stream(cluster.urls, ["!node:s1", "!node:s2"])
    bus = await busmod.connect(NatsSettings(servers=cluster.urls[:3]), "test")
    try:
        await poll(lambda: stores(bus), 20, "the stream to store a first change", every=0.2)
    finally:
        await bus.close()
    for server in cluster.servers[3:]:
        server.kill()

    async with keeping(cluster, {"s1", "s2", "s3"}, cluster.urls[:3]) as bus:
        assert not await stores(bus)  # no quorum: the stream has stopped
        await poll(lambda: stores(bus), 45, "the stream to store again", every=0.5)
        await poll(lambda: on(bus, {"s1", "s2", "s3"}), 30, "the replicas to be on the voters")
        assert set(ACKNOWLEDGED) <= set(await held(bus))  # nothing acknowledged lost
