"""Replicas that start from a copy of the management database (restored or seeded from a
snapshot: a folder with only management.db), on real pysyncobj replicas over a real
nats-server, each with its own NATS connection, `Link` and `Replica`:

- a new voter seeded with a snapshot of a voter's database catches up from the leader's
  log (no snapshot is sent to it) and ends with the same database;
- every voter restored from one snapshot file: they elect a leader in a later term,
  commit new writes, and hold the same database;
- a snapshot from another cluster, or a truncated one, sent to a voter is refused: its
  database and its snapshot file stay as they were, and it goes on committing.
"""

from __future__ import annotations

import pytest

from colony.consensus import changelog
from colony.consensus.machine import ForeignDatabase, Machine, encode_batch
from colony.consensus.raft import SEED_COMMAND
from colony.harness.processes import poll
from colony.harness.replicas import CLUSTER, VOTERS, Group, Voter, save
from colony.shared import snapshot
from colony.shared.messages import KvPut, Proposal, new_id

OTHER = snapshot.cluster_id_of(b"another cluster's secret")


@pytest.fixture
async def group(nats_server, tmp_path):
    voters = Group(nats_server.url, tmp_path)
    yield voters
    for node in list(voters.voters):
        await voters.stop(node)


def seeded_markers_gone(voter: Voter) -> bool:
    journal = voter.raft.journal
    return len(journal) > 0 and journal[0][0] != SEED_COMMAND


async def test_a_seeded_voter_catches_up_from_the_log_not_a_snapshot(group, tmp_path):
    for node in VOTERS:
        await group.start(node)
    await group.write(0, 3000)
    header = save(group.voters["v1"], tmp_path / "v1.snapshot")
    assert header.index > 50 and header.term >= 1 and header.cluster == CLUSTER
    last = await group.write(3000, 500)  # written after the snapshot: only the log has them
    snapshot.extract(tmp_path / "v1.snapshot", tmp_path / "v4" / "management.db")

    new = await group.start("v4", [*VOTERS, "v4"])
    assert new.replica.seeded_at == header.index
    await (await group.chief(VOTERS)).replica.add_voter("v4")
    last = await group.write(3500, 200)
    await group.applied_everywhere(last)
    assert new.snapshots_received == 0  # from the log, not a snapshot
    assert new.replica.machine.read("k3499") == ("v3499", 1)
    await poll(lambda: seeded_markers_gone(new), 10, "v4 to compact its seed markers away")
    assert snapshot.read_header(tmp_path / "v4" / "raft.snapshot").origin == "compaction"
    digests = await group.digests()
    assert len(set(digests.values())) == 1, digests


async def test_every_voter_restored_from_one_snapshot_starts_a_later_term(group, tmp_path):
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 1000))
    header = save(group.voters["v2"], tmp_path / "v2.snapshot")
    for node in VOTERS:
        await group.stop(node)
    for node in VOTERS:  # the replicas' files go; each gets the snapshot's database only
        for path in (tmp_path / node).iterdir():
            path.unlink()
        snapshot.extract(tmp_path / "v2.snapshot", tmp_path / node / "management.db")

    for node in VOTERS:
        assert (await group.start(node)).replica.seeded_at == header.index
    chief = await group.chief()
    assert chief.replica.term > header.term
    last = await group.write(1000, 300)
    await group.applied_everywhere(last)
    for voter in group.voters.values():
        assert voter.replica.machine.read("k999") == ("v999", 1)
        assert voter.replica.machine.read("k1299") == ("v1299", 1)
        assert voter.snapshots_received == 0
    await poll(lambda: all(map(seeded_markers_gone, group.voters.values())), 10,
               "every voter to compact its seed markers away")  # fmt: skip
    digests = await group.digests()
    assert len(set(digests.values())) == 1, digests


