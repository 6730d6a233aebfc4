"""The replicated state machine: the management database, one SQLite file per voter.

Raft decides the order of log entries; this module turns each entry (a batch
of proposals, stamped with its proposer's wall clock) into one SQLite
transaction. Apply is deterministic: no clock, no randomness, nothing read
but the database and the entry, so every voter that applies the same log
holds the same database. The last applied log index is written in the same
transaction as the entry's effects, so an entry replayed after a restart
(pysyncobj replays its journal) is recognised and skipped: nothing is applied
twice.

The machine knows no object kind: each command is applied by the kind that
declares it (kinds/, one module per kind, one registry line each). What the
machine does for every proposal, whatever its kind:

- Idempotency: every proposal carries an id; the first outcome for an id is
  kept, and a retried id gets that outcome back without applying again. Ids are
  forgotten a window later (kinds/retention.py): a proposal whose request was
  made before what is still remembered is refused, never applied twice.
- Refusals decided by the command alone (`Registry.refusal`): a command that
  needs the manager's epoch and has none, a change id that cannot be a subject.
- Fencing: a proposal made on the manager's behalf carries its epoch, and is
  refused, with nothing applied, unless that epoch is the manager lease's current
  one (kinds/leases.py).
- A deterministic error applying one proposal refuses it alone (its writes undone).
- Consecutive proposals of a command whose kind applies them together (`apply_all`:
  InstancesReport) are applied in one go, as applying them one after the other would;
  if one fails, all of them are undone and applied one by one.
- The changes a proposal records are written when it is done (one statement), and
  the idempotency records of an entry are read and written once for all of it.
- A command this voter cannot decode stops it (`NeedsNewerVersion`): it neither
  skips the entry (its database would silently diverge from the others') nor
  counts it as applied, so once upgraded it continues from that entry.

The file is brought to this code's schema version at open and when a snapshot
is loaded, before anything is applied to it (schema.py).

The machine tells its watchers what each entry did (`Applied`, after the
commit); the watcher, not apply, reads the clock (`manager.AppliedClock`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from colony.consensus import changelog, schema
from colony.consensus.kinds import REGISTRY, kv, retention
from colony.consensus.kinds import leases as leases_kind
from colony.consensus.kinds.kind import Applied, Handles, Kind, Registry, Txn
from colony.consensus.kinds.leases import FREE, LeaseState
from colony.shared.messages import FENCED, MANAGER, Outcome, Proposal

__all__ = ["Applied", "BadBatch", "LeaseState", "Machine", "NeedsNewerVersion", "encode_batch"]

MAX_BATCH = 512
"""Proposals in one log entry at most."""
MAX_ENTRY_BYTES = 256 * 1024
"""One log entry, encoded, at most: it must fit in one Raft frame (NATS carries 1 MiB)."""
ENTRY_VERSION = 1
"""The log entry format this code writes and reads (a newer one stops it)."""

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


class Entry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One Raft log entry: proposals applied in one transaction."""

    proposals: list[Proposal]
    ts: float = 0.0
    """The proposer's wall clock (unix seconds) when it made the entry: every change the
    entry records carries it (Change.ts), the same on every voter."""
    v: int = ENTRY_VERSION
    made: float = 0.0
    """When the client made the request (its clock; the same across its retries: 0 when
    unknown): a proposal made before the oldest time whose ids are remembered is refused
    rather than risk applying it twice (kinds/retention.py)."""


_entry = msgspec.json.Decoder(Entry)
_legacy = msgspec.json.Decoder(list[Proposal])
"""Entries written before they carried a timestamp: a bare list of proposals."""

Watcher = Callable[[Applied], None]


class BadBatch(ValueError):
    """A log entry that is not a list of valid proposals (rejected before proposing)."""


class NeedsNewerVersion(Exception):
    """A committed entry holds what this voter's code cannot decode or apply: it must
    stop (not skip it, not count it as applied) until it is upgraded."""


def encode_batch(proposals: list[Proposal], ts: float | None = None, made: float = 0.0) -> bytes:
    """The log entry for `proposals`, stamped with `ts` (default: now) and with when its
    client `made` them; raises BadBatch for what apply would not decode."""
    if not 1 <= len(proposals) <= MAX_BATCH:
        raise BadBatch(f"a batch holds 1 to {MAX_BATCH} proposals, not {len(proposals)}")
    entry = msgspec.json.encode(Entry(proposals, time.time() if ts is None else ts, made=made))
    if len(entry) > MAX_ENTRY_BYTES:
        raise BadBatch(
            f"the batch encodes to {len(entry)} bytes, over the {MAX_ENTRY_BYTES}-byte limit "
            "of one log entry: split it"
        )
    try:  # built in Python, nothing was checked: an entry apply cannot decode stops voters
        _entry.decode(entry)
    except msgspec.ValidationError as e:
        raise BadBatch(f"the batch is not valid: {e}") from None
    return entry


