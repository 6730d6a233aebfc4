"""The one snapshot format (colony.shared.snapshot): what it holds, and every way a file
can be unfit, refused with a message that says why and nothing replaced."""

from __future__ import annotations

import sqlite3
import struct

import msgspec
import pytest

from colony.shared import snapshot
from colony.shared.snapshot import BadSnapshot


def database(path, index=42, term=3, cluster="00000000000abcd", rows=10):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("last_applied", index), ("applied_term", term), ("cluster", int(cluster, 16))],
    )
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i}", "v" * 100) for i in range(rows)])
    db.execute("CREATE TABLE changes (idx INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
    db.execute("INSERT INTO _litestream_seq VALUES (1, 7)")
    db.execute("PRAGMA user_version = 10")
    return db


@pytest.fixture
def made(tmp_path):
    db = database(tmp_path / "management.db")
    header = snapshot.make(db, tmp_path / "s.snapshot", made_by="node-1", origin="save")
    db.close()
    return tmp_path / "s.snapshot", header


def test_a_snapshot_holds_the_database_and_says_where_it_is_from(made, tmp_path):
    path, header = made
    assert (header.cluster, header.index, header.term, header.schema) == (
        "00000000000abcd", 42, 3, 10,
    )  # fmt: skip
    assert header.counts == {"kv": 10}  # bookkeeping and litestream's tables not counted
    assert snapshot.verify(path) == header
    out = tmp_path / "restored.db"
    assert snapshot.extract(path, out) == header
    copy = sqlite3.connect(out)
    tables = {name for (name,) in copy.execute("SELECT name FROM sqlite_master")}
    assert "_litestream_seq" not in tables  # the replicated file's bookkeeping stays behind
    assert copy.execute("SELECT count(*) FROM kv").fetchone() == (10,)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_a_truncated_snapshot_is_refused(made):
    path, _ = made
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(BadSnapshot, match="truncated or damaged: its header says"):
        snapshot.read_header(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BadSnapshot, match="ends inside its header"):
        snapshot.read_header(path)


def test_a_corrupted_snapshot_is_refused_and_nothing_is_replaced(made, tmp_path):
    path, _ = made
    data = bytearray(path.read_bytes())
    data[-500] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "target.db"
    out.write_bytes(b"the old database")
    with pytest.raises(BadSnapshot, match="is corrupted: its database's checksum"):
        snapshot.extract(path, out)
    assert out.read_bytes() == b"the old database"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".snapshot-")] == []


def test_what_is_not_a_snapshot_says_so(tmp_path):
    bare = tmp_path / "bare.db"
    database(bare).close()
    with pytest.raises(BadSnapshot, match="not a Colony snapshot: it is a bare SQLite database"):
        snapshot.read_header(bare)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BadSnapshot, match="does not start with a snapshot header"):
        snapshot.read_header(text)
    with pytest.raises(BadSnapshot, match="cannot read it"):
        snapshot.read_header(tmp_path / "missing")


def test_a_newer_format_or_schema_and_another_cluster_are_refused(made, tmp_path):
    path, header = made
    newer = msgspec.json.encode(msgspec.structs.replace(header, format=snapshot.FORMAT + 1))
    body = path.read_bytes()[len(snapshot.MAGIC) + 4 + len(msgspec.json.encode(header)) :]
    future = tmp_path / "future.snapshot"
    future.write_bytes(snapshot.MAGIC + struct.pack(">I", len(newer)) + newer + body)
    with pytest.raises(BadSnapshot, match="newer than this Colony reads"):
        snapshot.read_header(future)
    with pytest.raises(BadSnapshot, match="made by a newer version of Colony"):
        snapshot.check_fits(msgspec.structs.replace(header, schema=snapshot.SCHEMA + 1), "f", None)
    with pytest.raises(BadSnapshot, match="from another cluster"):
        snapshot.check_fits(header, "f", "111111111111111")
    snapshot.check_fits(header, "f", header.cluster)
    snapshot.check_fits(header, "f", None)  # a new cluster takes any


def test_the_cluster_id_fits_the_database_integer():
    cluster = snapshot.cluster_id_of(b"secret")
    assert len(cluster) == 15
    assert snapshot.cluster_name(snapshot.cluster_number(cluster)) == cluster
    assert snapshot.cluster_number(cluster) < 2**63


def test_a_private_copy_is_sealed_where_it_is_and_packed(tmp_path):
    db = database(tmp_path / "restored.db")
    db.close()
    header = snapshot.make_from_copy(
        tmp_path / "restored.db", tmp_path / "r.snapshot", made_by="node-2", origin="replica"
    )
    assert (header.index, header.term, header.counts, header.origin) == (
        42, 3, {"kv": 10}, "replica",
    )  # fmt: skip
    out = tmp_path / "out.db"
    snapshot.extract(tmp_path / "r.snapshot", out)
    tables = {name for (name,) in sqlite3.connect(out).execute("SELECT name FROM sqlite_master")}
    assert "_litestream_seq" not in tables and "kv" in tables
