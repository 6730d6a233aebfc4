"""Retention: the management database forgets what it no longer needs, the same on every voter.

Two things would grow with every write: the idempotency records (`proposals`:
the first outcome of every proposal id) and the change log (`changes`). The
Raft leader bounds both with one internal command, `Prune`, proposed about
once a second (pruner.py); applying it is the only way either shrinks, so
every voter forgets the same rows at the same log index, whatever its own
clock or config says. (Pruning at each apply by a window from each voter's
config would diverge the moment two voters were configured differently.)

- Idempotency records of the entries up to `proposals_upto` go: the leader
  names the last entry it had applied `consensus.idempotency_window` seconds
  before (on its clock). A retry of a proposal that old could find no record
  and apply twice, so from then on a proposal made (its request's time, by
  its client's clock) before `refuse_before` is refused instead: the leader
  sets it half a window after that entry, so a client clock up to half a
  window ahead of the leader's is still safe. Clients retry within seconds.
- Changes up to `changes_upto` go: the leader names one that is on the
  change stream (its relay's progress, which only the leader knows: hence a
  command) and older than the `consensus.change_log_kept` latest. The stream
  keeps the history. The newest change always stays: a change's index is its
  row id, which SQLite would start again at 1 in an empty table.

One Prune forgets at most STEP log indexes' records and STEP changes, so that
the first after an upgrade from a file that kept everything never stalls
apply. Bookkeeping in `meta`: how far each was pruned, and `refuse_before` in
milliseconds (meta holds integers).
"""

from __future__ import annotations

import sqlite3

import aiosqlite

from colony.consensus.changelog import APPLIED_INDEX
from colony.consensus.kinds.kind import Handles, Kind, Txn
from colony.shared.messages import Outcome, Prune

STEP = 5_000
"""Log indexes of records, and changes, one Prune forgets at most: the first after an
upgrade from a file that kept everything catches up over many, each applied quickly."""
_FORGOTTEN = "proposals_forgotten_upto"
_REFUSE = "refuse_made_before_ms"
_DROPPED = "changes_dropped_upto"


def _get(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return row[0] if row else 0


def _set(db: sqlite3.Connection, name: str, value: int) -> None:
    db.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def too_old(db: sqlite3.Connection, made: float) -> str:
    """Why a proposal made at `made` (unix seconds, its client's clock; 0: unknown) must be
    refused rather than applied: its id may have been forgotten ('' if it may apply)."""
    refuse_before = _get(db, _REFUSE)
    if not made or made * 1000 >= refuse_before:
        return ""
    return (
        f"the proposal was made {refuse_before / 1000 - made:.1f} s before the oldest time "
        "whose proposal ids the management database still remembers "
        "(consensus.idempotency_window): a retry this late could apply it twice. "
        "Propose it again with new ids if it is still wanted"
    )


def prune(txn: Txn, command: Prune) -> Outcome:
    db = txn.db
    (oldest,) = db.execute("SELECT min(log_index) FROM proposals").fetchone()
    forgotten = min(command.proposals_upto, txn.index - 1, (oldest or 0) + STEP)
    if forgotten > _get(db, _FORGOTTEN):
        db.execute("DELETE FROM proposals WHERE log_index <= ?", (forgotten,))
        _set(db, _FORGOTTEN, forgotten)
    refuse_before = int(command.refuse_before * 1000)
    if refuse_before > _get(db, _REFUSE):
        _set(db, _REFUSE, refuse_before)
    first, last = db.execute("SELECT min(idx), max(idx) FROM changes").fetchone()
    # the newest stays: idx is its row id
    dropped = min(command.changes_upto, (last or 0) - 1, (first or 0) + STEP)
    if dropped > _get(db, _DROPPED):
        db.execute("DELETE FROM changes WHERE idx <= ?", (dropped,))
        _set(db, _DROPPED, dropped)
    return Outcome(ok=True)


async def positions(reader: aiosqlite.Connection) -> tuple[int, int]:
    """(the applied log index, the newest change's index), from one state."""
    async with reader.execute(
        f"SELECT {APPLIED_INDEX}, (SELECT coalesce(max(idx), 0) FROM changes)"
    ) as rows:
        applied, last = await rows.fetchone()
    return applied or 0, last


def pruned(db: sqlite3.Connection) -> tuple[int, int]:
    """(proposals forgotten up to this log index, changes dropped up to this index)."""
    return _get(db, _FORGOTTEN), _get(db, _DROPPED)


KIND = Kind(
    name="retention",
    commands=(
        # Applying one twice changes nothing: no idempotency record (one a second).
        Handles(Prune, prune, internal=True, recorded=False),
    ),
)
