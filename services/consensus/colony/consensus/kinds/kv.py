"""The kv kind: the debug key-value table (`colony kv`), open to any client.

Commands: KvPut, KvDelete, KvCas. Change kind `kv` (id: the key; version: the
key's version after the command, 0 once deleted). Reads: `read` (the machine's
connection) and `query` (a reader's, with the applied index it read at).
"""

from __future__ import annotations

import sqlite3

import aiosqlite

from colony.consensus.changelog import APPLIED_INDEX
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.shared.messages import KvCas, KvDelete, KvPut, Outcome, Stored

TABLES = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
"""


def read(db: sqlite3.Connection, key: str) -> tuple[str | None, int]:
    """(value, version) of `key`; (None, 0) if absent."""
    row = db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
    return (row[0], row[1]) if row else (None, 0)


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, [the value of `key`], or [] if absent), from one state of the
    database. The service also answers it in QueryReply's value and version."""
    async with reader.execute(
        f"SELECT {APPLIED_INDEX}, kv.value, kv.version FROM (SELECT 1) LEFT JOIN kv ON kv.key = ?",
        (select.id,),
    ) as rows:
        index, value, version = await rows.fetchone()
    if value is None:
        return index or 0, []
    return index or 0, [Stored(id=select.id, version=version, value=value)]


def _set(txn: Txn, key: str, value: str, version: int) -> Outcome:
    txn.db.execute(
        "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
        (key, value, version + 1),
    )
    txn.changed("kv", key, version + 1)
    return Outcome(ok=True, value=value, version=version + 1)


def put(txn: Txn, command: KvPut) -> Outcome:
    _value, version = read(txn.db, command.key)
    return _set(txn, command.key, command.value, version)


def cas(txn: Txn, command: KvCas) -> Outcome:
    value, version = read(txn.db, command.key)
    if value != command.expected:
        return Outcome(ok=False, value=value, version=version, error="value differs")
    return _set(txn, command.key, command.value, version)


def delete(txn: Txn, command: KvDelete) -> Outcome:
    _value, version = read(txn.db, command.key)
    if version:
        txn.db.execute("DELETE FROM kv WHERE key = ?", (command.key,))
        txn.changed("kv", command.key, 0)
    return Outcome(ok=True)


def _key(command: KvPut | KvDelete | KvCas) -> tuple[str]:
    return (command.key,)


KIND = Kind(
    name="kv",
    tables=TABLES,
    changes=("kv",),
    commands=(
        Handles(KvPut, put, ids=_key),
        Handles(KvDelete, delete, ids=_key),
        Handles(KvCas, cas, ids=_key),
    ),
    query=query,
)
