"""The replicated state machine: the management database, one SQLite file per voter.

Raft decides the order of log entries; this module turns each entry (a batch
of proposals) into one SQLite transaction. Apply is deterministic: no clock,
no randomness, nothing read but the database and the entry, so every voter
that applies the same log holds the same database. The last applied log
index is written in the same transaction as the entry's effects, so an entry
replayed after a restart (pysyncobj replays its journal) is recognised and
skipped: nothing is applied twice.

Idempotency: every proposal carries an id; the first outcome for an id is
kept, and a retried id gets that outcome back without applying again.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from colony.shared.messages import (
    Barrier,
    Command,
    KvCas,
    KvDelete,
    KvPut,
    Outcome,
    Proposal,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, node TEXT,
    desired TEXT NOT NULL, observed TEXT, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    key TEXT PRIMARY KEY, ciphertext BLOB NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, expires INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    idx INTEGER PRIMARY KEY, log_index INTEGER NOT NULL,
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, cause TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS proposals (
    id TEXT PRIMARY KEY, log_index INTEGER NOT NULL, outcome BLOB NOT NULL
);
"""
"""Tables for what the management role will own (nodes, jobs with every spec
version, instances desired and observed, config, secrets as ciphertext only,
leases), the append-only change log, and the idempotency record."""

MAX_BATCH = 512
"""Proposals in one log entry at most."""
MAX_ENTRY_BYTES = 256 * 1024
"""One log entry, encoded, at most: it must fit in one Raft frame (NATS carries 1 MiB)."""

_batch = msgspec.json.Decoder(list[Proposal])
_outcome = msgspec.json.Decoder(Outcome)


class BadBatch(ValueError):
    """A log entry that is not a list of valid proposals (rejected before proposing)."""


def encode_batch(proposals: list[Proposal]) -> bytes:
    """The log entry for `proposals`; raises BadBatch for what apply would refuse."""
    if not 1 <= len(proposals) <= MAX_BATCH:
        raise BadBatch(f"a batch holds 1 to {MAX_BATCH} proposals, not {len(proposals)}")
    entry = msgspec.json.encode(proposals)
    if len(entry) > MAX_ENTRY_BYTES:
        raise BadBatch(
            f"the batch encodes to {len(entry)} bytes, over the {MAX_ENTRY_BYTES}-byte limit "
            "of one log entry: split it"
        )
    return entry


class Machine:
    """The management database of one voter, and the apply function."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Used by pysyncobj's thread only (apply, snapshots); readers open their own.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @property
    def last_applied(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name = 'last_applied'").fetchone()
        return row[0] if row else 0

    def apply(self, index: int, entry: bytes) -> list[Outcome] | None:
        """Apply log entry `index`; None if it was applied already (a journal replay)."""
        if index <= self.last_applied:
            return None
        try:
            proposals = _batch.decode(entry)
        except msgspec.DecodeError:
            proposals = []  # proposers validate first: a bad entry is skipped, never half-applied
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [self._apply_one(index, p) for p in proposals]
            db.execute(
                "INSERT INTO meta (name, value) VALUES ('last_applied', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (index,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcomes

    def _apply_one(self, index: int, proposal: Proposal) -> Outcome:
        seen = self.db.execute(
            "SELECT outcome FROM proposals WHERE id = ?", (proposal.id,)
        ).fetchone()
        if seen:
            return _outcome.decode(seen[0])
        outcome = msgspec.structs.replace(
            self._run(index, proposal.id, proposal.command), index=index
        )
        self.db.execute(
            "INSERT INTO proposals (id, log_index, outcome) VALUES (?, ?, ?)",
            (proposal.id, index, msgspec.json.encode(outcome)),
        )
        return outcome

    def _run(self, index: int, cause: str, command: Command) -> Outcome:
        if isinstance(command, Barrier):
            return Outcome(ok=True)
        value, version = self.read(command.key)
        if isinstance(command, KvCas) and value != command.expected:
            return Outcome(ok=False, value=value, version=version, error="value differs")
        if isinstance(command, KvDelete):
            if version == 0:
                return Outcome(ok=True)
            self.db.execute("DELETE FROM kv WHERE key = ?", (command.key,))
            self._changed(index, "kv", command.key, 0, cause)
            return Outcome(ok=True)
        assert isinstance(command, KvPut | KvCas)
        self.db.execute(
            "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
            (command.key, command.value, version + 1),
        )
        self._changed(index, "kv", command.key, version + 1, cause)
        return Outcome(ok=True, value=command.value, version=version + 1)

    def _changed(self, index: int, kind: str, id: str, version: int, cause: str) -> None:
        self.db.execute(
            "INSERT INTO changes (log_index, kind, id, version, cause) VALUES (?, ?, ?, ?, ?)",
            (index, kind, id, version, cause),
        )

    def read(self, key: str) -> tuple[str | None, int]:
        row = self.db.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else (None, 0)

    # --- snapshots (pysyncobj's serializer hooks) -------------------------------

    def save(self, path: Path) -> None:
        """Write a consistent copy of the database to `path` (SQLite's online backup)."""
        with sqlite3.connect(path) as copy:
            self.db.backup(copy)
        copy.close()

    def load(self, path: Path) -> None:
        """Replace the database with the copy at `path`."""
        with sqlite3.connect(path) as source:
            source.backup(self.db)
        source.close()

    def dump(self) -> list[str]:
        """The whole database as SQL text: equal on every voter that applied the same log."""
        return list(self.db.iterdump())

    def close(self) -> None:
        self.db.close()