async def test_a_foreign_or_truncated_snapshot_is_refused_and_changes_nothing(
    group, tmp_path, caplog
):
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 500))
    chief = await group.chief()
    follower = next(v for n, v in group.voters.items() if v is not chief)
    follower.replica.compact()
    kept = tmp_path / follower.replica.me / "raft.snapshot"
    await poll(kept.exists, 10, "the follower to compact its log")

    # another cluster's: a voter of it compacted its log (Raft bookkeeping and all)
    foreign = Machine(tmp_path / "foreign" / "management.db", cluster=OTHER)
    foreign.apply(2, encode_batch([Proposal(new_id(), KvPut("k1", "theirs"))]), 1)
    raft_meta = snapshot.read_header(kept).raft
    foreign.save(tmp_path / "foreign.snapshot", made_by="x1", voters=VOTERS, raft=raft_meta)
    foreign.close()
    data = kept.read_bytes()
    truncated = data[: len(data) - 5000]
    foreign_data = (tmp_path / "foreign.snapshot").read_bytes()

    def refusals() -> list[str]:
        return [r.reason for r in caplog.records if r.msg.startswith("refused a Raft snapshot")]

    for bad, why in ((foreign_data, "from another cluster"), (truncated, "truncated")):
        before = kept.read_bytes()
        refused = len(refusals())
        digest = await changelog.digest(follower.replica.machine.path)
        install = {
            "type": "append_entries",
            "term": follower.replica.term,
            "commit_index": follower.raft.raftCommitIndex,
            "serialized": (bad, True, True),
        }
        follower.link._push("message", chief.replica.me, install)
        await poll(lambda n=refused: len(refusals()) > n, 10, "the snapshot to be refused")
        assert why in refusals()[-1]
        assert kept.read_bytes() == before  # the follower's own snapshot file is back
        assert await changelog.digest(follower.replica.machine.path) == digest
        assert follower.replica.machine.read("k1") == ("v1", 1)
        last = await group.write(10_000, 10)  # it goes on applying
        await group.applied_everywhere(last)


async def test_a_voter_refuses_to_open_another_clusters_database(group, tmp_path):
    Machine(tmp_path / "v1" / "management.db", cluster=OTHER).close()
    before = (tmp_path / "v1" / "management.db").read_bytes()
    with pytest.raises(ForeignDatabase, match=f"cluster {OTHER}.*cluster {CLUSTER}"):
        await group.start("v1")
    assert (tmp_path / "v1" / "management.db").read_bytes() == before
    assert not (tmp_path / "v1" / "raft.journal").exists()


async def test_voters_restored_with_a_first_term_start_their_history_above_it(group, tmp_path):
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 500))
    header = save(group.voters["v1"], tmp_path / "v1.snapshot")
    await group.stop_all()
    for node in VOTERS:
        for path in (tmp_path / node).iterdir():
            path.unlink()
        snapshot.extract(tmp_path / "v1.snapshot", tmp_path / node / "management.db")

    first_term = 1_700_000_000  # what a restore passes: above every earlier history's terms
    for node in VOTERS:
        assert (await group.start(node, first_term=first_term)).replica.seeded_at == header.index
    chief = await group.chief()
    assert chief.replica.term > first_term
    last = await group.write(500, 300)
    await group.applied_everywhere(last)
    for voter in group.voters.values():
        assert voter.replica.machine.applied_term > first_term  # the new history's entries
        assert voter.replica.machine.read("k799") == ("v799", 1)
    await poll(lambda: all(map(seeded_markers_gone, group.voters.values())), 10,
               "every voter to compact its seed markers away")  # fmt: skip
    digests = await group.digests()
    assert len(set(digests.values())) == 1, digests


async def test_a_seeded_leader_sends_its_seed_snapshot_to_a_follower_lacking_its_last_entry(
    group, tmp_path
):
    for node in VOTERS:
        await group.start(node)
    await group.applied_everywhere(await group.write(0, 500))
    chief = await group.chief()
    behind = next(node for node, voter in group.voters.items() if voter is not chief)
    up = [node for node in VOTERS if node != behind]
    lacks = group.voters[behind].raft.journal[-1][1] + 1  # no write in flight: it holds all
    await group.stop(behind)
    seeded = await group.write(500, 50)  # one entry: the one `behind` lacks
    assert seeded == lacks
    assert save(chief, tmp_path / "seed.snapshot").index == seeded
    snapshot.extract(tmp_path / "seed.snapshot", tmp_path / "v4" / "management.db")

    new = await group.start("v4", [*VOTERS, "v4"])
    assert new.replica.seeded_at == seeded
    new.raft._seed_compaction = True  # it keeps its markers: it leads before it compacts
    await chief.replica.add_voter("v4")
    assert await chief.replica.transfer_leadership("v4", patience=5)
    await poll(lambda: group.leader([*up, "v4"]) == "v4", 10, "v4 to lead")
    term = new.replica.term
    assert new.raft.journal[1] == (SEED_COMMAND, seeded, new.raft.journal[1][2])

    back = await group.start(behind, [*VOTERS, "v4"])
    last = await group.write(600, 100)  # every voter, `behind` too, names v4 leader
    await group.applied_everywhere(last)
    assert back.snapshots_received >= 1  # the seed snapshot: its log lacked entry N
    assert back.replica.machine.read("k549") == ("v549", 1)
    assert (new.replica.term, group.leader()) == (term, "v4")  # no election on the way
    new.raft._seed_compaction = False
    await poll(lambda: all(map(seeded_markers_gone, group.voters.values())), 10,
               "every voter to compact its seed markers away")  # fmt: skip
    digests = await group.digests()
    assert len(set(digests.values())) == 1, digests
