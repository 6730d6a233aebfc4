"""A voter's own Raft snapshot at start, and what it tracks of its log, on real pysyncobj
replicas over a real nats-server (colony.harness.replicas):

- a damaged raft.snapshot whose checked copy (raft.snapshot.kept) is good: the kept one is
  put back and loaded, and the voter catches up;
- a damaged raft.snapshot with no good copy: the voter stops, saying why, its files left
  as they are (it would otherwise sit with nothing applied and nothing said);
- the voters a removal entry in the log removes, and the log's length, as pysyncobj's
  thread sees them (forgotten once compacted away).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from colony.consensus.machine import encode_batch
from colony.consensus.raft import KEPT, SNAPSHOT
from colony.harness.processes import poll
from colony.harness.replicas import VOTERS, Group, Voter
from colony.shared.messages import KvPut, Proposal, new_id


@pytest.fixture
async def group(nats_server, tmp_path):
    voters = Group(nats_server.url, tmp_path)
    yield voters
    await voters.stop_all()


async def compacted_follower(group: Group) -> tuple[str, Path]:
    """Three voters with some entries; a follower that compacted its log (its node, its
    folder): its raft.snapshot and raft.snapshot.kept are one checked file."""
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 500))
    chief = await group.chief()
    node = next(n for n, v in group.voters.items() if v is not chief)
    group.voters[node].replica.compact()
    folder = group.workdir / node
    await poll(lambda: (folder / KEPT).exists() and (folder / SNAPSHOT).exists()
               and os.path.samefile(folder / KEPT, folder / SNAPSHOT), 10,
               "the follower to compact its log")  # fmt: skip
    return node, folder


def put(key: str) -> bytes:
    return encode_batch([Proposal(new_id(), KvPut(key, "v"))])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # in place: every name of the file


async def test_a_damaged_snapshot_at_start_gives_way_to_the_kept_one(group, caplog):
    node, folder = await compacted_follower(group)
    await group.stop(node)
    good = (folder / KEPT).read_bytes()
    damaged = folder / "damaged"
    damaged.write_bytes(good[: len(good) // 2])
    os.replace(damaged, folder / SNAPSHOT)  # a new file: the kept one stays good

    voter = await group.start(node)
    last = await group.write(500, 200)
    await group.applied_everywhere(last)  # it loaded the kept snapshot, then the log
    assert voter.replica.stopped_by is None
    assert voter.replica.machine.read("k699") == ("v699", 1)
    assert any(r.msg.startswith("refused the Raft snapshot at start") for r in caplog.records)


async def test_a_damaged_snapshot_at_start_with_no_good_copy_stops_the_voter(group):
    node, folder = await compacted_follower(group)
    await group.stop(node)
    truncate(folder / SNAPSHOT)  # the kept name is the same file: no good copy
    before = (folder / SNAPSHOT).read_bytes()

    voter: Voter = await group.start(node)
    await poll(lambda: voter.replica.stopped_by is not None, 10, "the voter to stop")
    assert f"snapshot {folder / SNAPSHOT}" in voter.replica.stopped_by
    assert (folder / SNAPSHOT).read_bytes() == before  # left as it is, to look into
    chief = await group.chief([n for n in VOTERS if n != node])
    index, _outcomes = await chief.replica.commit(put("after"), timeout=10)  # the others go on
    assert index > 0


async def test_removals_in_the_log_are_tracked_until_compacted_away(group):
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 100))
    chief = await group.chief()
    gone = next(n for n, v in group.voters.items() if v is not chief)
    assert chief.replica.removed_in_log() == frozenset()
    await chief.replica.remove_voter(gone)
    await group.stop(gone)
    await poll(lambda: all(v.replica.removed_in_log() == {gone} for v in group.voters.values()),
               10, f"every voter to see {gone}'s removal in its log")  # fmt: skip
    length = chief.replica.log_length()
    assert length > 100 // 50
    last = await group.write(100, 100)
    await group.applied_everywhere(last)
    chief.replica.compact()
    await poll(lambda: chief.replica.removed_in_log() == frozenset(), 10,
               "the removal to be compacted away")  # fmt: skip
    assert chief.replica.log_length() < length
