"""The machine's own bookkeeping in the management database: every SQL statement on it.

- `meta`: the last applied log index, written in each entry's transaction.
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
from dataclasses import dataclass

import aiosqlite
import msgspec

from colony.shared import subjects
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


def last_applied(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE name = 'last_applied'").fetchone()
    return row[0] if row else 0


def set_applied(db: sqlite3.Connection, index: int) -> None:
    db.execute(
        "INSERT INTO meta (name, value) VALUES ('last_applied', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (index,),
    )


APPLIED_INDEX = "(SELECT value FROM meta WHERE name = 'last_applied')"
"""A scalar subquery: kinds' reads join it so a value and its index come from one state."""


# --- idempotency records ---------------------------------------------------------


def seen(db: sqlite3.Connection, proposal_id: str) -> Outcome | None:
    """The first outcome of `proposal_id`, if it was applied before."""
    row = db.execute("SELECT outcome FROM proposals WHERE id = ?", (proposal_id,)).fetchone()
    return _outcome.decode(row[0]) if row else None


def remember(db: sqlite3.Connection, proposal_id: str, index: int, outcome: Outcome) -> None:
    db.execute(
        "INSERT INTO proposals (id, log_index, outcome) VALUES (?, ?, ?)",
        (proposal_id, index, msgspec.json.encode(outcome)),
    )


# --- the change log --------------------------------------------------------------


class Unpublishable(ValueError):
    """A change the relay could not publish (its kind or id is no subject token, or its
    detail is too large): refused at apply, the same way on every voter."""


def record(
    db: sqlite3.Connection,
    *,
    index: int,
    kind: str,
    id: str,
    version: int,
    cause: str,
    epoch: int,
    detail: dict,
    ts: float,
    kinds: tuple[str, ...],
) -> None:
    """Append one change; raises Unpublishable unless the relay can publish it."""
    if kind not in kinds:
        raise Unpublishable(f"change kind {kind!r} is not declared by any kind")
    text = check_change(kind, id, detail)
    db.execute(
        "INSERT INTO changes (log_index, kind, id, version, cause, epoch, detail, ts) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (index, kind, id, version, cause, epoch, text, ts),
    )


def check_change(kind: str, id: str, detail: dict) -> str:
    """The detail as stored (JSON), if a change of `kind` on `id` with `detail`
    can be published; else Unpublishable saying why."""
    try:
        subjects.change(kind, id)
    except subjects.SubjectError as e:
        raise Unpublishable(str(e)) from None
    try:
        text = json.dumps(detail, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise Unpublishable(f"the detail of change {kind} {id} is not JSON: {e}") from None
    if len(text) > MAX_DETAIL_BYTES:
        raise Unpublishable(
            f"the detail of change {kind} {id} is {len(text)} bytes of JSON, over the "
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


# --- the whole database ----------------------------------------------------------

_APPLIED_ROW = """INSERT INTO "meta" VALUES('last_applied',"""


async def digest(path) -> tuple[int, str, int]:
    """(applied index, sha256 of the SQL dump, statements) of the database at `path`,
    read in one transaction. The applied index's own row is left out of the digest:
    lease renewals move it several times a second without changing any state."""
    sha, statements = hashlib.sha256(), 0
    # its own connection: its transaction must not make anyone else's reads stale
    async with aiosqlite.connect(path) as db:
        await db.execute("BEGIN")
        async with db.execute(f"SELECT {APPLIED_INDEX}") as rows:
            (applied,) = await rows.fetchone()
        async for line in db.iterdump():
            if line.startswith(_APPLIED_ROW):
                continue
            sha.update(line.encode() + b"\n")
            statements += 1
        await db.execute("COMMIT")
    return applied or 0, sha.hexdigest(), statements
