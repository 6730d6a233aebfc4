"""The machine's own bookkeeping in the management database: every SQL statement on it.

- `meta`: the last applied log index and its Raft term, written in each entry's
  transaction; the cluster's id (machine.py, at open); the marks of retention
  (kinds/retention.py): how far records and changes were pruned.
- `changes`: the append-only change log; rows numbered 1, 2, 3... identically on every
  voter, each with the entry's timestamp (`ts`), the proposal's epoch and a JSON detail.
  The Raft leader relays it to the change stream (relay.py reads it through `after`).
- `proposals`: the idempotency records (the first outcome of each proposal id).

Kinds never touch these tables directly: a handler records a change through
`Txn.changed` (kinds/kind.py), which checks it can be published first.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import aiosqlite
import msgspec

from colony.shared import snapshot, subjects
from colony.shared.messages import MAX_DETAIL_BYTES, Outcome

TABLES = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    idx INTEGER PRIMARY KEY, log_index INTEGER NOT NULL,
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, cause TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}',
    ts REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS proposals (
    id TEXT PRIMARY KEY, log_index INTEGER NOT NULL, outcome BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS proposals_by_log_index ON proposals (log_index);
"""
"""changes.epoch: the fencing epoch its proposal carried; changes.ts: its entry's
timestamp (0: recorded before entries carried one). proposals are forgotten by log index
(kinds/retention.py). Their shape, as schema.py's migrations make it."""

_outcome = msgspec.json.Decoder(Outcome)


# --- the applied index ----------------------------------------------------------


