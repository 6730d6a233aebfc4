"""A voter's restore at start (consensus/snapshots.py), on real files and real SQLite: the
snapshot the CLI left replaces the replica's files whole, or nothing changes."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from colony.consensus import snapshots
from colony.harness.processes import poll
from colony.shared import snapshot
from colony.shared.messages import SnapshotFetchReply
from colony.shared.statedir import RESTORE_PENDING, RESTORE_SNAPSHOT

CLUSTER = "0123456789abcde"
KEEP = {"role.json"}


def database(path: Path, index: int, cluster: str = CLUSTER, rows: int = 3, term: int = 4) -> Path:
    """A management-like database: the meta facts a snapshot header is made of, and a table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    facts = {
        "last_applied": index,
        "applied_term": term,
        "cluster": snapshot.cluster_number(cluster),
    }
    db.executemany("INSERT INTO meta VALUES (?, ?)", facts.items())
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i}", f"v{i}") for i in range(rows)])
    db.close()
    return path


def snapshot_of(tmp_path: Path, index: int, cluster: str = CLUSTER, term: int = 4) -> Path:
    source = database(tmp_path / f"source-{index}-{cluster}-{term}.db", index, cluster, term=term)
    out = tmp_path / f"{index}-{cluster}-{term}.snapshot"
    snapshot.make_from_file(source, out, made_by="v9", origin="save")
    return out


@pytest.fixture
def voter(tmp_path) -> Path:
    """A stopped voter's consensus folder: its database, journal, Raft snapshot, role."""
    folder = tmp_path / "consensus"
    folder.mkdir()
    database(folder / "management.db", 500, rows=10)
    for name, content in (("raft.journal", b"journal"), ("raft.snapshot", b"old"),
                          ("role.json", b'{"voter": true, "voters": ["v1"]}')):  # fmt: skip
        (folder / name).write_bytes(content)
    # litestream's folder beside the database: its position in the old database's WAL
    (folder / ".management.db-litestream" / "ltx" / "0").mkdir(parents=True)
    (folder / ".management.db-litestream" / "ltx" / "0" / "1.ltx").write_bytes(b"ltx")
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (path relative to it -> bytes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def applied(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT value FROM meta WHERE name='last_applied'").fetchone()[0]
    finally:
        connection.close()


async def test_a_restore_replaces_the_replica_whole_and_keeps_the_role(voter, tmp_path, caplog):
    (snapshot_of(tmp_path, 120)).rename(voter / RESTORE_SNAPSHOT)
    header = await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert header is not None and header.index == 120
    assert sorted(contents(voter)) == ["management.db", "restored.term", "role.json"]
    assert applied(voter / "management.db") == 120
    [record] = [r for r in caplog.records if r.getMessage() == "restored from snapshot"]
    assert (record.index, record.term, record.origin) == (120, 4, "save")


async def test_nothing_to_restore_changes_nothing(voter):
    before = contents(voter)
    assert await snapshots.restore_at_start(voter, CLUSTER, True, KEEP) is None
    assert contents(voter) == before


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (lambda data: data[:-100], "truncated"),
        (lambda data: data[:-50] + bytes(50), "corrupted"),
        (lambda data: b"SQLite format 3\x00" + data[16:], "not a Colony snapshot"),
    ],
)
async def test_a_bad_snapshot_is_refused_and_leaves_everything_as_it_was(
    voter, tmp_path, spoil, reason
):
    good = snapshot_of(tmp_path, 120)
    (voter / RESTORE_SNAPSHOT).write_bytes(spoil(good.read_bytes()))
    before = contents(voter)
    with pytest.raises(snapshot.BadSnapshot, match=reason):
        await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert contents(voter) == before


async def test_another_clusters_snapshot_is_refused(voter, tmp_path):
    snapshot_of(tmp_path, 120, cluster="fffffffffffffff").rename(voter / RESTORE_SNAPSHOT)
    before = contents(voter)
    with pytest.raises(snapshot.BadSnapshot, match=r"another cluster \(fffffffffffffff"):
        await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert contents(voter) == before


