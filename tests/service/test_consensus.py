"""Three Raft voters against a real nats-server: commit, read, idempotency, bad input, failover."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from _voters import Voters, running, status

from colony.consensus.raft import Timers
from colony.consensus.service import ConsensusService
from colony.harness.processes import poll
from colony.shared import runner, subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.cluster import Cluster
from colony.shared.config import ConsensusSettings
from colony.shared.management import Management
from colony.shared.messages import (
    Change,
    DigestRequest,
    JoinRequest,
    KvCas,
    KvPut,
    Proposal,
    ProposeRequest,
    QueryRequest,
    decode,
    new_id,
)
from colony.shared.signing import verify

VOTERS = ["v1", "v2", "v3"]


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


async def leader(bus, among=VOTERS) -> str:
    """The leader the voters of `among` agree on, once they do."""
    return (await Cluster(bus, among).wait_leader(20)).node


async def put(bus, via: str, key: str, value: str, id: str | None = None):
    request = ProposeRequest(proposals=[Proposal(id or new_id(), KvPut(key, value))])
    return await bus.request(subjects.propose(via), request, timeout=6)


async def get(bus, via: str, key: str, stale: bool = False):
    return await bus.request(subjects.query(via), QueryRequest(key=key, stale=stale), 6)


async def test_a_write_through_any_voter_is_read_back_through_every_other(voters, bus):
    chief = await leader(bus)
    follower = next(n for n in VOTERS if n != chief)
    reply = await put(bus, follower, "colour", "blue")
    assert reply.outcomes[0].ok and reply.outcomes[0].version == 1 and reply.index > 0
    for node in VOTERS:
        read = await get(bus, node, "colour")
        assert (read.value, read.version) == ("blue", 1)
        assert read.index > reply.index  # the read's barrier came after the write
    view = await status(bus, chief)
    assert view.role == "leader" and view.has_quorum and len(view.voters) == 3


async def test_a_retried_proposal_is_applied_once(voters, bus):
    await leader(bus)
    first = await put(bus, "v1", "k", "one", id="req-1")
    again = await put(bus, "v2", "k", "one", id="req-1")
    assert again.outcomes == first.outcomes
    assert (await get(bus, "v3", "k")).version == 1
    cas = ProposeRequest(proposals=[Proposal(new_id(), KvCas("k", "stale", "two"))])
    refused = (await bus.request(subjects.propose("v3"), cas, 6)).outcomes[0]
    assert not refused.ok and refused.value == "one"


async def test_bad_proposals_and_forged_frames_are_refused_and_nothing_applies(voters, bus, caplog):
    await leader(bus)
    with pytest.raises(RemoteError, match="1 to 512 proposals"):
        await bus.request(subjects.propose("v1"), ProposeRequest(proposals=[]), 6)
    unknown = b'{"proposals": [{"id": "x", "command": {"type": "kv.explode", "key": "k"}}]}'
    reply = await bus.nc.request(subjects.propose("v1").name, unknown, timeout=6)
    assert reply.headers and reply.headers.get("Nats-Service-Error-Code") == "400"
    before = (await status(bus, "v1")).commit_index
    forged = b"\0" * 32 + msgspec.json.encode({"type": "append_entries"})
    await bus.nc.publish(subjects.raft_frames("v1"), forged)
    await bus.nc.flush()
    await poll(
        lambda: any(r.getMessage() == "dropped raft frame" for r in caplog.records),
        5,
        "the forged frame to be dropped",
    )
    after = await put(bus, "v1", "still", "committing")
    assert after.outcomes[0].ok and after.index > before  # it never reached pysyncobj


async def test_writes_survive_the_leader_stopping_and_resume_under_a_new_one(voters, bus):
    first = await leader(bus)
    acknowledged = [await put(bus, first, f"k{i}", str(i)) for i in range(20)]
    await voters.stop(first)
    survivors = [n for n in VOTERS if n != first]

    assert await leader(bus, survivors) in survivors
    after = await put(bus, survivors[0], "after", "yes")
    assert after.outcomes[0].ok
    for node in survivors:
        for i, reply in enumerate(acknowledged):
            assert (await get(bus, node, f"k{i}", stale=True)).value == str(i), reply


async def stream_changes(bus) -> list[tuple[int, Change]]:
    """(stream sequence, change) of every message the stream holds (deleted ones skipped)."""
    state = await bus.stream_state(subjects.CHANGES_STREAM)
    found = []
    for seq in range(1, state.last_seq + 1):
        stored = await bus.stored(subjects.CHANGES_STREAM, seq)
        if stored is not None:
            found.append((seq, decode(stored.data, Change)))
    return found


async def test_the_change_log_reaches_the_stream_without_gaps_or_duplicates_across_leaders(
    voters, bus
):
    first = await leader(bus)
    for i in range(15):
        await put(bus, first, f"k{i}", "one")
    await poll(lambda: _kv_on_stream(bus, 15), 10, "the first 15 changes on the stream")
    # The leader records its term within a look of the lease (0.2 s): 15 writes may be quicker
    await poll(lambda: _on_stream(bus, "leader", first), 10, "the first leader's term recorded")
    await voters.stop(first)
    client = Management(bus, [n for n in VOTERS if n != first])  # retries while they elect
    for i in range(15, 30):
        await client.propose(KvPut(f"k{i % 20}", "two"))
    await poll(lambda: _kv_on_stream(bus, 30), 20, "all 30 changes on the stream")
    new = await leader(bus, [n for n in VOTERS if n != first])
    await poll(lambda: _on_stream(bus, "leader", new), 10, "the new leader's term recorded")
    changes = await stream_changes(bus)
    assert [seq for seq, _ in changes] == [c.index for _, c in changes]  # nothing forged
    assert [c.index for _, c in changes] == list(range(1, len(changes) + 1))
    secret = voters.secret.read_bytes().strip()
    assert all(verify(secret, c, fresh_for=None) for _, c in changes)
    kv = [(c.kind, c.id, c.version) for _, c in changes if c.kind == "kv"]
    assert kv[15:] == [("kv", f"k{i}", 1) for i in range(15, 20)] + [
        ("kv", f"k{i}", 2) for i in range(10)
    ]
    # the leader change shows among them, with the new manager's lease
    elected = [c for _, c in changes if c.kind == "leader"]
    granted = [c for _, c in changes if c.kind == "lease" and c.detail["event"] == "granted"]
    assert first in {c.id for c in elected} and elected[-1].id == new
    assert [c.version for c in granted] == list(range(1, len(granted) + 1))
    assert len(granted) >= 2 and granted[-1].detail["holder"] != first


async def _kv_on_stream(bus, at_least: int) -> bool:
    try:
        changes = await stream_changes(bus)
    except BusError:  # no stream yet, or it cannot answer for a moment
        return False
    return sum(c.kind == "kv" for _, c in changes) >= at_least


async def _on_stream(bus, kind: str, id: str) -> bool:
    try:
        changes = await stream_changes(bus)
    except BusError:
        return False
    return any(c.kind == kind and c.id == id for _, c in changes)


async def test_a_voter_behind_a_compacted_log_catches_up_from_a_snapshot(
    nats_server, tmp_path, bus
):
    group = Voters(nats_server, tmp_path, VOTERS, Timers(compaction_entries=40))
    for node in VOTERS:
        group.start(node)
    try:
        await leader(bus)
        await group.stop("v3")
        client = Management(bus, ["v1", "v2"])
        for i in range(150):  # the others compact their logs past what v3 holds
            await client.propose(KvPut(f"k{i}", str(i)))
        snapshot = tmp_path / "nats" / "v1" / "consensus" / "raft.snapshot"
        await poll(snapshot.exists, 10, "v1 to compact its log into a snapshot")
        group.start("v3")

        async def caught_up() -> bool:
            try:
                found = [
                    await bus.request(subjects.consensus_digest(n), DigestRequest(), 2)
                    for n in VOTERS
                ]
            except BusError:
                return False
            return len({d.sha256 for d in found}) == 1

        await poll(caught_up, 30, "v3 to hold the same database as the others")
        assert (tmp_path / "nats" / "v3" / "consensus" / "raft.snapshot").exists()
        assert (await get(bus, "v3", "k149", stale=True)).value == "149"
        # the snapshot carried the cluster too: v3 still knows every voter
        assert sorted(v.node for v in (await status(bus, "v3")).voters) == VOTERS
    finally:
        for node in list(group.tasks):
            await group.stop(node)


# --- the manager lease --------------------------------------------------------------


async def manager(bus, among=VOTERS, above_epoch: int = 0) -> tuple[str, int]:
    """(holder, epoch) once exactly one voter acts as manager and every voter agrees."""
    chief = await Cluster(bus, among).wait_manager(20, above_epoch=above_epoch)
    return chief.node, chief.epoch


def fenced(epoch: int, key: str) -> ProposeRequest:
    return ProposeRequest(proposals=[Proposal(new_id(), KvPut(key, "x"), epoch=epoch)])


async def test_the_leader_acts_as_manager_and_an_ungranted_epoch_is_refused(voters, bus):
    events = await bus.subscribe(subjects.manager_acting())
    holder, epoch = await manager(bus)
    assert holder == await leader(bus) and epoch >= 1
    view = await status(bus, holder)
    assert view.manager.ttl == 1.0 and view.manager.renewed_age < 1.0
    heard = await events.next(5)
    assert heard.node == holder and heard.acting and heard.epoch == epoch
    ok = await bus.request(subjects.propose(holder), fenced(epoch, "current"), 6)
    forged = await bus.request(subjects.propose(holder), fenced(epoch + 5, "forged"), 6)
    assert ok.outcomes[0].ok
    assert not forged.outcomes[0].ok and "never granted" in forged.outcomes[0].error
    assert (await get(bus, holder, "forged")).version == 0
    await events.stop()


async def test_a_stopped_manager_hands_the_lease_to_the_next_leader_at_a_higher_epoch(voters, bus):
    holder, epoch = await manager(bus)
    events = await bus.subscribe(subjects.manager_acting())
    await voters.stop(holder)
    survivors = [n for n in VOTERS if n != holder]
    new_holder, new_epoch = await manager(bus, survivors, above_epoch=epoch)
    assert new_holder != holder and new_epoch > epoch
    seen = []
    while not any(e.node == new_holder and e.acting for e in seen):
        seen.append(await events.next(5))
    stopped = [e for e in seen if e.node == holder]
    assert stopped and not stopped[0].acting and stopped[0].epoch == epoch  # it said it stopped
    changes = [c for _, c in await stream_changes(bus) if c.kind == "lease"]
    released = [c for c in changes if c.detail["event"] == "released"]
    assert released and released[-1].version == epoch  # released, not left to expire
    stale = await bus.request(subjects.propose(new_holder), fenced(epoch, "stale"), 6)
    assert not stale.outcomes[0].ok and stale.outcomes[0].error.startswith(
        f"stale epoch {epoch}: the manager lease is at epoch {new_epoch} (held by {new_holder})"
    )
    assert (await get(bus, new_holder, "stale")).version == 0
    await events.stop()


async def test_a_node_that_is_not_a_voter_stands_by_and_refuses_clearly(voters, bus, nats_server):
    config = nats_server.node_config("s4")
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(voters.secret))
    stop = asyncio.Event()
    standby = asyncio.create_task(runner.run(ConsensusService(), config, stop=stop))
    try:
        view = await poll(lambda: status(bus, "s4"), 10, "the standby to answer")
        assert view.role == "standby" and view.voters == [] and view.manager is None
        with pytest.raises(RemoteError, match="standing by, not a voter") as refused:
            await put(bus, "s4", "k", "v")
        assert refused.value.code == 503  # retryable: the client asks a voter next
        with pytest.raises(RemoteError, match="not among the voters") as bad:
            await bus.request(subjects.consensus_join("s4"), JoinRequest(voters=VOTERS), 2)
        assert bad.value.code == 400
        assert (await status(bus, "s4")).role == "standby"  # a bad join changes nothing
    finally:
        stop.set()
        assert await asyncio.wait_for(standby, runner.SHUTDOWN_GRACE) == 0


async def test_internal_commands_and_out_of_range_values_are_refused_by_the_public_endpoint(
    voters, bus
):
    holder, epoch = await manager(bus)
    grab = {"type": "lease.grant", "holder": "intruder", "ttl": 5, "expected_epoch": epoch}
    for command, code in [
        (grab, "403"),  # internal: only the consensus service itself proposes it
        ({"type": "leader.elected", "node": "v1", "term": 1}, "403"),
        ({"type": "voter.changed", "node": "v2", "change": "removed", "reason": "x"}, "403"),
        ({"type": "leader.elected", "node": "v1", "term": 2**70}, "400"),  # out of range
    ]:
        raw = msgspec.json.encode({"proposals": [{"id": new_id(), "command": command}]})
        reply = await bus.nc.request(subjects.propose(holder).name, raw, timeout=6)
        assert reply.headers.get("Nats-Service-Error-Code") == code, command
    view = await status(bus, holder)
    assert (view.manager.holder, view.manager.epoch) == (holder, epoch) and view.acting
    assert (await put(bus, holder, "after", "ok")).outcomes[0].ok


async def test_forged_changes_never_displace_real_ones_and_are_deleted(voters, bus):
    chief = await leader(bus)
    await put(bus, chief, "k0", "v")
    await poll(lambda: _kv_on_stream(bus, 1), 10, "the first change on the stream")
    next_index = max(c.index for _, c in await stream_changes(bus)) + 1
    forged = Change(index=next_index, kind="kv", id="k1", version=9, log_index=1)
    for msg_id in (str(next_index), str(next_index + 1), ""):  # pre-empting ids, or none
        await bus.stream_publish(subjects.change("kv", "k1"), forged, msg_id=msg_id)
    for i in range(1, 6):
        await put(bus, chief, f"k{i}", "v")
    await poll(lambda: _kv_on_stream(bus, 6), 10, "every real change on the stream")

    async def genuine_only():
        changes = [c for _, c in await stream_changes(bus)]
        return not any(c.mac == "" for c in changes) and changes

    changes = await poll(genuine_only, 10, "the forgeries to be deleted")
    assert [c.index for c in changes] == list(range(1, len(changes) + 1))  # no gap, no dup
    kv = [(c.id, c.version) for c in changes if c.kind == "kv"]
    assert kv == [(f"k{i}", 1) for i in range(6)]
