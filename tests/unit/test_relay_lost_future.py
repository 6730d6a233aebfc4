"""The relay's judgement of the change stream's newest change against its database (real
SQLite): a lost future (a restore took the database back) or a new leader still applying."""

from __future__ import annotations

import asyncio
import sqlite3

import aiosqlite
import pytest

from colony.consensus import changelog, relay
from colony.consensus.relay import ChangeRelay
from colony.shared.messages import Change


def change(index: int, log_index: int) -> Change:
    return Change(index=index, kind="kv", id="k", version=index, log_index=log_index, cause="t")


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


def judge(database: Database, committed: int = 0) -> ChangeRelay:
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
