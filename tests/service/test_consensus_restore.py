"""Snapshots through running voters against a real nats-server: the leader saves one
holding every acknowledged write; every voter restored from it starts a new history
there (what came after is gone, new writes commit and reach the change stream); a bad
snapshot stops its voter with the reason in status and its files as they were."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path

import pytest
from _voters import Voters, status

from colony.harness.processes import poll
from colony.shared import snapshot, subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.cluster import Cluster
from colony.shared.messages import (
    Change,
    ConsensusStatusRequest,
    KvPut,
    Proposal,
    ProposeRequest,
    QueryRequest,
    SnapshotSaveRequest,
    decode,
    new_id,
)
from colony.shared.statedir import RESTORE_PENDING, RESTORE_SNAPSHOT

VOTERS = ["v1", "v2", "v3"]


@pytest.fixture
async def voters(nats_server, tmp_path):
    group = Voters(nats_server, tmp_path, VOTERS)
    for node in VOTERS:
        group.start(node)
    yield group
    await group.stop_all()


def folder(voters: Voters, node: str) -> Path:
    return Path(voters.server.node_config(node).node.dir) / "consensus"


async def put(bus, via: str, key: str, value: str):
    request = ProposeRequest(proposals=[Proposal(new_id(), KvPut(key, value))])
    return await bus.request(subjects.propose(via), request, timeout=6)


async def get(bus, via: str, key: str):
    return await bus.request(subjects.query(via), QueryRequest(key=key), 6)


async def save(bus, via: str, name: str = ""):
    return await bus.request(subjects.snapshot_save(via), SnapshotSaveRequest(name=name), 30)


async def download(bus, name: str, to: Path) -> Path:
    store = await bus.js.object_store(subjects.SNAPSHOT_BUCKET)
    sink = io.BytesIO()
    await store.get(name, writeinto=sink)
    to.write_bytes(sink.getvalue())  # noqa: ASYNC240 (a test's small file)
    return to


async def relayed(bus) -> dict[str, Change]:
    """The change stream's kv changes, by key (the last of each)."""
    state = await bus.stream_state(subjects.CHANGES_STREAM)
    found = {}
    for seq in range(state.first_seq, state.last_seq + 1):
        stored = await bus.stored(subjects.CHANGES_STREAM, seq)
        if stored is not None:
            change = decode(stored.data, Change)
            if change.kind == "kv":
                found[change.id] = change
    return found


