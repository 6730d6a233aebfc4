"""The change stream keeper against a real 5-server JetStream cluster (s1..s5, each tagged
with its name): the stream's replicas move onto the voters, follow a replaced voter, and a
stream whose replicas lost their quorum for good is brought back: one whose non-voter
replicas were lost, one whose leader was lost while it moved a lost voter's replica.

The voters and the membership view are the test's (a set, and `_voters.Membership`); the
keeper itself is the real one, acting as if it led (and the relay too, where it says)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiosqlite
import nats.errors
import pytest
from _voters import Membership

from colony.consensus import relay, stream
from colony.consensus.machine import Machine, encode_batch
from colony.consensus.stream import StreamKeeper
from colony.harness.processes import NatsCluster, poll
from colony.shared import bus as busmod
from colony.shared import subjects
from colony.shared.config import NatsSettings
from colony.shared.messages import Change, KvPut, Proposal, decode

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
async def keeping(
    cluster: NatsCluster,
    voters: set[str],
    urls: list[str],
    membership: Membership | None = None,
    reader: aiosqlite.Connection | None = None,
):
    """A bus, the membership view (every server a node), and a keeper running on them; with
    `reader` (a management database), a relay of its change log too."""
    bus = await busmod.connect(NatsSettings(servers=urls), "test")
    await (membership or Membership(SERVERS)).serve(bus)
    runs = [StreamKeeper(bus, "s1", lambda: True, lambda: voters)]
    if reader is not None:
        runs.append(relay.ChangeRelay(bus, reader, lambda: True, 3, SECRET))
    tasks = [asyncio.create_task(run.run()) for run in runs]
    try:
        yield bus
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bus.close()


SECRET = b"stream-placement-test-secret"


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


@pytest.mark.timeout(300)  # above the sum of its own waits, so a failure names the step
async def test_a_stream_whose_leader_died_while_it_moved_a_lost_voters_replica_comes_back(
    cluster, tmp_path, monkeypatch
):
    # As a user saw it: a voter's server dies, its replica starts moving to the voter that
    # replaces it, and the stream leader's server dies before the move is done. The replicas
    # left (one old, one new and behind) cannot elect; JetStream refuses a new placement (a
    # move is in progress) and a replacement for the dead leader's replica (none allowed is
    # free). Once that voter is replaced too, the stream must come back with every change.
    monkeypatch.setattr(stream, "RECREATE_GRACE", 10.0)
    await make_stream(cluster.urls, ["!node:s4", "!node:s5"])
    machine = Machine(tmp_path / "db")
    put(machine, range(1, 301))
    membership = Membership(SERVERS)
    voters = {"s1", "s2", "s3"}
    server = {s.config.name: s for s in cluster.servers}
    async with (
        aiosqlite.connect(machine.path) as reader,
        # Through s4 and s5, which live: a bus on a server killed below would reconnect
        # first, and a placement that late can meet JetStream already knowing the server
        # lost, which then replaces the replica at once instead of moving it (no move to
        # be caught in).
        keeping(cluster, voters, cluster.urls[3:], membership, reader) as bus,
    ):
        await poll(lambda: relayed(bus, 300), 30, "the change log on the stream", every=0.5)
        await poll(lambda: on(bus, {"s1", "s2", "s3"}), 30, "the replicas to be on s1, s2, s3")
        leader = (await bus.stream_placement(STREAM)).leader
        assert leader is not None
        moved, kept = sorted({"s1", "s2", "s3"} - {leader})

        server[moved].kill()
        membership.set(moved, "dead")
        voters.symmetric_difference_update({moved, "s4"})  # s4 replaces it
        await poll(lambda: moving(bus), 30, f"{moved}'s replica to start moving to s4", every=0.05)
        server[leader].kill()
        membership.set(leader, "dead")
        put(machine, range(301, 351))  # what the voters commit while the stream is stuck

        await poll(lambda: described(bus), 30, "the stream to be seen leaderless")
        voters.symmetric_difference_update({leader, "s5"})  # s5 replaces the dead leader
        await poll(
            lambda: relayed(bus, 350), 90, "the stream to hold every change again", every=0.5
        )
        await poll(lambda: on(bus, {kept, "s4", "s5"}), 30, "the replicas on the voters")


def put(machine: Machine, indexes: range) -> None:
    for index in indexes:
        machine.apply(index, encode_batch([Proposal(f"p{index}", KvPut(f"k{index}", "v"))]))


async def relayed(bus, last: int) -> bool:
    """The stream holds every change of the change log up to `last`."""
    with contextlib.suppress(busmod.BusError):
        state = await bus.stream_state(STREAM)
        seqs = range(state.first_seq, state.last_seq + 1)
        indexes = {decode(m.data, Change).index for s in seqs if (m := await bus.stored(STREAM, s))}
        return indexes >= set(range(1, last + 1))
    return False


async def moving(bus) -> bool:
    with contextlib.suppress(busmod.BusError):
        where = await bus.stream_placement(STREAM)
        return len(where.peers) > where.replicas
    return False


async def described(bus) -> bool:
    """The JetStream meta leader describes the stream without a leader (it does only after
    some 10 s), or the stream has its leader back."""
    with contextlib.suppress(busmod.BusError):
        await bus.stream_placement(STREAM)
        return True
    return False
