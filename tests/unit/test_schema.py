"""Schema versions of the management database: a file of today's schema (before versions)
migrates and keeps its data; a new file takes the same path; a newer file is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from colony.consensus import changelog, schema
from colony.consensus.kinds import REGISTRY
from colony.consensus.machine import Machine, NeedsNewerVersion, encode_batch
from colony.shared.messages import KvPut, NodeLabel, Proposal

FIXTURE = Path(__file__).parent / "data" / "management-v0.sql"
"""A file as the code before versions left it (commit b86d718), dumped as SQL text."""


def from_fixture(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(FIXTURE.read_text())
    return db


def tables(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))


def test_a_file_from_before_versions_migrates_and_keeps_its_data(tmp_path):
    db = from_fixture(tmp_path / "old.db")
    assert schema.version(db) == 0
    before = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("kv", "leases")}

    assert schema.migrate(db, "old.db") == 0

    assert schema.version(db) == len(schema.migrations())
    for table, rows in before.items():
        assert db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall() == rows
    assert db.execute("SELECT value FROM meta WHERE name = 'last_applied'").fetchone() == (8,)
    # every change kept, each with ts 0: recorded before entries carried a timestamp
    assert db.execute("SELECT count(*), max(idx), max(ts) FROM changes").fetchone() == (8, 8, 0)
    assert db.execute("SELECT count(*) FROM proposals").fetchone() == (9,)
    for gone in ("nodes", "jobs", "instances", "config", "secrets"):
        assert gone not in tables(db)
    # a second open finds nothing to do
    assert schema.migrate(db, "old.db") == len(schema.migrations())


def test_a_new_file_takes_the_same_path_as_an_old_one(tmp_path):
    """Every voter's schema text is the same (the digest dumps it), however its file began."""
    old = from_fixture(tmp_path / "old.db")
    new = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    schema.migrate(old, "old.db")
    schema.migrate(new, "new.db")
    assert tables(new) == tables(old)
    assert schema.version(new) == schema.version(old)


def test_a_file_of_a_newer_version_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "management.db"
    db = from_fixture(path)
    newer = len(schema.migrations()) + 1
    db.execute(f"PRAGMA user_version = {newer}")
    dump = list(db.iterdump())

    with pytest.raises(schema.TooNew) as refused:
        schema.migrate(db, str(path))

    message = str(refused.value)
    assert str(path) in message
    assert f"schema version {newer}" in message
    assert f"up to {newer - 1}" in message
    assert "Upgrade Colony on this node" in message
    assert list(db.iterdump()) == dump
    assert schema.version(db) == newer


def test_a_failing_migration_leaves_the_file_at_its_version(tmp_path):
    db = from_fixture(tmp_path / "old.db")
    broken = schema.Migration(len(schema.migrations()) + 1, "broken", "DROP TABLE missing;\n")
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(db, "old.db", [broken])
    assert schema.version(db) == 0
    assert "nodes" in tables(db)  # migration 2 was undone with the rest


def test_migrations_are_numbered_without_gaps_or_repeats():
    latest = len(schema.migrations())
    with pytest.raises(schema.SchemaError, match="without gaps or repeats"):
        schema.migrations([schema.Migration(latest + 2, "a gap", "")])
    with pytest.raises(schema.SchemaError, match="a repeat"):
        schema.migrations([schema.Migration(latest, "a repeat", "")])


def shape(db: sqlite3.Connection) -> dict[str, list]:
    """Every table's columns and every index's columns: what the SQL text says, not how."""
    found = {}
    for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE sql IS NOT NULL"):
        pragma = "table_info" if kind == "table" else "index_info"
        found[f"{kind} {name}"] = db.execute(f"PRAGMA {pragma}({name})").fetchall()
    return found


def test_the_migrations_arrive_at_the_tables_the_kinds_declare(tmp_path):
    migrated = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    schema.migrate(migrated, "new.db", REGISTRY.migrations)
    declared = sqlite3.connect(":memory:")
    declared.executescript(changelog.TABLES + REGISTRY.tables)
    assert shape(migrated) == shape(declared)


def entry(*proposals: Proposal) -> bytes:
    return encode_batch(list(proposals), ts=1_000.0)


def test_a_machine_opens_a_file_from_before_versions_and_goes_on_applying(tmp_path):
    path = tmp_path / "management.db"
    from_fixture(path).close()
    machine = Machine(path)
    assert machine.last_applied == 8
    assert machine.read("alpha") == ("uno", 2)
    assert machine.lease().holder == "node-a" and machine.lease().epoch == 1
    # a retry of an id the old code applied gets its first outcome back
    [again] = machine.apply(9, entry(Proposal("p-put-1", KvPut("alpha", "one"))))
    assert again.ok and again.index == 3 and machine.read("alpha") == ("uno", 2)
    [label] = machine.apply(10, entry(Proposal("p-label", NodeLabel("node-a", {"disk": "ssd"}))))
    assert label.ok and label.version == 1
    machine.close()


def test_a_snapshot_from_an_older_version_is_migrated_and_a_newer_one_refused(tmp_path):
    machine = Machine(tmp_path / "voter" / "management.db")
    old = tmp_path / "old-snapshot"
    from_fixture(old).close()
    machine.load(old)
    assert schema.version(machine.db) == len(schema.migrations(REGISTRY.migrations))
    assert machine.last_applied == 8 and machine.read("gamma") == ("three", 1)
    assert machine.lease().holder == "node-a"

    newer = tmp_path / "newer-snapshot"
    db = from_fixture(newer)
    db.execute("PRAGMA user_version = 99")
    db.execute("UPDATE kv SET value = 'from the future'")
    db.close()
    with pytest.raises(NeedsNewerVersion, match="newer-snapshot has schema version 99"):
        machine.load(newer)
    assert machine.read("gamma") == ("three", 1)  # nothing replaced
    machine.close()
