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
is loaded, before anything is applied to it (schema.py). It belongs to one cluster:
opened with the cluster's id, a file that names none is given it, one that names
another is refused (`ForeignDatabase`), so a copy of another cluster's database
never joins this one's log. With the last applied index, each entry's transaction
records its Raft term: a copy of the file says where in the log it stands, which
is what lets a replica start its log there (raft.py, `seed_log`).

Snapshots are colony.shared.snapshot's format: `save` writes one, `load` takes a
database extracted from one (or a snapshot file of the old kind: a bare database
with pysyncobj's bookkeeping in a table, `read_snapshot_meta`).

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
from colony.shared import snapshot
from colony.shared.messages import FENCED, MANAGER, Outcome, Proposal, SnapshotHeader

__all__ = [
    "Applied",
    "BadBatch",
    "ForeignDatabase",
    "LeaseState",
    "Machine",
    "NeedsNewerVersion",
    "encode_batch",
]

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


class ForeignDatabase(Exception):
    """The database belongs to another cluster than the one this node is in: it is left as
    it is, and this voter does not start (its log and the file's history are not one)."""


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

    def __init__(self, path: Path, kinds: Registry = REGISTRY, cluster: str = "") -> None:
        self.path = path
        self.kinds = kinds
        self.cluster = cluster
        """The id of the cluster this database belongs to ('' : not checked)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # Used by pysyncobj's thread only (apply, snapshots); readers open their own.
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            schema.migrate(self.db, str(path), kinds.migrations)
            self._claim(self.db, str(path))
        except BaseException:  # a newer Colony's file (schema.TooNew), another cluster's
            self.db.close()  # (ForeignDatabase): left as it is
            raise
        self.memory: dict[str, object] = {}
        """Each kind's in-memory state (the leases: for the expiry clock and status)."""
        self._changes: list[tuple] = []
        """The changes recorded by the proposal being applied, written when it is done."""
        self.watchers: list[Watcher] = []
        """Told what each entry did once it commits (on the applying thread: be quick)."""
        self._load()

    def _claim(self, db: sqlite3.Connection, where: str, mark: bool = True) -> None:
        """ForeignDatabase if the database on `db` names another cluster than this one;
        if it names none, `mark` it as this cluster's."""
        if not self.cluster:
            return
        found = changelog.meta(db, snapshot.CLUSTER)
        if found and found != snapshot.cluster_number(self.cluster):
            raise ForeignDatabase(
                f"{where} belongs to cluster {snapshot.cluster_name(found)}, but this node "
                f"is in cluster {self.cluster}: it is a copy of another cluster's database, "
                "left as it is. Remove it (a voter then catches up from the leader) or "
                "restore from one of this cluster's own snapshots"
            )
        if not found and mark:
            changelog.set_meta(db, snapshot.CLUSTER, snapshot.cluster_number(self.cluster))

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

    @property
    def applied_term(self) -> int:
        """The Raft term of the last applied entry (0: not known, applied before terms
        were recorded)."""
        return changelog.applied_term(self.db)

    def apply(self, index: int, entry: bytes, term: int = 0) -> list[Outcome] | None:
        """Apply log entry `index`, of Raft term `term`; None if it was applied already (a
        journal replay). Raises NeedsNewerVersion, with nothing applied, if it holds a
        command this code does not know."""
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
            changelog.set_applied(db, index, term)
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

    def save(
        self,
        path: Path,
        *,
        made_by: str = "",
        origin: str = "compaction",
        voters: list[str] | None = None,
        raft: bytes = b"",
    ) -> SnapshotHeader:
        """Write a snapshot of the database to `path` (colony.shared.snapshot's format: an
        online backup behind a header), with `raft`, pysyncobj's bookkeeping, in its
        header."""
        return snapshot.make(self.db, path, made_by=made_by, origin=origin, voters=voters,
                             raft=raft)  # fmt: skip

    def load(self, path: Path) -> None:
        """Replace the database with the one in the snapshot at `path` (or in a bare
        database file: a snapshot of the old kind), migrated to this code's schema version.
        Nothing is replaced if the snapshot is damaged (snapshot.BadSnapshot), a newer
        Colony made it (NeedsNewerVersion) or it belongs to another cluster
        (ForeignDatabase)."""
        if not is_snapshot(path):
            self._load_database(path, str(path))
            return
        incoming = self.path.with_name(f".{self.path.name}.incoming")
        try:
            snapshot.extract(path, incoming)  # its checksum and SQLite's check first
            self._load_database(incoming, str(path))
        finally:
            incoming.unlink(missing_ok=True)

    def _load_database(self, path: Path, where: str) -> None:
        source = sqlite3.connect(path, isolation_level=None)
        try:
            try:
                schema.check(source, f"snapshot {where}", schema.migrations(self.kinds.migrations))
            except schema.TooNew as e:
                raise NeedsNewerVersion(str(e)) from None
            self._claim(source, f"snapshot {where}", mark=False)
            source.backup(self.db)
        finally:
            source.close()
        self.db.execute(f"DROP TABLE IF EXISTS {SNAPSHOT_TABLE}")
        schema.migrate(self.db, f"{self.path} (from snapshot {where})", self.kinds.migrations)
        self._claim(self.db, f"{self.path} (from snapshot {where})")
        self._load()

    def dump(self) -> list[str]:
        """The whole database as SQL text: equal on every voter that applied the same log."""
        return list(self.db.iterdump())

    def close(self) -> None:
        self.db.close()


SNAPSHOT_TABLE = "raft_snapshot"
"""Where a snapshot file of the old kind (a bare database copy, before the snapshot format)
keeps pysyncobj's own bookkeeping beside the database."""


def is_snapshot(path: Path) -> bool:
    """Whether the file at `path` is in the snapshot format (not a bare database: a snapshot
    of the old kind)."""
    with open(path, "rb") as f:
        return f.read(len(snapshot.MAGIC)) == snapshot.MAGIC


def read_snapshot_meta(path: Path) -> tuple[bytes, int]:
    """(pysyncobj's bookkeeping, the applied index) of the snapshot file of the old kind at
    `path`."""
    with sqlite3.connect(path) as copy:
        (meta,) = copy.execute(f"SELECT meta FROM {SNAPSHOT_TABLE}").fetchone()
        applied = changelog.last_applied(copy)
    copy.close()
    return meta, applied
