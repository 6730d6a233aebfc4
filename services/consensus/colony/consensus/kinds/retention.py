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

from colony.consensus import changelog
from colony.consensus.changelog import positions as positions  # service.py reads it here
from colony.consensus.kinds.kind import Handles, Kind, Txn
from colony.shared.messages import Outcome, Prune

STEP = 5_000
"""Log indexes of records, and changes, one Prune forgets at most: the first after an
upgrade from a file that kept everything catches up over many, each applied quickly."""
_REFUSE = "refuse_made_before_ms"


def too_old(db: sqlite3.Connection, made: float) -> str:
    """Why a proposal made at `made` (unix seconds, its client's clock; 0: unknown) must be
    refused rather than applied: its id may have been forgotten ('' if it may apply)."""
    refuse_before = changelog.meta(db, _REFUSE)
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
    forgotten = min(command.proposals_upto, txn.index - 1, changelog.oldest_record(db) + STEP)
    if forgotten > changelog.meta(db, changelog.FORGOTTEN):
        changelog.forget_proposals(db, forgotten)
    refuse_before = int(command.refuse_before * 1000)
    if refuse_before > changelog.meta(db, _REFUSE):
        changelog.set_meta(db, _REFUSE, refuse_before)
    first, last = changelog.change_span(db)
    # the newest stays: idx is its row id
    dropped = min(command.changes_upto, last - 1, first + STEP)
    if dropped > changelog.meta(db, changelog.DROPPED):
        changelog.drop_changes(db, dropped)
    return Outcome(ok=True)


def pruned(db: sqlite3.Connection) -> tuple[int, int]:
    """(proposals forgotten up to this log index, changes dropped up to this index)."""
    return changelog.meta(db, changelog.FORGOTTEN), changelog.meta(db, changelog.DROPPED)


KIND = Kind(
    name="retention",
    commands=(
        # Applying one twice changes nothing: no idempotency record (one a second).
        Handles(Prune, prune, internal=True, recorded=False),
    ),
)
