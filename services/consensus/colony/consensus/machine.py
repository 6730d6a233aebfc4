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

Leases and fencing: a lease row holds its holder, its ttl and an epoch that
only grows. Apply never reads a clock, so a lease never expires by itself:
the Raft leader ends it (`LeaseEnd` expired) once its own clock says the ttl
and a drift margin have passed since it applied the last grant or renewal.
The machine tells its watchers what it applied (`Applied`, after the commit);
the watcher, not apply, reads the clock (`manager.AppliedClock`). A
proposal made on the manager's behalf carries its epoch, and is refused,
with nothing applied, unless that epoch is the lease's current one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from colony.shared.messages import (
    MANAGER,
    Barrier,
    KvCas,
    KvDelete,
    KvPut,
    LeaderElected,
    LeadershipTransferred,
    LeaseEnd,
    LeaseGrant,
    LeaseRenew,
    Outcome,
    Proposal,
    VoterChanged,
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
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, ttl REAL NOT NULL,
    granted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    idx INTEGER PRIMARY KEY, log_index INTEGER NOT NULL,
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, cause TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS proposals (
    id TEXT PRIMARY KEY, log_index INTEGER NOT NULL, outcome BLOB NOT NULL
);
"""
"""Tables for what the management role will own (nodes, jobs with every spec
version, instances desired and observed, config, secrets as ciphertext only,
leases: granted is a log index; renewals change no row), the append-only change log (epoch:
the fencing epoch its proposal carried), and the idempotency record."""

_MIGRATIONS = [
    # leases before fencing had a wall-clock expiry and were never written
    ("leases", "expires", "DROP TABLE leases"),
    ("changes", "-epoch", "ALTER TABLE changes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0"),
    ("changes", "-detail", "ALTER TABLE changes ADD COLUMN detail TEXT NOT NULL DEFAULT '{}'"),
]
"""(table, column, statement): run if the table has the column (-column: lacks it)."""

MAX_BATCH = 512
"""Proposals in one log entry at most."""
MAX_ENTRY_BYTES = 256 * 1024
"""One log entry, encoded, at most: it must fit in one Raft frame (NATS carries 1 MiB)."""

_DETERMINISTIC = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    OverflowError,
    ValueError,
    TypeError,
)
"""Errors that applying a command raises the same way on every voter (its values,
not this voter's disk): the proposal is refused, never retried."""

_batch = msgspec.json.Decoder(list[Proposal])
_outcome = msgspec.json.Decoder(Outcome)


@dataclass(frozen=True)
class LeaseState:
    """A lease as this replica applied it (kept in memory beside the database)."""

    holder: str
    epoch: int
    ttl: float
    asked_term: int = 0
    """The Raft term the holder asked for the grant or the latest renewal in (0: unknown)."""


FREE = LeaseState("", 0, 0.0)


@dataclass(frozen=True)
class Applied:
    """What an entry did that a watcher times (on its own clock): a lease `granted`,
    `renewed` or `ended`, a leadership `transferred`, or the database `loaded` (at start
    or from a snapshot: every lease's age is unknown)."""

    what: str
    lease: str = ""


Watcher = Callable[[Applied], None]


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
        self._migrate()
        self.db.executescript(SCHEMA)
        self.leases: dict[str, LeaseState] = {}
        """The leases as applied here, for the leader's expiry clock and for status."""
        self.watchers: list[Watcher] = []
        """Told what each entry did once it commits (on the applying thread: be quick)."""
        self._noted: list[Applied] = []
        self._load_leases()

    def _migrate(self) -> None:
        for table, column, statement in _MIGRATIONS:
            columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if columns and (column.lstrip("-") in columns) != column.startswith("-"):
                self.db.execute(statement)

    def _load_leases(self) -> None:
        """From the database, after a start or a snapshot: ages unknown until the next
        renewal (watchers hear `loaded`: the leader's clock starts then, the safe side)."""
        self.leases = {
            name: LeaseState(holder, epoch, ttl)
            for name, holder, epoch, ttl in self.db.execute(
                "SELECT name, holder, epoch, ttl FROM leases"
            )
        }
        self._tell([Applied("loaded")])

    def watch(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)

    def _tell(self, events: list[Applied]) -> None:
        for watcher in self.watchers:
            for event in events:
                watcher(event)

    def lease(self, name: str = MANAGER) -> LeaseState:
        return self.leases.get(name, FREE)

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
        except (msgspec.DecodeError, RecursionError):
            proposals = []  # proposers validate first: a bad entry is skipped, never half-applied
        db = self.db
        self._noted = []
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
        self._tell(self._noted)
        return outcomes

    def _apply_one(self, index: int, proposal: Proposal) -> Outcome:
        if isinstance(proposal.command, LeaseRenew):
            # Several a second, and the same renewal applied twice changes nothing:
            # neither an idempotency record nor a change.
            return msgspec.structs.replace(self._renew(proposal), index=index)
        seen = self.db.execute(
            "SELECT outcome FROM proposals WHERE id = ?", (proposal.id,)
        ).fetchone()
        if seen:
            return _outcome.decode(seen[0])
        refusal = self._fence(proposal.epoch)
        outcome = (
            Outcome(ok=False, error=refusal) if refusal else self._run_or_refuse(index, proposal)
        )
        outcome = msgspec.structs.replace(outcome, index=index)
        self.db.execute(
            "INSERT INTO proposals (id, log_index, outcome) VALUES (?, ?, ?)",
            (proposal.id, index, msgspec.json.encode(outcome)),
        )
        return outcome

    def _fence(self, epoch: int) -> str:
        """Why a proposal made at manager `epoch` must not apply ('' if it may)."""
        if not epoch:
            return ""
        lease = self.lease(MANAGER)
        holder = f"held by {lease.holder}" if lease.holder else "free"
        if epoch < lease.epoch:
            return f"stale epoch {epoch}: the manager lease is at epoch {lease.epoch} ({holder})"
        if epoch > lease.epoch:
            return f"epoch {epoch} was never granted: the manager lease is at epoch {lease.epoch}"
        if not lease.holder:
            return f"epoch {epoch} has ended: the manager lease is free"
        return ""

    def _run_or_refuse(self, index: int, proposal: Proposal) -> Outcome:
        """Run one proposal; a deterministic error (the same on every voter: a value the
        database cannot hold, a broken constraint) refuses it and undoes its writes, so a
        bad command can never stop the log. Anything else (a full disk, an I/O error) is
        this voter's own trouble and propagates: the entry is not counted as applied."""
        self.db.execute("SAVEPOINT proposal")
        try:
            outcome = self._run(index, proposal)
        except _DETERMINISTIC as e:
            self.db.execute("ROLLBACK TO proposal")
            self.db.execute("RELEASE proposal")
            tag = type(proposal.command).__struct_config__.tag
            return Outcome(ok=False, error=f"{tag} could not be applied: {type(e).__name__}: {e}")
        self.db.execute("RELEASE proposal")
        return outcome

    def _run(self, index: int, proposal: Proposal) -> Outcome:
        command = proposal.command
        match command:
            case Barrier():
                return Outcome(ok=True)
            case LeaseGrant():
                return self._grant(index, proposal, command)
            case LeaseEnd():
                return self._end(index, proposal, command)
            case LeaderElected(node=node, term=term):
                self._changed(index, proposal, "leader", node, term, {"term": term})
                return Outcome(ok=True)
            case VoterChanged(node=node, change=change, reason=reason):
                version = 1 if change == "added" else 0
                self._changed(
                    index, proposal, "voter", node, version, {"change": change, "reason": reason}
                )
                return Outcome(ok=True)
            case LeadershipTransferred(source=source, target=target, reason=reason):
                detail = {"source": source, "target": target, "reason": reason}
                self._changed(index, proposal, "transfer", target, index, detail)
                self._noted.append(Applied("transferred"))
                return Outcome(ok=True)
        return self._kv(index, proposal)

    def _kv(self, index: int, proposal: Proposal) -> Outcome:
        command = proposal.command
        assert isinstance(command, KvPut | KvDelete | KvCas)
        value, version = self.read(command.key)
        if isinstance(command, KvCas) and value != command.expected:
            return Outcome(ok=False, value=value, version=version, error="value differs")
        if isinstance(command, KvDelete):
            if version == 0:
                return Outcome(ok=True)
            self.db.execute("DELETE FROM kv WHERE key = ?", (command.key,))
            self._changed(index, proposal, "kv", command.key, 0)
            return Outcome(ok=True)
        self.db.execute(
            "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
            (command.key, command.value, version + 1),
        )
        self._changed(index, proposal, "kv", command.key, version + 1)
        return Outcome(ok=True, value=command.value, version=version + 1)

    # --- leases -------------------------------------------------------------------

    def _grant(self, index: int, proposal: Proposal, grant: LeaseGrant) -> Outcome:
        lease = self.lease(grant.name)
        if lease.epoch != grant.expected_epoch:
            return Outcome(
                ok=False,
                version=lease.epoch,
                error=f"lease {grant.name} is at epoch {lease.epoch}, "
                f"not {grant.expected_epoch}: someone granted it since",
            )
        if lease.holder:
            return Outcome(
                ok=False,
                version=lease.epoch,
                error=f"lease {grant.name} is held by {lease.holder} at epoch {lease.epoch}: "
                "it must be released or expired first",
            )
        epoch = lease.epoch + 1
        self.db.execute(
            "INSERT INTO leases (name, holder, epoch, ttl, granted) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, "
            "ttl = excluded.ttl, granted = excluded.granted",
            (grant.name, grant.holder, epoch, grant.ttl, index),
        )
        detail = {
            "event": "granted",
            "holder": grant.holder,
            "ttl": grant.ttl,
            "reason": grant.reason,
        }
        self._changed(index, proposal, "lease", grant.name, epoch, detail)
        self.leases[grant.name] = LeaseState(grant.holder, epoch, grant.ttl, grant.term)
        self._noted.append(Applied("granted", grant.name))
        return Outcome(ok=True, value=grant.holder, version=epoch)

    def _renew(self, proposal: Proposal) -> Outcome:
        renew = proposal.command
        assert isinstance(renew, LeaseRenew)
        lease = self.lease(renew.name)
        if proposal.epoch != lease.epoch or renew.holder != lease.holder or not lease.holder:
            holder = lease.holder or "nobody"
            return Outcome(
                ok=False,
                version=lease.epoch,
                error=f"lease {renew.name} is held by {holder} at epoch {lease.epoch}: "
                f"{renew.holder} at epoch {proposal.epoch} cannot renew it",
            )
        # Only the leader's clock needs a renewal, so no row changes: several a second would
        # otherwise rewrite the database (and its snapshots) for nothing.
        self.leases[renew.name] = LeaseState(lease.holder, lease.epoch, lease.ttl, renew.term)
        self._noted.append(Applied("renewed", renew.name))
        return Outcome(ok=True, value=lease.holder, version=lease.epoch)

    def _end(self, index: int, proposal: Proposal, end: LeaseEnd) -> Outcome:
        lease = self.lease(end.name)
        if lease.epoch != end.epoch or not lease.holder:
            state = f"held by {lease.holder}" if lease.holder else "free"
            return Outcome(
                ok=False,
                version=lease.epoch,
                error=f"lease {end.name} is not held at epoch {end.epoch} "
                f"(it is at epoch {lease.epoch}, {state})",
            )
        if end.how == "released" and proposal.epoch != end.epoch:
            return Outcome(
                ok=False,
                version=lease.epoch,
                error="only the holder releases a lease: propose it with the lease's epoch",
            )
        self.db.execute("UPDATE leases SET holder = '' WHERE name = ?", (end.name,))
        detail = {"event": end.how, "holder": lease.holder, "reason": end.reason}
        self._changed(index, proposal, "lease", end.name, lease.epoch, detail)
        self.leases[end.name] = LeaseState("", lease.epoch, lease.ttl)
        self._noted.append(Applied("ended", end.name))
        return Outcome(ok=True, version=lease.epoch)

    def _changed(
        self, index: int, proposal: Proposal, kind: str, id: str, version: int, detail=None
    ) -> None:
        self.db.execute(
            "INSERT INTO changes (log_index, kind, id, version, cause, epoch, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (index, kind, id, version, proposal.id, proposal.epoch, json.dumps(detail or {})),
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
        self._load_leases()

    def dump(self) -> list[str]:
        """The whole database as SQL text: equal on every voter that applied the same log."""
        return list(self.db.iterdump())

    def close(self) -> None:
        self.db.close()
