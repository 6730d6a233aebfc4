"""A voter's restore at start (consensus/snapshots.py), on real files and real SQLite: the
snapshot the CLI left replaces the replica's files whole, or nothing changes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from colony.consensus import snapshots
from colony.harness.processes import poll
from colony.shared import snapshot

CLUSTER = "0123456789abcde"
KEEP = {"role.json"}


def database(path: Path, index: int, cluster: str = CLUSTER, rows: int = 3) -> Path:
    """A management-like database: the meta facts a snapshot header is made of, and a table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    facts = {"last_applied": index, "applied_term": 4, "cluster": snapshot.cluster_number(cluster)}
    db.executemany("INSERT INTO meta VALUES (?, ?)", facts.items())
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i}", f"v{i}") for i in range(rows)])
    db.close()
    return path


def snapshot_of(tmp_path: Path, index: int, cluster: str = CLUSTER) -> Path:
    source = database(tmp_path / f"source-{index}-{cluster}.db", index, cluster)
    out = tmp_path / f"{index}-{cluster}.snapshot"
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
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def applied(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT value FROM meta WHERE name='last_applied'").fetchone()[0]
    finally:
        connection.close()


async def test_a_restore_replaces_the_replica_whole_and_keeps_the_role(voter, tmp_path, caplog):
    (snapshot_of(tmp_path, 120)).rename(voter / snapshots.RESTORE)
    header = await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert header is not None and header.index == 120
    assert sorted(contents(voter)) == ["management.db", "role.json"]
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
    (voter / snapshots.RESTORE).write_bytes(spoil(good.read_bytes()))
    before = contents(voter)
    with pytest.raises(snapshot.BadSnapshot, match=reason):
        await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert contents(voter) == before


async def test_another_clusters_snapshot_is_refused(voter, tmp_path):
    snapshot_of(tmp_path, 120, cluster="fffffffffffffff").rename(voter / snapshots.RESTORE)
    before = contents(voter)
    with pytest.raises(snapshot.BadSnapshot, match=r"another cluster \(fffffffffffffff"):
        await snapshots.restore_at_start(voter, CLUSTER, True, KEEP)
    assert contents(voter) == before


async def test_a_non_voter_drops_a_restore_left_for_it(voter, tmp_path):
    snapshot_of(tmp_path, 120).rename(voter / snapshots.RESTORE)
    (voter / snapshots.PENDING).touch()
    assert await snapshots.restore_at_start(voter, CLUSTER, False, KEEP) is None
    assert sorted(contents(voter)) == ["management.db", "raft.journal", "raft.snapshot",
                                       "role.json"]  # fmt: skip
    assert applied(voter / "management.db") == 500


async def test_a_pending_restore_waits_for_its_snapshot(voter, tmp_path, caplog):
    (voter / snapshots.PENDING).touch()
    waited = asyncio.Event()
    restoring = asyncio.create_task(
        snapshots.restore_at_start(voter, CLUSTER, True, KEEP, waited.set)
    )
    await asyncio.wait_for(waited.wait(), 5)
    assert not restoring.done()
    assert [r for r in caplog.records if r.getMessage() == "waiting for a restore"]
    snapshot_of(tmp_path, 77).rename(voter / snapshots.RESTORE)  # the CLI delivers it
    await poll(restoring.done, 5, "the restore")
    assert (await restoring).index == 77
    assert sorted(contents(voter)) == ["management.db", "role.json"]
    assert applied(voter / "management.db") == 77
