"""The relay's judgement of the change stream's newest change against its database (real
SQLite): a lost future (a restore took the database back) or a new leader still applying."""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite
import pytest

from colony.consensus import changelog, relay
from colony.consensus.relay import ChangeRelay
from colony.shared import subjects
from colony.shared.messages import Change


def change(index: int, log_index: int, **fields) -> Change:
    """The stream's copy of change `index`, as the relay publishes the row `Database.apply`
    records for it (kv 'k', version 1, ts 0)."""
    fields = {"kind": "kv", "id": "k", "version": 1, "ts": 0.0, **fields}
    return Change(index=index, log_index=log_index, cause="t", **fields)


class Database:
    """A voter's database as the relay reads it: the applied index, the change log."""

    def __init__(self, path) -> None:
        self.path = path
        with self.writing() as db:
            db.executescript(changelog.TABLES)

    def writing(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path)

    def apply(self, index: int, changes: dict[int, int] | None = None) -> None:
        """Applied up to log `index`, recording changes (change index -> log index)."""
        with self.writing() as db:
            changelog.set_applied(db, index, term=1)
            for number, log_index in (changes or {}).items():
                db.execute(
                    "INSERT INTO changes (idx, log_index, kind, id, version, cause) "
                    "VALUES (?, ?, 'kv', 'k', 1, '')",
                    (number, log_index),
                )

    def drop(self, upto: int) -> None:
        with self.writing() as db:
            changelog.drop_changes(db, upto)


@pytest.fixture
async def database(tmp_path):
    db = Database(tmp_path / "management.db")
    reader = await aiosqlite.connect(db.path)
    db.reader = reader
    yield db
    await reader.close()


def judge(database: Database, committed: int | None = 0) -> ChangeRelay:
    return ChangeRelay(
        None, database.reader, lambda: True, 1, b"secret", committed=lambda: committed
    )


async def test_a_change_the_database_holds_is_no_lost_future(database):
    database.apply(40, {1: 10, 2: 20, 3: 30})
    assert not await judge(database)._lost_future(change(3, 30))


async def test_a_change_beyond_an_applied_database_is_a_lost_future(database):
    database.apply(40, {1: 10, 2: 20})  # restored: its history went on without change 3
    assert await judge(database)._lost_future(change(3, 35))


async def test_a_new_leader_still_applying_is_waited_for(database, monkeypatch):
    monkeypatch.setattr(relay, "CATCH_UP", 0.05)
    database.apply(20, {1: 10, 2: 20})  # committed up to 60, applied up to 20
    judging = asyncio.create_task(judge(database, committed=60)._lost_future(change(3, 50)))
    await asyncio.sleep(0.3)  # well past CATCH_UP: committed here, so it will be applied
    assert not judging.done()
    database.apply(55, {3: 50})
    assert not await asyncio.wait_for(judging, 5)


async def test_a_change_from_an_entry_never_committed_here_is_a_lost_future(database, monkeypatch):
    monkeypatch.setattr(relay, "CATCH_UP", 0.05)
    database.apply(20, {1: 10, 2: 20})  # restored to 20; the stream's change came from 900
    assert await asyncio.wait_for(judge(database, committed=25)._lost_future(change(9, 900)), 5)


async def test_changes_retention_dropped_are_this_historys(database):
    database.apply(80, {1: 10, 2: 20, 3: 30})
    database.drop(3)  # every change relayed and dropped since
    assert not await judge(database)._lost_future(change(3, 30))


async def test_a_lost_future_is_found_when_the_new_history_went_further(database):
    # The lost history's newest change 3 came from entry 30; the restored one (from entry
    # 20) has since made changes 3 to 5 from its own entries: more changes, not fewer.
    database.apply(60, {1: 10, 2: 20, 3: 41, 4: 50, 5: 60})
    assert await judge(database)._lost_future(change(3, 30))


@pytest.mark.parametrize(
    "differs",
    [{"ts": 12.5}, {"kind": "node"}, {"id": "other"}, {"version": 2}],
    ids=["time", "kind", "id", "version"],
)
async def test_another_change_at_the_index_is_a_lost_future(database, differs):
    database.apply(40, {1: 10, 2: 20, 3: 30})
    assert await judge(database)._lost_future(change(3, 30, **differs))


async def test_a_skipped_marker_of_the_rows_change_is_this_historys(database):
    database.apply(40, {1: 10, 2: 20, 3: 30})
    marker = change(3, 30, kind=subjects.SKIPPED, id="kv", detail={"kind": "kv", "id": "k"})
    assert not await judge(database)._lost_future(marker)


async def test_a_leader_merely_behind_never_wipes_the_stream(database, monkeypatch):
    # Applied to 20 (changes 1, 2), committed to 60: the stream's change 5 from entry 58
    # is of its history, not applied yet; it waits however long applying takes.
    monkeypatch.setattr(relay, "CATCH_UP", 0.05)
    database.apply(20, {1: 10, 2: 20})
    judging = asyncio.create_task(judge(database, committed=60)._lost_future(change(5, 58)))
    await asyncio.sleep(0.3)  # well past CATCH_UP
    assert not judging.done()
    database.apply(60, {3: 30, 4: 40, 5: 58})
    assert not await asyncio.wait_for(judging, 5)


async def test_an_unknown_raft_status_decides_nothing(database, monkeypatch):
    # Raft's status could not be read (None): not "committed 0", so not a lost future.
    monkeypatch.setattr(relay, "CATCH_UP", 0.05)
    database.apply(20, {1: 10, 2: 20})
    judging = asyncio.create_task(judge(database, committed=None)._lost_future(change(5, 58)))
    await asyncio.sleep(0.3)  # well past CATCH_UP
    assert not judging.done()
    database.apply(60, {3: 30, 4: 40, 5: 58})
    assert not await asyncio.wait_for(judging, 5)
