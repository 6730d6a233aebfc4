"""The management database in the one snapshot format (colony.shared.snapshot), as consensus
keeps it: each applied entry's term and the cluster's id recorded in it; compaction
snapshots written and loaded in the format (and the old kind still loaded); a damaged or
foreign one refused with nothing replaced; a replica folder holding only a database starts
its Raft log there (`raft.seed_log`), and its markers never reach a follower's log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from colony.consensus import frames, schema
from colony.consensus.kinds import REGISTRY
from colony.consensus.machine import SNAPSHOT_TABLE, ForeignDatabase, Machine, encode_batch
from colony.consensus.raft import SEED_COMMAND, screen_append, seed_log
from colony.shared import snapshot
from colony.shared.messages import KvPut, Proposal, new_id

CLUSTER = snapshot.cluster_id_of(b"one cluster's secret")
OTHER = snapshot.cluster_id_of(b"another cluster's secret")


def put(key: str, value: str = "v") -> bytes:
    return encode_batch([Proposal(new_id(), KvPut(key, value))])


def test_the_migrations_end_at_the_schema_version_snapshots_declare(tmp_path):
    assert len(schema.migrations(REGISTRY.migrations)) == snapshot.SCHEMA
    machine = Machine(tmp_path / "management.db")
    assert snapshot.facts(machine.db)["schema"] == snapshot.SCHEMA


def test_each_applied_entry_records_its_term_with_its_index(tmp_path):
    machine = Machine(tmp_path / "management.db")
    machine.apply(2, put("a"), 1)
    machine.apply(3, put("b"), 4)
    assert (machine.last_applied, machine.applied_term) == (3, 4)
    about = snapshot.facts(machine.db)
    assert (about["index"], about["term"]) == (3, 4)
    machine.apply(3, put("c"), 5)  # a replay: nothing changes
    assert machine.applied_term == 4


def test_a_database_takes_the_cluster_id_at_open_and_another_cluster_refuses_it(tmp_path):
    path = tmp_path / "management.db"
    Machine(path).close()  # unchecked: no id written
    assert snapshot.facts(sqlite3.connect(path))["cluster"] == ""
    Machine(path, cluster=CLUSTER).close()
    assert snapshot.facts(sqlite3.connect(path))["cluster"] == CLUSTER
    Machine(path, cluster=CLUSTER).close()  # its own cluster: opens
    before = path.read_bytes()
    with pytest.raises(ForeignDatabase, match=f"cluster {CLUSTER}.*cluster {OTHER}"):
        Machine(path, cluster=OTHER)
    assert path.read_bytes() == before


def test_a_compaction_snapshot_is_in_the_format_and_loads_back(tmp_path):
    machine = Machine(tmp_path / "management.db", cluster=CLUSTER)
    machine.apply(2, put("a", "1"), 1)
    header = machine.save(tmp_path / "snap", made_by="v1", voters=["v2", "v1"], raft=b"meta")
    assert (header.index, header.term, header.cluster) == (2, 1, CLUSTER)
    assert (header.origin, header.voters, header.raft) == ("compaction", ["v1", "v2"], b"meta")
    assert snapshot.verify(tmp_path / "snap") == header
    machine.apply(3, put("a", "2"), 1)
    machine.load(tmp_path / "snap")
    assert machine.read("a") == ("1", 1) and machine.last_applied == 2


def test_a_snapshot_of_the_old_kind_still_loads(tmp_path):
    source = Machine(tmp_path / "old.db")
    source.apply(2, put("a", "old"))
    legacy = tmp_path / "legacy-snapshot"
    with sqlite3.connect(legacy) as copy:
        source.db.backup(copy)
        copy.execute(f"CREATE TABLE {SNAPSHOT_TABLE} (meta BLOB NOT NULL)")
        copy.execute(f"INSERT INTO {SNAPSHOT_TABLE} VALUES (?)", (b"meta",))
    copy.close()
    assert legacy.read_bytes().startswith(b"SQLite format 3")
    machine = Machine(tmp_path / "management.db", cluster=CLUSTER)
    machine.load(legacy)
    assert machine.read("a") == ("old", 1)
    tables = {r[0] for r in machine.db.execute("SELECT name FROM sqlite_master")}
    assert SNAPSHOT_TABLE not in tables
    assert snapshot.facts(machine.db)["cluster"] == CLUSTER  # claimed as it loaded


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "foreign"])
def test_a_damaged_or_foreign_snapshot_replaces_nothing(tmp_path, damage):
    other = Machine(tmp_path / "other.db", cluster=OTHER if damage == "foreign" else CLUSTER)
    other.apply(2, put("a", "theirs"), 1)
    other.save(tmp_path / "snap")
    data = (tmp_path / "snap").read_bytes()
    if damage == "truncated":
        (tmp_path / "snap").write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":
        middle = len(data) - 2000  # inside the database, whatever its padding
        (tmp_path / "snap").write_bytes(data[:middle] + b"rot" + data[middle + 3 :])
    machine = Machine(tmp_path / "management.db", cluster=CLUSTER)
    machine.apply(2, put("a", "ours"), 1)
    before = machine.dump()
    with pytest.raises((snapshot.BadSnapshot, ForeignDatabase)):
        machine.load(tmp_path / "snap")
    assert machine.dump() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_with_only_a_database_starts_its_log_at_the_applied_index(tmp_path):
    machine = Machine(tmp_path / "management.db", cluster=CLUSTER)
    for index in range(2, 40):
        machine.apply(index, put(f"k{index}"), 3)
    assert seed_log(tmp_path, machine, ["v1", "v2", "v3"], "v1") == 39
    journal = FileJournal(str(tmp_path / "raft.journal"))
    try:
        assert [journal[i] for i in range(len(journal))] == [
            (SEED_COMMAND, 38, 3),
            (SEED_COMMAND, 39, 3),
        ]
        assert (journal.getCurrentTerm(), journal.getRaftCommitIndex()) == (3, 39)
    finally:
        journal._destroy()
    header = snapshot.verify(tmp_path / "raft.snapshot")
    assert (header.index, header.term, header.origin) == (39, 3, "seed")
    last, previous, voters = frames.loads(header.raft)
    assert (last, previous, voters) == ((SEED_COMMAND, 39, 3), (SEED_COMMAND, 38, 3),
                                        ["v1", "v2", "v3"])  # fmt: skip
    assert seed_log(tmp_path, machine, ["v1"], "v1") == 0  # a journal: the log is as it is


@pytest.mark.parametrize("first_term, current", [(1_000_000, 1_000_000), (2, 3)])
def test_a_seeded_log_campaigns_from_at_least_the_first_term(tmp_path, first_term, current):
    machine = Machine(tmp_path / "management.db", cluster=CLUSTER)
    for index in range(2, 12):
        machine.apply(index, put(f"k{index}"), 3)
    assert seed_log(tmp_path, machine, ["v1"], "v1", first_term=first_term) == 11
    journal = FileJournal(str(tmp_path / "raft.journal"))
    try:
        assert journal.getCurrentTerm() == current
        assert [journal[i] for i in range(len(journal))] == [  # the entries' own term
            (SEED_COMMAND, 10, 3),
            (SEED_COMMAND, 11, 3),
        ]
    finally:
        journal._destroy()
    last, _previous, _voters = frames.loads(snapshot.read_header(tmp_path / "raft.snapshot").raft)
    assert last == (SEED_COMMAND, 11, 3)


def test_no_seed_without_a_database_or_its_term(tmp_path):
    empty = Machine(tmp_path / "a" / "management.db")
    assert seed_log(tmp_path / "a", empty, ["v1"], "v1") == 0
    termless = Machine(tmp_path / "b" / "management.db")
    termless.apply(5, put("k"))  # applied before terms were recorded
    assert seed_log(tmp_path / "b", termless, ["v1"], "v1") == 0
    assert not (tmp_path / "b" / "raft.journal").exists()


# --- the markers never reach a follower's log -------------------------------------

REAL = [(b"\x01", 1, 0), *[(f"c{i}".encode(), i, 2) for i in range(2, 11)]]
SEEDED = [(SEED_COMMAND, 9, 2), (SEED_COMMAND, 10, 2)]


def frame(prev: int, prev_term: int, entries: list) -> dict:
    return {
        "type": "append_entries",
        "term": 3,
        "commit_index": 10,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
        "entries": entries,
    }


def test_a_frame_that_would_append_a_marker_is_dropped():
    message = frame(9, 2, [SEEDED[1], (b"c11", 11, 3)])
    assert screen_append(REAL[:9], 9, 3, message) is None  # it lacks entry 10
    other_term = [*REAL[:9], (b"c10", 10, 1)]  # entry 10 in another (uncommitted) term
    assert screen_append(other_term, 9, 3, message) is None


def test_a_marker_for_an_entry_held_in_its_term_is_skipped_not_dropped():
    message = frame(9, 2, [SEEDED[1], (b"c11", 11, 3)])
    screened = screen_append(REAL, 10, 3, message)
    assert screened is not None
    assert (screened["prevLogIdx"], screened["prevLogTerm"]) == (10, 2)
    assert screened["entries"] == [(b"c11", 11, 3)]


def test_the_marker_before_the_first_does_not_count_as_a_conflict():
    # entry 9 was committed in term 1; the leader's marker 9 carries entry 10's term (2)
    log = [*REAL[:8], (b"c9", 9, 1), (b"c10", 10, 2)]
    message = frame(9, 2, [SEEDED[1], (b"c11", 11, 3)])
    screened = screen_append(log, 10, 3, message)  # no LogConflict: it matches at 10
    assert screened is not None and screened["entries"] == [(b"c11", 11, 3)]


def test_a_frame_with_a_marker_that_pysyncobj_refuses_is_passed_on():
    # the log ends before the frame's previous entry: pysyncobj answers where it ends
    # (nothing is appended), so the leader learns to send its seed snapshot
    message = frame(9, 2, [SEEDED[1], (b"c11", 11, 3)])
    assert screen_append(REAL[:5], 5, 3, message) is message


def test_a_seeded_follower_takes_frames_after_the_markers_it_holds():
    message = frame(9, 2, [SEEDED[1], (b"c11", 11, 3)])
    screened = screen_append(SEEDED, 10, 3, message)
    assert screened is not None and screened["entries"] == [(b"c11", 11, 3)]


def test_seed_log_leaves_no_half_written_journal(tmp_path):
    machine = Machine(tmp_path / "management.db")
    machine.apply(7, put("k"), 2)
    (tmp_path / "raft.journal.meta").write_bytes(b"stale")  # a crash's leftover
    assert seed_log(tmp_path, machine, ["v1"], "v1") == 7
    names = sorted(p.name for p in Path(tmp_path).iterdir())
    assert names == ["management.db", "management.db-shm", "management.db-wal", "raft.journal",
                     "raft.journal.meta", "raft.snapshot", "raft.snapshot.kept"]  # fmt: skip


async def test_the_digest_leaves_out_the_applied_term_and_litestreams_tables(tmp_path):
    from colony.consensus import changelog

    one, two = Machine(tmp_path / "one.db"), Machine(tmp_path / "two.db")
    entry = put("a")
    for machine in (one, two):
        machine.apply(2, entry, 1)
    # litestream keeps its own, different, sequence in each voter's file
    one.db.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
    one.db.execute("INSERT INTO _litestream_seq VALUES (1, 9)")
    changelog.set_meta(two.db, snapshot.APPLIED_TERM, 5)  # a later term, no state changed
    assert (await changelog.digest(one.path))[1] == (await changelog.digest(two.path))[1]
