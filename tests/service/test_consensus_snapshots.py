"""A voter's snapshots against a real nats-server: saved to the JetStream object store
(large ones too, in chunks), and a new replica seeded from its snapshotter's answer (a
fake snapshotter here: a responder writing a real snapshot file)."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path

import msgspec
import pytest

from colony.consensus import snapshots
from colony.shared import snapshot, subjects
from colony.shared.messages import (
    SnapshotFetchReply,
    SnapshotFetchRequest,
    SnapshotHeader,
    decode,
    encode,
)

CLUSTER = "0123456789abcde"


def management(path: Path, index: int, rows: int, cluster: str = CLUSTER) -> Path:
    """A database with what a snapshot header reads (meta) and `rows` objects of 300 bytes."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT NOT NULL)")
    db.execute("BEGIN")
    meta = {"last_applied": index, "applied_term": 3, "cluster": snapshot.cluster_number(cluster)}
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.executemany(
        "INSERT INTO jobs VALUES (?, ?)", ((f"job-{i:06}", f"{i:0300}") for i in range(rows))
    )
    db.execute("COMMIT")
    db.close()
    return path


async def download(bus, name: str) -> tuple[bytes, SnapshotHeader]:
    store = await bus.js.object_store(subjects.SNAPSHOT_BUCKET)
    sink = io.BytesIO()
    result = await store.get(name, writeinto=sink)
    return sink.getvalue(), msgspec.json.decode(result.info.description, type=SnapshotHeader)


async def test_a_save_puts_a_whole_snapshot_into_the_object_store(bus, tmp_path):
    db = management(tmp_path / "management.db", 1234, rows=10)
    name, header = await snapshots.save(
        bus.js, db, tmp_path / "saving", me="v1", cluster=CLUSTER, replicas=1
    )
    assert name.startswith(f"saved/{CLUSTER}/1234-") and name.endswith("Z")
    assert (header.index, header.term, header.cluster, header.origin) == (1234, 3, CLUSTER, "save")
    assert header.counts == {"jobs": 10}
    data, described = await download(bus, name)
    assert described == header  # listing shows what each holds without downloading it
    (tmp_path / "got.snapshot").write_bytes(data)
    assert snapshot.verify(tmp_path / "got.snapshot") == header
    assert list((tmp_path / "saving").iterdir()) == []  # its file went once uploaded


async def test_a_large_database_is_saved_in_chunks_under_the_name_asked(bus, tmp_path):
    db = management(tmp_path / "management.db", 99, rows=100_000)
    name, header = await snapshots.save(
        bus.js, db, tmp_path / "saving", me="v1", cluster=CLUSTER, replicas=1, name="nightly"
    )
    assert name == "nightly" and header.size > 30 * 2**20
    store = await bus.js.object_store(subjects.SNAPSHOT_BUCKET)
    info = await store.get_info("nightly")
    assert info.size > header.size and info.chunks > 100
    data, _ = await download(bus, "nightly")
    (tmp_path / "got.snapshot").write_bytes(data)
    assert snapshot.verify(tmp_path / "got.snapshot").counts == {"jobs": 100_000}


class Snapshotter:
    """This node's snapshotter, faked: answers snapshot_fetch by writing a snapshot of a
    database of its own at the path asked (or refusing, as told)."""

    def __init__(self, tmp_path: Path, index: int = 42, cluster: str = CLUSTER) -> None:
        self.db = management(tmp_path / "replica.db", index, rows=5, cluster=cluster)
        self.asked: list[SnapshotFetchRequest] = []

    async def serve(self, bus, node: str) -> None:
        async def answer(msg) -> None:
            request = decode(msg.data, SnapshotFetchRequest)
            self.asked.append(request)
            header = await asyncio.to_thread(
                snapshot.make_from_file, self.db, Path(request.path), made_by="v2",
                origin="replica",
            )  # fmt: skip
            reply = SnapshotFetchReply(
                node=node, path=request.path, replica="v2", header=header, seconds=0.1
            )
            await msg.respond(encode(reply))

        await bus.nc.subscribe(subjects.snapshot_fetch(node).name, cb=answer)


def applied(db: Path) -> int:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT value FROM meta WHERE name='last_applied'").fetchone()[0]
    finally:
        connection.close()


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "consensus").mkdir()
    return tmp_path / "consensus"


async def test_a_new_replica_is_seeded_from_its_snapshotters_replica(bus, tmp_path, folder, caplog):
    fake = Snapshotter(tmp_path)
    await fake.serve(bus, "v4")
    source = await snapshots.seed_from_replica(bus, "v4", folder, CLUSTER)
    assert source is not None and "v2" in source
    [asked] = fake.asked
    assert Path(asked.path).parent == folder  # on this node, in its consensus folder
    assert sorted(p.name for p in folder.iterdir()) == ["management.db"]
    assert applied(folder / "management.db") == 42
    [record] = [r for r in caplog.records if r.getMessage() == "new replica seeded from a snapshot"]
    assert (record.node, record.replica, record.index, record.term) == ("v4", "v2", 42, 3)
    assert record.seconds > 0


async def test_with_no_snapshotter_the_replica_starts_empty(bus, folder, caplog):
    assert await snapshots.seed_from_replica(bus, "v4", folder, CLUSTER, timeout=2) is None
    assert list(folder.iterdir()) == []
    [record] = [r for r in caplog.records if "not seeded" in r.getMessage()]
    assert "no service answers" in record.reason


async def test_another_clusters_replica_is_not_seeded_from(bus, tmp_path, folder, caplog):
    await Snapshotter(tmp_path, cluster="fffffffffffffff").serve(bus, "v4")
    assert await snapshots.seed_from_replica(bus, "v4", folder, CLUSTER) is None
    assert list(folder.iterdir()) == []  # nothing half-written, the fetched file gone
    [record] = [r for r in caplog.records if "not seeded" in r.getMessage()]
    assert "another cluster" in record.reason