def decode_entry(index: int, entry: bytes, registry: Registry = REGISTRY) -> Entry:
    """The entry at log `index`; NeedsNewerVersion if this code cannot apply all of it."""
    try:
        decoded = _legacy.decode(entry) if entry[:1] == b"[" else _entry.decode(entry)
    except (msgspec.DecodeError, RecursionError) as e:
        raise NeedsNewerVersion(
            f"needs a newer version: {_unknown(entry, registry, e)} at log index {index}"
        ) from None
    if isinstance(decoded, list):
        decoded = Entry(decoded)
    if decoded.v > ENTRY_VERSION:
        raise NeedsNewerVersion(
            f"needs a newer version: log entry format {decoded.v} at log index {index}"
        )
    for proposal in decoded.proposals:
        if type(proposal.command) not in registry.by_type:
            tag = type(proposal.command).__struct_config__.tag
            raise NeedsNewerVersion(
                f"needs a newer version: command tag {tag} at log index {index}"
            )
    return decoded


def _unknown(entry: bytes, registry: Registry, error: Exception) -> str:
    """What in `entry` this code does not know: a command tag if it can tell."""
    try:
        raw = msgspec.json.decode(entry)
        proposals = raw if isinstance(raw, list) else raw.get("proposals", [])
        for proposal in proposals:
            tag = proposal.get("command", {}).get("type")
            if tag not in registry.tags:
                return f"command tag {tag}"
    except (msgspec.DecodeError, RecursionError, AttributeError, TypeError):
        pass
    return f"an entry it cannot decode ({error})"


@dataclass
class _Applying:
    """One entry being applied: its proposals' outcomes so far, in order."""

    index: int
    entry: Entry
    late: str
    """Why its proposals must be refused, as made too long ago ('' : they may apply)."""
    known: dict[str, Outcome]
    """The first outcome of every proposal id applied before (this entry's too)."""
    outcomes: list[Outcome | None] = field(default_factory=list)
    """None: held in `group`, not applied yet."""
    new: list[tuple[int, str, Outcome]] = field(default_factory=list)
    """The outcomes to remember under their proposal ids, with their places in the entry."""
    noted: list[Applied] = field(default_factory=list)
    group: list[tuple[Kind, Handles, Proposal, int]] = field(default_factory=list)
    """Consecutive proposals of one command whose kind applies them at once (`apply_all`),
    each with where its outcome goes in `outcomes`."""
    grouped: set[str] = field(default_factory=set)
    """The ids of the recorded proposals in `group`."""

    def decided(self, at: int, proposal_id: str, outcome: Outcome) -> None:
        self.known[proposal_id] = outcome
        self.new.append((at, proposal_id, outcome))

    def remembered(self) -> list[tuple[str, Outcome]]:
        """The new outcomes, in the order of their proposals in the entry."""
        return [(id, outcome) for _at, id, outcome in sorted(self.new, key=lambda n: n[0])]