def meta(db: sqlite3.Connection, name: str) -> int:
    """The integer `meta` holds as `name` (0 if none yet)."""
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def set_meta(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def last_applied(db: sqlite3.Connection) -> int:
    return meta(db, snapshot.APPLIED)


def applied_term(db: sqlite3.Connection) -> int:
    """The Raft term of the last applied entry (0: applied before terms were recorded)."""
    return meta(db, snapshot.APPLIED_TERM)


def set_applied(db: sqlite3.Connection, index: int, term: int) -> None:
    """Entry `index`, of Raft term `term`, is applied (inside its transaction): a copy of
    the database says where in the log it stands, so a replica can start its log there."""
    set_meta(db, snapshot.APPLIED, index)
    set_meta(db, snapshot.APPLIED_TERM, term)


APPLIED_INDEX = f"(SELECT value FROM meta WHERE name = '{snapshot.APPLIED}')"
"""A scalar subquery: kinds' reads join it so a value and its index come from one state."""


# --- idempotency records ---------------------------------------------------------


def among(db: sqlite3.Connection, sql: str, ids: Iterable[str]) -> Iterator[tuple]:
    """The rows `sql` selects for `ids`: its `{ids}` is replaced by their placeholders, a
    few hundred ids at a time (one read for many objects rather than one each)."""
    ids = list(ids)
    for first in range(0, len(ids), _IDS_PER_READ):
        some = ids[first : first + _IDS_PER_READ]
        yield from db.execute(sql.format(ids=", ".join("?" * len(some))), some)


_IDS_PER_READ = 500
"""Ids one `IN (...)` lists at most (SQLite's limit on parameters is 32,766 today, 999
in builds before 3.32)."""


def seen(db: sqlite3.Connection, proposal_ids: list[str]) -> dict[str, Outcome]:
    """The first outcome of each of `proposal_ids` applied before (one read for an entry)."""
    rows = among(db, "SELECT id, outcome FROM proposals WHERE id IN ({ids})", proposal_ids)
    return {id: _outcome.decode(outcome) for id, outcome in rows}


def remember(db: sqlite3.Connection, index: int, outcomes: list[tuple[str, Outcome]]) -> None:
    """Keep the outcome of each (proposal id, outcome) applied at log `index`, in order."""
    db.executemany(
        "INSERT INTO proposals (id, log_index, outcome) VALUES (?, ?, ?)",
        [(id, index, _encode(outcome)) for id, outcome in outcomes],
    )


_encode = msgspec.json.Encoder().encode


FORGOTTEN = "proposals_forgotten_upto"
"""meta: the idempotency records of the entries up to this log index are forgotten."""


def oldest_record(db: sqlite3.Connection) -> int:
    """The log index of the oldest idempotency record held (0: none)."""
    (oldest,) = db.execute("SELECT min(log_index) FROM proposals").fetchone()
    return oldest or 0


def forget_proposals(db: sqlite3.Connection, upto: int) -> None:
    """Forget the idempotency records of the entries up to log index `upto`, and say so."""
    db.execute("DELETE FROM proposals WHERE log_index <= ?", (upto,))
    set_meta(db, FORGOTTEN, upto)


# --- the change log --------------------------------------------------------------


class Unpublishable(ValueError):
    """A change the relay could not publish (its kind or id is no subject token, or its
    detail is too large): refused at apply, the same way on every voter."""


def rows(
    *,
    index: int,
    kind: str,
    cause: str,
    epoch: int,
    ts: float,
    kinds: tuple[str, ...],
    changes: list[tuple[str, int, dict | bytes]],
) -> list[tuple]:
    """The rows (for `append`) of changes of `kind`, each (object id, version, detail);
    raises Unpublishable unless the relay can publish every one. A detail is a dict, or
    already its JSON (bytes: a kind's encoded record, encoded once for its row and its
    change)."""
    if kind not in kinds:
        raise Unpublishable(f"change kind {kind!r} is not declared by any kind")
    return [
        (index, kind, id, version, cause, epoch, check_change(kind, id, detail), ts)
        for id, version, detail in changes
    ]


def append(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Append changes (`rows`' rows) to the change log, in order."""
    db.executemany(
        "INSERT INTO changes (log_index, kind, id, version, cause, epoch, detail, ts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


_DETAIL = json.JSONEncoder(allow_nan=False)
"""json.dumps(detail, allow_nan=False), without making an encoder for every change."""


def check_change(kind: str, id: str, detail: dict | bytes) -> str:
    """The detail as stored (JSON text), if a change of `kind` on `id` with `detail` (a
    dict, or its JSON already) can be published; else Unpublishable saying why."""
    try:  # what subjects.change(kind, id) checks of an id (kinds are checked at import)
        subjects.token(id, "object id")
    except subjects.SubjectError as e:
        raise Unpublishable(str(e)) from None
    if isinstance(detail, bytes):
        # encoded by msgspec from a record decoded from the entry: its numbers are finite
        # (msgspec refuses NaN and infinities when it decodes)
        text, size = detail.decode(), len(detail)
    else:
        try:
            text = _DETAIL.encode(detail)  # ASCII: as many bytes as characters
        except (TypeError, ValueError) as e:
            raise Unpublishable(f"the detail of change {kind} {id} is not JSON: {e}") from None
        size = len(text)
    if size > MAX_DETAIL_BYTES:
        raise Unpublishable(
            f"the detail of change {kind} {id} is {size} bytes of JSON, over the "
            f"{MAX_DETAIL_BYTES}-byte limit"
        )
    return text


@dataclass(frozen=True)
class Row:
    """One row of the change log, as the relay reads it."""

    index: int
    log_index: int
    kind: str
    id: str
    version: int
    cause: str
    epoch: int
    detail: str
    ts: float


async def after(reader: aiosqlite.Connection, index: int, limit: int) -> list[Row]:
    """Up to `limit` changes after change `index`, in order."""
    async with reader.execute(
        "SELECT idx, log_index, kind, id, version, cause, epoch, detail, ts FROM changes "
        "WHERE idx > ? ORDER BY idx LIMIT ?",
        (index, limit),
    ) as rows:
        return [Row(*row) for row in await rows.fetchall()]


DROPPED = "changes_dropped_upto"
"""meta: the changes up to this index are dropped (kinds/retention.py), every one of them
after it was on the change stream."""


def change_span(db: sqlite3.Connection) -> tuple[int, int]:
    """(the oldest change's index, the newest's) held; (0, 0) if none."""
    first, last = db.execute("SELECT min(idx), max(idx) FROM changes").fetchone()
    return first or 0, last or 0


def drop_changes(db: sqlite3.Connection, upto: int) -> None:
    """Drop the changes up to index `upto`, and say so."""
    db.execute("DELETE FROM changes WHERE idx <= ?", (upto,))
    set_meta(db, DROPPED, upto)


async def dropped(reader: aiosqlite.Connection) -> int:
    """The changes up to this index are dropped (0: none): the first held is the next."""
    async with reader.execute("SELECT value FROM meta WHERE name = ?", (DROPPED,)) as rows:
        row = await rows.fetchone()
    return row[0] if row else 0


async def positions(reader: aiosqlite.Connection) -> tuple[int, int]:
    """(the applied log index, the newest change's index), from one state."""
    async with reader.execute(
        f"SELECT {APPLIED_INDEX}, (SELECT coalesce(max(idx), 0) FROM changes)"
    ) as rows:
        applied, last = await rows.fetchone()
    return applied or 0, last


# --- the whole database ----------------------------------------------------------

_NOT_DIGESTED = (
    """INSERT INTO "meta" VALUES('last_applied',""",
    """INSERT INTO "meta" VALUES('applied_term',""",
    "CREATE TABLE _litestream_",
    'INSERT INTO "_litestream_',
)
"""Dump lines left out of the digest: the applied index and its term (lease renewals move
them without changing any state), and the tables litestream keeps in each voter's file
(its own sequence, different on every voter)."""


async def digest(path) -> tuple[int, str, int]:
    """(applied index, sha256 of the SQL dump, statements) of the database at `path`,
    read in one transaction, without the lines `_NOT_DIGESTED` names."""
    sha, statements = hashlib.sha256(), 0
    # its own connection: its transaction must not make anyone else's reads stale
    async with aiosqlite.connect(path) as db:
        await db.execute("BEGIN")
        async with db.execute(f"SELECT {APPLIED_INDEX}") as rows:
            (applied,) = await rows.fetchone()
        async for line in db.iterdump():
            if line.startswith(_NOT_DIGESTED):
                continue
            sha.update(line.encode() + b"\n")
            statements += 1
        await db.execute("COMMIT")
    return applied or 0, sha.hexdigest(), statements