async def test_only_the_leader_saves_and_its_snapshot_holds_every_acknowledged_write(
    voters, bus, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    leader = (await Cluster(bus, VOTERS).wait_leader(20)).node
    follower = next(n for n in VOTERS if n != leader)
    writes = [await put(bus, follower, f"k{i}", str(i)) for i in range(20)]
    with pytest.raises(RemoteError) as refused:
        await save(bus, follower)
    assert refused.value.code == 409 and refused.value.description.endswith(f"ask {leader}")

    reply = await save(bus, leader)
    assert reply.node == leader and reply.header.index > writes[-1].index  # after a barrier
    assert reply.name.startswith(f"saved/{reply.header.cluster}/{reply.header.index}-")
    secret = voters.secret.read_bytes()
    assert reply.header.cluster == snapshot.cluster_id_of(secret)
    assert reply.header.counts["kv"] == 20
    got = await download(bus, reply.name, tmp_path / "got.snapshot")
    assert snapshot.verify(got) == reply.header
    [saved] = [r for r in caplog.records if r.getMessage() == "snapshot saved"]
    assert (saved.object, saved.index) == (reply.name, reply.header.index)


async def test_every_voter_restored_from_a_snapshot_starts_a_new_history_there(
    voters, bus, tmp_path, caplog
):
    leader = (await Cluster(bus, VOTERS).wait_leader(20)).node
    for i in range(10):
        await put(bus, leader, f"k{i}", "kept")
    saved = await save(bus, leader, name="before")
    for i in range(10, 30):  # a future the restore will undo
        await put(bus, leader, f"k{i}", "lost")
    await poll(lambda: _relayed_key(bus, "k29"), 10, "the lost future on the change stream")
    await voters.stop_all()

    file = await download(bus, saved.name, tmp_path / "before.snapshot")
    lost_term = saved.header.term  # (at least: the lost future went on in it)
    restored_at = int(time.time())
    for node in VOTERS:
        (folder(voters, node) / RESTORE_SNAPSHOT).write_bytes(file.read_bytes())
        voters.start(node)
    leader = (await Cluster(bus, VOTERS).wait_leader(30)).node
    # The new history's terms are above any the lost one reached (seconds since the epoch
    # at the restore): its entries sort after the lost history's wherever (term, index) is
    # compared (the replication manifest), and its leaders win over a lost history's voter.
    term = (await status(bus, leader)).term
    assert term >= restored_at > lost_term
    restored = [r for r in caplog.records if r.getMessage() == "restored from snapshot"]
    assert len(restored) == 3 and {r.index for r in restored} == {saved.header.index}
    for node in VOTERS:
        assert not (folder(voters, node) / RESTORE_SNAPSHOT).exists()
    assert (await get(bus, leader, "k9")).value == "kept"
    assert (await get(bus, leader, "k10")).value is None
    # The new history goes on: writes commit, and reach the change stream (the lost future's
    # changes held the same change indexes: the relay started the stream afresh).
    after = await put(bus, leader, "k10", "new")
    assert after.outcomes[0].ok
    await poll(lambda: _relayed_key(bus, "k10", after.index), 20, "the new change relayed")
    stream = await relayed(bus)
    assert "k29" not in stream  # the lost future is no longer on the stream


async def _relayed_key(bus, key: str, log_index: int | None = None) -> bool:
    """Whether the stream holds a change of `key` (made by log entry `log_index`)."""
    change = (await relayed(bus)).get(key)
    return change is not None and log_index in (None, change.log_index)


async def test_a_bad_snapshot_to_restore_stops_its_voter_and_leaves_its_files(
    voters, bus, tmp_path
):
    leader = (await Cluster(bus, VOTERS).wait_leader(20)).node
    await put(bus, leader, "k", "v")
    saved = await save(bus, leader)
    spoilt = next(n for n in VOTERS if n != leader)
    await voters.stop(spoilt)
    truncated = (await download(bus, saved.name, tmp_path / "s.snapshot")).read_bytes()[:-10]
    (folder(voters, spoilt) / RESTORE_SNAPSHOT).write_bytes(truncated)
    before = {p.name: p.read_bytes() for p in folder(voters, spoilt).iterdir() if p.is_file()}
    voters.start(spoilt)
    stopped = await poll(lambda: _stopped(bus, spoilt), 20, "its status to say why it stopped")
    assert "restore.snapshot" in stopped and "truncated" in stopped
    after = {p.name: p.read_bytes() for p in folder(voters, spoilt).iterdir() if p.is_file()}
    assert after == before
    assert (await put(bus, leader, "still", "committing")).outcomes[0].ok  # two of three


async def _stopped(bus, node: str) -> str:
    view = await status(bus, node)
    return view.stopped if view is not None else ""


async def test_a_voter_told_a_restore_is_coming_waits_for_it_and_says_so(
    nats_server, bus, tmp_path
):
    alone = Voters(nats_server, tmp_path, ["v1"])
    alone.start("v1")
    try:
        await Cluster(bus, ["v1"]).wait_leader(20)
        await put(bus, "v1", "k", "from the snapshot")
        saved = await save(bus, "v1")
        await put(bus, "v1", "k", "lost")
        await alone.stop("v1")
        (folder(alone, "v1") / RESTORE_PENDING).touch()
        alone.start("v1")

        async def waiting() -> bool:
            try:
                await bus.request(subjects.consensus_status("v1"), ConsensusStatusRequest(), 1)
            except RemoteError as refused:
                return "waiting for a restore" in refused.description
            except BusError:  # not serving yet
                return False
            return False

        await poll(waiting, 20, "v1 to say it waits for a restore")
        file = await download(bus, saved.name, tmp_path / "s.snapshot")
        file.rename(folder(alone, "v1") / RESTORE_SNAPSHOT)  # the CLI delivers it
        await Cluster(bus, ["v1"]).wait_leader(20)
        assert (await get(bus, "v1", "k")).value == "from the snapshot"
        assert not (folder(alone, "v1") / RESTORE_PENDING).exists()
    finally:
        await alone.stop_all()
