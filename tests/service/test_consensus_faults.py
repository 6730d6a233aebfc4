"""Raft voters as real processes, killed with -9, over a real 3-server NATS cluster.

Each voter is `python -m colony.consensus` connected to its own nats-server
(Raft runs over a clustered NATS, as in a real cluster). Clients are the
retrying `Management` client every proposer uses. What is checked: no
acknowledged write is lost, none is applied twice, no quorum means a clear
refusal, a restarted voter catches up to an identical database, and the
history of concurrent operations across leader kills is linearizable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sqlite3
import time

import pytest

from colony.harness.linearizability import Operation, check
from colony.harness.processes import VoterProcesses, poll
from colony.shared import subjects
from colony.shared.bus import BusError, connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    DigestRequest,
    KvCas,
    KvPut,
)

_runs = itertools.count()


@pytest.fixture
def voters(nats_cluster, tmp_path):
    group = VoterProcesses(nats_cluster, tmp_path, prefix=f"r{next(_runs)}")
    for node in group.ids:
        group.start(node)
    yield group
    group.kill_all()


@pytest.fixture
async def client_bus(nats_cluster):
    client = await connect(NatsSettings(servers=nats_cluster.urls), "test")
    yield client
    await client.close()


async def agreed_leader(bus, among: list[str], timeout: float = 30) -> str:
    """The leader once every voter in `among` answers following it."""
    top = await Cluster(bus, among).until(
        lambda s: not s.unreachable and s.leader(), timeout, f"leader all of {among} follow"
    )
    return top.node


async def digests(bus, nodes: list[str]) -> dict[str, tuple[int, str]]:
    replies = [await bus.request(subjects.consensus_digest(n), DigestRequest(), 5) for n in nodes]
    return {r.node: (r.applied_index, r.sha256) for r in replies}


async def test_kill_9_of_the_leader_mid_writes_loses_no_acknowledged_write_and_repeats_none(
    voters, client_bus
):
    chief = await agreed_leader(client_bus, voters.ids)
    acknowledged: list[str] = []
    killed = asyncio.Event()

    async def writer(n: int) -> None:
        client = Management(client_bus, voters.ids, timeout=20)
        for i in itertools.count():
            if killed.is_set() and i > 40:
                return
            key = f"c{n}-{i}"
            ids = [f"{key}-id"]
            reply = await client.propose(KvPut(key, "x"), ids=ids)
            if i % 5 == 0:  # a retry of a committed proposal: answered, not applied again
                again = await client.propose(KvPut(key, "x"), ids=ids)
                assert again.outcomes == reply.outcomes  # the first outcome, first index
            acknowledged.append(key)

    writers = [asyncio.create_task(writer(n)) for n in range(4)]
    await poll(lambda: len(acknowledged) >= 60, 30, "writes to flow")
    voters.kill(chief)
    killed.set()
    await asyncio.gather(*writers)
    survivors = [n for n in voters.ids if n != chief]
    assert await agreed_leader(client_bus, survivors) != chief
    for node in survivors:
        client = Management(client_bus, [node])
        await poll(lambda: _applied_everything(client_bus, survivors), 20, "survivors to apply all")
        for key in acknowledged:
            read = await client.get(key, stale=True)
            assert (read.value, read.version) == ("x", 1), (node, key)  # once, never twice


async def _applied_everything(bus, nodes: list[str]) -> bool:
    try:
        found = await digests(bus, nodes)
    except BusError:  # one is not answering yet (restarting)
        return False
    return len({sha for _, sha in found.values()}) == 1


async def test_without_a_quorum_writes_are_refused_clearly_and_stale_reads_still_answer(
    voters, client_bus
):
    chief = await agreed_leader(client_bus, voters.ids)
    client = Management(client_bus, voters.ids, timeout=20)
    await client.propose(KvPut("before", "yes"))
    lost = [n for n in voters.ids if n != chief]
    for node in lost:
        voters.kill(node)
    hurried = Management(client_bus, [chief], timeout=3)
    with pytest.raises(ManagementError, match=r"no quorum|no leader|not committed") as refused:
        await hurried.propose(KvPut("during", "no"))
    assert refused.value.retryable
    stale = await hurried.get("before", stale=True)
    assert stale.value == "yes"
    voters.start(lost[0])  # a majority again: it recovers by itself
    reply = await client.propose(KvPut("after", "yes"))
    assert reply.outcomes[0].ok
    assert (await client.get("after")).value == "yes"


async def test_a_restarted_voter_catches_up_and_every_database_is_identical(voters, client_bus):
    chief = await agreed_leader(client_bus, voters.ids)
    client = Management(client_bus, voters.ids, timeout=20)
    follower = next(n for n in voters.ids if n != chief)
    await client.propose(*(KvPut(f"a{i}", str(i)) for i in range(50)))
    voters.kill(follower)
    for i in range(30):
        await client.propose(KvPut(f"b{i}", str(i)), KvCas("c", None, "first"))
    voters.start(follower)
    await poll(lambda: _applied_everything(client_bus, voters.ids), 30, "the restarted to catch up")
    found = await digests(client_bus, voters.ids)
    assert len({sha for _, sha in found.values()}) == 1, found  # the same SQL dump, 3 processes
    assert (await Management(client_bus, [follower]).get("b29", stale=True)).value == "29"


async def test_concurrent_history_across_leader_kills_is_linearizable(voters, client_bus):
    await agreed_leader(client_bus, voters.ids)
    rng = random.Random(7)
    history: list[Operation] = []
    stop = asyncio.Event()
    values = itertools.count()

    async def client_loop(n: int) -> None:
        client = Management(client_bus, voters.ids, timeout=3)
        while not stop.is_set():
            key = f"k{rng.randrange(3)}"
            kind = rng.choice(["put", "get", "get", "cas"])
            called = time.monotonic()
            try:
                if kind == "put":
                    value = f"v{next(values)}"
                    await client.propose(KvPut(key, value))
                    op = Operation(n, "put", key, value, None, called, time.monotonic())
                elif kind == "get":
                    read = await client.get(key)
                    op = Operation(n, "get", key, None, read.value, called, time.monotonic())
                else:
                    expected = f"v{rng.randrange(max(next(values), 1))}"
                    new = f"v{next(values)}"
                    reply = await client.propose(KvCas(key, expected, new))
                    ok = reply.outcomes[0].ok
                    op = Operation(n, "cas", key, (expected, new), ok, called, time.monotonic())
            except ManagementError:
                # unanswered: it may or may not have taken effect, at any time after the call
                if kind == "get":
                    continue
                inp = value if kind == "put" else (expected, new)
                op = Operation(n, kind, key, inp, None, called, None)
            history.append(op)

    clients = [asyncio.create_task(client_loop(n)) for n in range(4)]
    for _ in range(3):  # kill the leader three times, bringing it back each time
        await poll(lambda: len(history) >= 30, 30, "operations to flow")
        chief = await agreed_leader(client_bus, voters.ids)
        voters.kill(chief)
        await agreed_leader(client_bus, [n for n in voters.ids if n != chief])
        voters.start(chief)
        resumed_from = len(history)
        await poll(lambda n=resumed_from: len(history) > n + 20, 30, "operations to resume")
    stop.set()
    await asyncio.gather(*clients)
    result = check(history, max_steps=5_000_000)
    assert result.linearizable, result.explanation
    assert sum(op.kind == "get" for op in history) > 20


async def test_no_command_of_an_epoch_applies_after_a_higher_epoch_is_granted(
    voters, client_bus, tmp_path
):
    """Chaos: the manager's voter is killed -9 again and again, while writers keep
    proposing on the manager's behalf at every epoch they have heard of, old ones
    included. The whole change log then shows each command of epoch e applied only
    while e was the newest granted epoch."""
    events = await client_bus.subscribe(subjects.manager_acting())
    epochs: set[int] = set()
    outcomes: dict[str, int] = {"applied": 0, "stale": 0, "other": 0}
    stop = asyncio.Event()
    rng = random.Random(5)

    async def listen() -> None:
        async for event in events:
            if event.acting:
                epochs.add(event.epoch)

    async def write(n: int) -> None:
        client = Management(client_bus, voters.ids, timeout=5)
        for i in itertools.count():
            if stop.is_set():
                return
            if not epochs:
                await asyncio.sleep(0.05)
                continue
            epoch = rng.choice(sorted(epochs))  # old epochs as likely as the newest
            try:
                reply = await client.propose(KvPut(f"w{n}-{i}", str(epoch)), epoch=epoch)
            except ManagementError:
                outcomes["other"] += 1
                continue
            [outcome] = reply.outcomes
            kind = "applied" if outcome.ok else "stale" if "epoch" in outcome.error else "other"
            outcomes[kind] += 1

    listening = asyncio.create_task(listen())
    writers = [asyncio.create_task(write(n)) for n in range(3)]
    try:
        for _ in range(3):
            holder = await _acting_manager(client_bus, voters.ids)
            await asyncio.sleep(1.0)  # writes flow under this manager
            voters.kill(holder)
            survivors = [n for n in voters.ids if n != holder]
            new_holder = await _acting_manager(client_bus, survivors)
            assert new_holder != holder
            voters.start(holder)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        listening.cancel()
    assert outcomes["applied"] > 0 and outcomes["stale"] > 0, outcomes
    assert len(epochs) >= 4

    await poll(lambda: _applied_everything(client_bus, voters.ids), 30, "voters to agree")
    voters.kill_all()
    log = sqlite3.connect(tmp_path / voters.ids[0] / "consensus" / "management.db")
    granted, applied_at = 0, {}
    for kind, version, epoch, detail in log.execute(
        "SELECT kind, version, epoch, detail FROM changes ORDER BY idx"
    ):
        if kind == "lease" and json.loads(detail)["event"] == "granted":
            assert version == granted + 1  # each grant raises the epoch by exactly one
            granted = version
        elif kind == "kv":
            assert epoch == granted, f"a command of epoch {epoch} applied at epoch {granted}"
            applied_at[epoch] = applied_at.get(epoch, 0) + 1
    log.close()
    assert sum(applied_at.values()) >= outcomes["applied"]  # a lost reply may have applied
    print(f"\nfenced writes: {outcomes}; applied per epoch: {applied_at}")


async def _acting_manager(bus, among: list[str], timeout: float = 20) -> str:
    """The voter among `among` that acts as manager, once every one of them agrees."""
    chief = await Cluster(bus, among).until(
        lambda s: not s.unreachable and s.manager(), timeout, f"manager all of {among} agree on"
    )
    return chief.node