async def test_a_non_voter_drops_a_restore_left_for_it(voter, tmp_path):
    snapshot_of(tmp_path, 120).rename(voter / RESTORE_SNAPSHOT)
    (voter / RESTORE_PENDING).touch()
    assert await snapshots.restore_at_start(voter, CLUSTER, False, KEEP) is None
    assert sorted(contents(voter)) == [".management.db-litestream/ltx/0/1.ltx", "management.db",
                                       "raft.journal", "raft.snapshot", "role.json"]  # fmt: skip
    assert applied(voter / "management.db") == 500


async def test_a_pending_restore_waits_for_its_snapshot(voter, tmp_path, caplog):
    (voter / RESTORE_PENDING).touch()
    waited = asyncio.Event()
    restoring = asyncio.create_task(
        snapshots.restore_at_start(voter, CLUSTER, True, KEEP, waited.set)
    )
    await asyncio.wait_for(waited.wait(), 5)
    assert not restoring.done()
    assert [r for r in caplog.records if r.getMessage() == "waiting for a restore"]
    snapshot_of(tmp_path, 77).rename(voter / RESTORE_SNAPSHOT)  # the CLI delivers it
    await poll(restoring.done, 5, "the restore")
    assert (await restoring).index == 77
    assert sorted(contents(voter)) == ["management.db", "restored.term", "role.json"]
    assert applied(voter / "management.db") == 77


async def test_a_pending_restore_ends_when_its_marker_goes(voter):
    # A join (this node promoted: it starts from the leader) deletes the marker.
    (voter / RESTORE_PENDING).touch()
    waited = asyncio.Event()
    restoring = asyncio.create_task(
        snapshots.restore_at_start(voter, CLUSTER, True, KEEP, waited.set)
    )
    await asyncio.wait_for(waited.wait(), 5)
    (voter / RESTORE_PENDING).unlink()
    before = contents(voter)
    assert await asyncio.wait_for(restoring, 5) is None
    assert contents(voter) == before


async def test_a_snapshot_of_entries_without_their_term_is_refused(voter, tmp_path):
    snapshot_of(tmp_path, 120, term=0).rename(voter / RESTORE_SNAPSHOT)
    before = contents(voter)
    with pytest.raises(snapshot.BadSnapshot, match=r"up to index 120 but no term for them"):
        await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert contents(voter) == before


async def test_a_seed_without_the_entries_term_is_refused(tmp_path, caplog):
    folder = tmp_path / "new"
    folder.mkdir()
    fetched = snapshot_of(tmp_path, 120, term=0)

    class Snapshotter:  # this node's snapshotter: the fetch wrote the replica snapshot
        async def request(self, subject, request, timeout):
            shutil.copyfile(fetched, request.path)
            header = snapshot.read_header(fetched)
            return SnapshotFetchReply(
                node="v4", path=request.path, replica="v2", header=header, seconds=0.1
            )

    assert await snapshots.seed_from_replica(Snapshotter(), "v4", folder, CLUSTER) is None
    assert list(folder.iterdir()) == []
    [record] = [r for r in caplog.records if r.getMessage().startswith("new replica not seeded")]
    assert "no term for them" in record.reason


def test_dropping_a_replica_drops_its_folders_too(voter):
    (voter / "saving").mkdir()
    (voter / "saving" / "1.snapshot").write_bytes(b"half")
    snapshots.drop_replica(voter, KEEP)
    assert sorted(p.name for p in voter.iterdir()) == ["role.json"]


async def test_a_restored_log_starts_in_a_term_above_any_earlier_history(voter, tmp_path):
    # Seconds since the epoch: above every term elections reached before (the snapshot's
    # term 4 here), kept in a file until the replica's log is written (a crash between
    # the restore and the replica's start keeps it), then forgotten.
    snapshot_of(tmp_path, 120).rename(voter / RESTORE_SNAPSHOT)
    before = int(time.time())
    await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert before <= snapshots.restored_term(voter) <= time.time()
    snapshots.log_started(voter)
    assert snapshots.restored_term(voter) == 0
    assert sorted(contents(voter)) == ["management.db", "role.json"]
