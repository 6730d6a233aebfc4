"""The lease kind: named leases with a holder, a ttl and an epoch that only grows.

Commands (all internal: only the consensus service proposes them): LeaseGrant,
LeaseRenew (with the holder's epoch), LeaseEnd (released by the holder, with its
epoch; or expired by the Raft leader). Change kind `lease` (id: the lease's
name; version: its epoch; detail: event, holder, ttl, reason).

Apply never reads a clock, so a lease never expires by itself: the Raft leader
ends it once its own clock says the ttl and a drift margin have passed since it
applied the last grant or renewal. The machine tells its watchers what it
applied (`Applied` granted / renewed / ended); the watcher (manager.AppliedClock)
reads the clock. The in-memory `Leases` (this kind's memory) is what the
leader's expiry clock, the fencing check and `colony status` read.

Fencing: a proposal made on the manager's behalf carries its epoch and is
refused, with nothing applied, unless that epoch is the manager lease's current
one (`fence`, which the machine runs for every proposal with an epoch; its outcome's
`code` is messages.FENCED, which the proposer checks rather than the words).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from colony.consensus.kinds.kind import Handles, Kind, Txn
from colony.shared.messages import MANAGER, LeaseEnd, LeaseGrant, LeaseRenew, Outcome

TABLES = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, ttl REAL NOT NULL,
    granted INTEGER NOT NULL
);
"""
"""granted: the log index of the grant; renewals change no row."""


@dataclass(frozen=True)
class LeaseState:
    """A lease as this replica applied it (kept in memory beside the database)."""

    holder: str
    epoch: int
    ttl: float
    asked_term: int = 0
    """The Raft term the holder asked for the grant or the latest renewal in (0: unknown)."""


FREE = LeaseState("", 0, 0.0)

Leases = dict[str, LeaseState]
"""Every lease by name, as applied here."""


def load(db: sqlite3.Connection) -> Leases:
    """From the database, after a start or a snapshot: ages unknown until the next
    renewal (watchers hear `loaded`: the leader's clock starts then, the safe side)."""
    return {
        name: LeaseState(holder, epoch, ttl)
        for name, holder, epoch, ttl in db.execute("SELECT name, holder, epoch, ttl FROM leases")
    }


def fence(leases: Leases, epoch: int) -> str:
    """Why a proposal made at manager `epoch` must not apply ('' if it may)."""
    if not epoch:
        return ""
    lease = leases.get(MANAGER, FREE)
    holder = f"held by {lease.holder}" if lease.holder else "free"
    if epoch < lease.epoch:
        return f"stale epoch {epoch}: the manager lease is at epoch {lease.epoch} ({holder})"
    if epoch > lease.epoch:
        return f"epoch {epoch} was never granted: the manager lease is at epoch {lease.epoch}"
    if not lease.holder:
        return f"epoch {epoch} has ended: the manager lease is free"
    return ""


def grant(txn: Txn, grant: LeaseGrant) -> Outcome:
    leases: Leases = txn.memory
    lease = leases.get(grant.name, FREE)
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
    txn.db.execute(
        "INSERT INTO leases (name, holder, epoch, ttl, granted) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, "
        "ttl = excluded.ttl, granted = excluded.granted",
        (grant.name, grant.holder, epoch, grant.ttl, txn.index),
    )
    detail = {"event": "granted", "holder": grant.holder, "ttl": grant.ttl, "reason": grant.reason}
    txn.changed("lease", grant.name, epoch, detail)
    # Memory changes last: a refusal raised before it leaves memory as the database is.
    leases[grant.name] = LeaseState(grant.holder, epoch, grant.ttl, grant.term)
    txn.note("granted", grant.name)
    return Outcome(ok=True, value=grant.holder, version=epoch)


def renew(txn: Txn, renew: LeaseRenew) -> Outcome:
    leases: Leases = txn.memory
    lease = leases.get(renew.name, FREE)
    epoch = txn.proposal.epoch
    if epoch != lease.epoch or renew.holder != lease.holder or not lease.holder:
        holder = lease.holder or "nobody"
        return Outcome(
            ok=False,
            version=lease.epoch,
            error=f"lease {renew.name} is held by {holder} at epoch {lease.epoch}: "
            f"{renew.holder} at epoch {epoch} cannot renew it",
        )
    # Only the leader's clock needs a renewal, so no row changes: several a second would
    # otherwise rewrite the database (and its snapshots) for nothing.
    leases[renew.name] = LeaseState(lease.holder, lease.epoch, lease.ttl, renew.term)
    txn.note("renewed", renew.name)
    return Outcome(ok=True, value=lease.holder, version=lease.epoch)


def end(txn: Txn, end: LeaseEnd) -> Outcome:
    leases: Leases = txn.memory
    lease = leases.get(end.name, FREE)
    if lease.epoch != end.epoch or not lease.holder:
        state = f"held by {lease.holder}" if lease.holder else "free"
        return Outcome(
            ok=False,
            version=lease.epoch,
            error=f"lease {end.name} is not held at epoch {end.epoch} "
            f"(it is at epoch {lease.epoch}, {state})",
        )
    if end.how == "released" and txn.proposal.epoch != end.epoch:
        return Outcome(
            ok=False,
            version=lease.epoch,
            error="only the holder releases a lease: propose it with the lease's epoch",
        )
    txn.db.execute("UPDATE leases SET holder = '' WHERE name = ?", (end.name,))
    detail = {"event": end.how, "holder": lease.holder, "reason": end.reason}
    txn.changed("lease", end.name, lease.epoch, detail)
    leases[end.name] = LeaseState("", lease.epoch, lease.ttl)
    txn.note("ended", end.name)
    return Outcome(ok=True, version=lease.epoch)


def _name(command: LeaseGrant | LeaseEnd) -> tuple[str]:
    return (command.name,)


KIND = Kind(
    name="lease",
    tables=TABLES,
    changes=("lease",),
    load=load,
    commands=(
        Handles(LeaseGrant, grant, ids=_name, internal=True),
        # Several a second, and the same renewal applied twice changes nothing: neither
        # an idempotency record nor a change.
        Handles(LeaseRenew, renew, needs_epoch=True, internal=True, recorded=False),
        Handles(LeaseEnd, end, ids=_name, internal=True),
    ),
)