class Machine:
    """The management database of one voter, and the apply function."""

    def __init__(self, path: Path, kinds: Registry = REGISTRY) -> None:
        self.path = path
        self.kinds = kinds
        path.parent.mkdir(parents=True, exist_ok=True)
        # Used by pysyncobj's thread only (apply, snapshots); readers open their own.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            schema.migrate(self.db, str(path), kinds.migrations)
        except BaseException:  # a newer Colony's file (schema.TooNew): left as it is
            self.db.close()
            raise
        self.memory: dict[str, object] = {}
        """Each kind's in-memory state (the leases: for the expiry clock and status)."""
        self._changes: list[tuple] = []
        """The changes recorded by the proposal being applied, written when it is done."""
        self.watchers: list[Watcher] = []
        """Told what each entry did once it commits (on the applying thread: be quick)."""
        self._load()

    def _load(self) -> None:
        """Every kind's memory from the database (at start, after a snapshot): watchers
        hear `loaded` (lease ages are unknown until the next renewal)."""
        self.memory = {k.name: k.load(self.db) for k in self.kinds.kinds if k.load is not None}
        self._tell([Applied("loaded")])

    def watch(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)

    def _tell(self, events: list[Applied]) -> None:
        for watcher in self.watchers:
            for event in events:
                watcher(event)

    def lease(self, name: str = MANAGER) -> LeaseState:
        return self._leases.get(name, FREE)

    @property
    def _leases(self) -> leases_kind.Leases:
        return self.memory.get(leases_kind.KIND.name, {})  # type: ignore[return-value]

    @property
    def last_applied(self) -> int:
        return changelog.last_applied(self.db)

    def apply(self, index: int, entry: bytes) -> list[Outcome] | None:
        """Apply log entry `index`; None if it was applied already (a journal replay).
        Raises NeedsNewerVersion, with nothing applied, if it holds a command this code
        does not know."""
        if index <= self.last_applied:
            return None
        decoded = decode_entry(index, entry, self.kinds)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._changes = []
            # Once per entry, not per proposal: made is the entry's, and Prune (which moves
            # the limit) comes in entries of its own (only the service proposes it).
            late = retention.too_old(db, decoded.made)
            # Idempotency records read and written once per entry, not per proposal.
            known = changelog.seen(db, [p.id for p in decoded.proposals if self._recorded(p)])
            run = _Applying(index, decoded, late, known)
            for proposal in decoded.proposals:
                self._apply_one(run, proposal)
            self._apply_group(run)
            changelog.remember(db, index, run.remembered())
            changelog.set_applied(db, index)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._load()  # memory may hold what the rolled back proposals did
            raise
        self._tell(run.noted)
        return run.outcomes  # type: ignore[return-value]  # every one is set by now

    def _recorded(self, proposal: Proposal) -> bool:
        return self.kinds.handler(proposal.command)[1].recorded

    def _apply_one(self, run: _Applying, proposal: Proposal) -> None:
        """Apply `proposal`, unless its id's first outcome is known (from an earlier entry,
        or earlier in this one); or hold it in `run.group` if its kind applies a run of its
        command at once, to apply with the others that follow."""
        kind, handles = self.kinds.handler(proposal.command)
        if run.group and (handles is not run.group[0][1] or proposal.id in run.grouped):
            self._apply_group(run)  # the run ends (a repeated id must find the outcome)
        if handles.recorded and (seen := run.known.get(proposal.id)):
            run.outcomes.append(seen)
            return
        refusal, code = self.kinds.refusal(proposal, ids=False), ""
        if handles.recorded:  # an unrecorded command (a renewal) checks its epoch itself
            if not refusal and (fenced := leases_kind.fence(self._leases, proposal.epoch)):
                refusal, code = fenced, FENCED
            # its id may have been forgotten: a retry of it must not apply twice
            refusal = refusal or run.late
        if refusal:
            outcome = Outcome(ok=False, error=refusal, index=run.index, code=code)
        elif handles.apply_all is not None:
            run.group.append((kind, handles, proposal, len(run.outcomes)))
            if handles.recorded:
                run.grouped.add(proposal.id)
            run.outcomes.append(None)
            return
        else:
            outcome = self._run_or_refuse(run, proposal, kind, handles)
        if handles.recorded:
            run.decided(len(run.outcomes), proposal.id, outcome)
        run.outcomes.append(outcome)

    def _apply_group(self, run: _Applying) -> None:
        """Apply the proposals held in `run.group` (consecutive, of one command type) at
        once, as their kind's `apply_all` does it: what applying them one after the other
        would do, in fewer statements. If one of them fails, all of them are undone and
        applied again one by one, so that only that one is refused."""
        if not run.group:
            return
        group, run.group, run.grouped = run.group, [], set()
        kind, handles = group[0][0], group[0][1]
        noted = len(run.noted)
        runs = [(self._txn(run, proposal, kind), proposal.command) for *_, proposal, _ in group]
        self.db.execute("SAVEPOINT proposals")
        try:
            outcomes = handles.apply_all(runs)  # type: ignore[misc]  # set: it is grouped
            self._record_changes()
        except _DETERMINISTIC:
            self._changes.clear()
            self.db.execute("ROLLBACK TO proposals")
            self.db.execute("RELEASE proposals")
            del run.noted[noted:]
            outcomes = [self._run_or_refuse(run, p, kind, handles) for *_, p, _ in group]
        else:
            self.db.execute("RELEASE proposals")
            outcomes = [msgspec.structs.replace(o, index=run.index) for o in outcomes]
        for (*_, proposal, at), outcome in zip(group, outcomes, strict=True):
            run.outcomes[at] = outcome
            if handles.recorded:
                run.decided(at, proposal.id, outcome)

    def _txn(self, run: _Applying, proposal: Proposal, kind: Kind) -> Txn:
        memory = self.memory.get(kind.name)
        return Txn(self.db, run.index, proposal, run.entry.ts, memory, run.noted, self._changed)

    def _run_or_refuse(
        self, run: _Applying, proposal: Proposal, kind: Kind, handles: Handles
    ) -> Outcome:
        """Run one proposal; a deterministic error (the same on every voter: a value the
        database cannot hold, a broken constraint, a change that could not be published)
        refuses it and undoes its writes, so a bad command can never stop the log.
        Anything else (a full disk, an I/O error) is this voter's own trouble and
        propagates: the entry is not counted as applied."""
        txn = self._txn(run, proposal, kind)
        self.db.execute("SAVEPOINT proposal")
        try:
            outcome = handles.apply(txn, proposal.command)
            self._record_changes()
        except _DETERMINISTIC as e:
            self._changes.clear()
            self.db.execute("ROLLBACK TO proposal")
            self.db.execute("RELEASE proposal")
            error = f"{handles.tag} could not be applied: {type(e).__name__}: {e}"
            return Outcome(ok=False, error=error, index=run.index)
        self.db.execute("RELEASE proposal")
        return msgspec.structs.replace(outcome, index=run.index)

    def _changed(self, txn: Txn, kind: str, changes: list[tuple[str, int, dict | bytes]]) -> None:
        """Check changes as a handler records them; they are written together when its
        proposal (or its run of proposals) is done."""
        self._changes += changelog.rows(
            index=txn.index,
            kind=kind,
            cause=txn.proposal.id,
            epoch=txn.proposal.epoch,
            ts=txn.ts,
            kinds=self.kinds.change_kinds,
            changes=changes,
        )

    def _record_changes(self) -> None:
        changelog.append(self.db, self._changes)
        self._changes.clear()

    def read(self, key: str) -> tuple[str | None, int]:
        """A kv key's (value, version), as applied here."""
        return kv.read(self.db, key)

    # --- snapshots (pysyncobj's serializer hooks) -------------------------------

    def save(self, path: Path) -> None:
        """Write a consistent copy of the database to `path` (SQLite's online backup)."""
        with sqlite3.connect(path) as copy:
            self.db.backup(copy)
        copy.close()

    def load(self, path: Path) -> None:
        """Replace the database with the copy at `path`, migrated to this code's schema
        version; NeedsNewerVersion, with nothing replaced, if a newer Colony made it."""
        with sqlite3.connect(path) as source:
            try:
                schema.check(source, f"snapshot {path}", schema.migrations(self.kinds.migrations))
            except schema.TooNew as e:
                raise NeedsNewerVersion(str(e)) from None
            source.backup(self.db)
        source.close()
        self.db.execute(f"DROP TABLE IF EXISTS {SNAPSHOT_TABLE}")
        schema.migrate(self.db, f"{self.path} (from snapshot {path})", self.kinds.migrations)
        self._load()

    def dump(self) -> list[str]:
        """The whole database as SQL text: equal on every voter that applied the same log."""
        return list(self.db.iterdump())

    def close(self) -> None:
        self.db.close()


SNAPSHOT_TABLE = "raft_snapshot"
"""Where a snapshot file keeps pysyncobj's own bookkeeping beside the database copy."""


def write_snapshot_meta(path: Path, meta: bytes) -> None:
    """Add pysyncobj's bookkeeping to the database copy at `path`."""
    with sqlite3.connect(path) as copy:
        copy.execute(f"CREATE TABLE {SNAPSHOT_TABLE} (meta BLOB NOT NULL)")
        copy.execute(f"INSERT INTO {SNAPSHOT_TABLE} VALUES (?)", (meta,))
    copy.close()


def read_snapshot_meta(path: Path) -> tuple[bytes, int]:
    """(pysyncobj's bookkeeping, the applied index) of the snapshot file at `path`."""
    with sqlite3.connect(path) as copy:
        (meta,) = copy.execute(f"SELECT meta FROM {SNAPSHOT_TABLE}").fetchone()
        applied = changelog.last_applied(copy)
    copy.close()
    return meta, applied
