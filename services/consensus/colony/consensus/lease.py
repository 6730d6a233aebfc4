"""The manager lease's decisions, pure: what this replica saw and when, in; what to do, out.

One node at a time acts as manager, and it is where the Raft leader is.
Taking the role is a committed `LeaseGrant`, which raises the epoch; every
command proposed on the manager's behalf carries that epoch, and the state
machine refuses an epoch that is not the current one (fencing). Timing keeps
two managers from acting at once even across a partition:

- the holder acts only until `ttl` after it *asked* for its grant or its last
  renewal (its own monotonic clock; the commit comes later, so this is early);
- a new leader takes the lease only once `ttl + margin` has passed on *its*
  clock since it applied the last grant or renewal it saw (the apply comes
  after the holder asked, so this is late).

So the old holder has stopped before anyone else starts, unless clocks run
apart by more than the margin within one ttl. A new leader may apply the last
renewal of an earlier term late (only once it commits its own first entry);
such an entry had arrived here by `Replica.log_arrived_by`, and the clock
starts from then if that is sooner (`countdown_from`). That holds because the
holder counts a grant or renewal only if it committed in the term it was asked
in: it then came to every later leader from that term's leader. A holder that
hands over (leadership transfer, shutdown) releases the lease, and the next
leader takes it at once.

`ManagerLease` reads no clock and does no I/O: the manager role (`manager.py`)
feeds it the time and what the replica says (`Seen`), commits what `look`
asks for, reports the outcome to `committed`, and publishes what `watch`
announces; `AppliedClock` is the machine's watcher that times the entries it
applies on an injected clock.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from colony.consensus.kinds.kind import Applied
from colony.consensus.kinds.leases import LeaseState
from colony.shared.messages import Outcome

ANNOUNCE_EVERY = 1.0
"""Seconds between `manager.acting` events while acting."""


@dataclass(frozen=True)
class LeaseTimers:
    ttl: float = 1.0
    renew: float = 0.4
    """Seconds between the holder's renewals. Each is a Raft entry applied on every voter
    (and shipped by each snapshotter): the most an idle cluster does. Two or more per ttl,
    so one slow commit does not lose the lease."""
    margin: float = 0.1
    look: float = 0.2
    """Seconds between looks at the lease: how soon a new leader records its term, and
    takes a lease that is free or ran out."""


class AppliedClock:
    """When (this replica's monotonic clock) it applied each lease's grant and latest
    renewal, and the latest leadership transfer: the machine's watcher, so that apply
    itself reads no clock. A lease held when the database was loaded (at start, from a
    snapshot) counts as renewed then: its age is unknown, and later is the safe side."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.granted_at: dict[str, float | None] = {}
        self.renewed_at: dict[str, float | None] = {}
        self.loaded_at = clock()
        self.transferred_at: float | None = None

    def __call__(self, event: Applied) -> None:
        now = self.clock()
        match event.what:
            case "granted":
                self.granted_at[event.lease] = self.renewed_at[event.lease] = now
            case "renewed":
                self.renewed_at[event.lease] = now
            case "ended":
                self.granted_at[event.lease] = self.renewed_at[event.lease] = None
            case "transferred":
                self.transferred_at = now
            case "loaded":
                self.granted_at, self.renewed_at, self.loaded_at = {}, {}, now

    def granted(self, lease: str) -> float | None:
        return self.granted_at.get(lease)

    def renewed(self, lease: str) -> float | None:
        return self.renewed_at.get(lease, self.loaded_at)


def countdown_from(lease: LeaseState, applied: float | None, term: int, arrived_by: float) -> float:
    """When, on this leader's clock, the holder asked for its grant or last renewal, at the
    latest: when this replica `applied` it; or, if the holder asked in a term before this
    leader's `term`, when every entry of those terms had arrived here (`arrived_by`), if
    sooner: such an entry may be applied only once this leader commits its first one."""
    applied = applied if applied is not None else 0.0
    if 0 < lease.asked_term < term:
        return min(applied, arrived_by)
    return applied


# --- what the replica says --------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What this replica says at one moment."""

    leader: bool
    """Whether it leads Raft."""
    term: int
    lease: LeaseState
    """The manager lease as this replica applied it."""
    renewed: float | None = None
    """When it applied the lease's grant or latest renewal (`AppliedClock.renewed`)."""
    arrived_by: float = 0.0
    """When every entry it holds from an earlier term had arrived (`Replica.log_arrived_by`)."""


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordLeader:
    """Commit `LeaderElected(me, term)`: the first entry of the term. Once it is applied,
    so is every earlier one, and the lease as applied here is the latest committed."""

    term: int


@dataclass(frozen=True)
class Renew:
    """Commit `LeaseRenew(me, term)` fenced at `epoch`; `asked` is when it was asked."""

    epoch: int
    term: int
    asked: float


@dataclass(frozen=True)
class Take:
    """Commit `LeaseGrant(me, ttl, expected_epoch, why, term)`, preceded in the same entry
    by `LeaseEnd(expected_epoch, "expired", why)` if `expire` (the holder fell silent)."""

    expected_epoch: int
    why: str
    term: int
    asked: float
    expire: bool = False


@dataclass(frozen=True)
class WaitUntil:
    """Nothing yet: look again at `at` (the countdown of another holder's lease ends then)."""

    at: float


@dataclass(frozen=True)
class Release:
    """Commit `LeaseEnd(epoch, "released", reason)` fenced at `epoch`."""

    epoch: int
    reason: str


@dataclass(frozen=True)
class Announce:
    """Publish `ManagerActing` for this node."""

    acting: bool
    epoch: int
    valid_for: float
    reason: str


@dataclass(frozen=True)
class Note:
    """Log `message` at `level` with `extra`."""

    level: int
    message: str
    extra: dict = field(default_factory=dict)


Step = RecordLeader | Renew | Take | WaitUntil | None
"""What `look` decides (None: nothing until the next look)."""


# --- the core ---------------------------------------------------------------------


class ManagerLease:
    """This node's side of the manager lease: the epoch it holds it at, until when by its
    own clock, and what it announced."""

    def __init__(self, me: str, timers: LeaseTimers = LeaseTimers()) -> None:
        self.me = me
        self.timers = timers
        self.epoch = 0
        """The epoch this node holds the lease at (0: none)."""
        self.valid_until = 0.0
        """When (monotonic) its lease runs out by its own clock."""
        self._recorded_term = 0
        """The term whose `LeaderElected` this node committed (0: none since it led)."""
        self._asked = 0.0
        """When it asked for the grant or renewal its lease runs from."""
        self._hold_off_until = 0.0
        self._acting_seen = False
        self._announced_epoch = 0
        self._announced_at = -math.inf

    def acting(self, now: float, seen: Seen) -> bool:
        """Act as manager now? Only with a valid lease that no later grant applied here
        has replaced, and only as the Raft leader."""
        if not (self.epoch > 0 and now < self.valid_until):
            return False
        lease = seen.lease
        return lease.holder == self.me and lease.epoch == self.epoch and seen.leader

    def valid_for(self, now: float, seen: Seen) -> float:
        """Seconds the lease is still valid by this node's clock (0 unless acting)."""
        return max(0.0, self.valid_until - now) if self.acting(now, seen) else 0.0

    def look(self, now: float, seen: Seen) -> Step:
        """What to do about the lease now (done every `look` seconds, and at once again
        after a `RecordLeader` or a `WaitUntil`)."""
        if not seen.leader:
            self._recorded_term = 0
            return None
        if now < self._hold_off_until:
            return None  # handing leadership over: the lease is left for the next leader
        if seen.term != self._recorded_term:
            return RecordLeader(seen.term)
        lease = seen.lease
        if lease.holder == self.me and lease.epoch == self.epoch and self.acting(now, seen):
            due = self._asked + self.timers.renew
            if now >= due:
                return Renew(self.epoch, seen.term, now)
            return WaitUntil(due) if due - now <= self.timers.look else None
        if not lease.holder:
            return Take(lease.epoch, "the lease was free", seen.term, now)
        seen_at = countdown_from(lease, seen.renewed, seen.term, seen.arrived_by)
        expires = seen_at + lease.ttl + self.timers.margin
        if expires - now > self.timers.look:
            return None
        if now < expires:
            return WaitUntil(expires)
        silence = lease.ttl + self.timers.margin
        why = f"no renewal from {lease.holder} for {silence:g} s"
        return Take(lease.epoch, why, seen.term, now, expire=True)

    def committed(
        self, step: RecordLeader | Renew | Take, outcomes: list[Outcome], term: int
    ) -> list[Note]:
        """`step` committed with these `outcomes` (the last one the lease's), and the
        replica is at `term` now."""
        match step:
            case RecordLeader():
                self._recorded_term = step.term
                return []
            case Renew():
                if not outcomes[-1].ok:
                    self.epoch = 0
                    return [Note(logging.WARNING, "lease renewal refused", _reason(outcomes))]
                counted, notes = self._same_term(step.term, term)
                if counted:
                    self.valid_until = step.asked + self.timers.ttl
                    self._asked = step.asked
                return notes
            case Take():
                if not outcomes[-1].ok:
                    return [Note(logging.INFO, "manager lease not granted", _reason(outcomes))]
                self.epoch = outcomes[-1].version
                counted, notes = self._same_term(step.term, term)
                self.valid_until = step.asked + self.timers.ttl if counted else 0.0
                self._asked = step.asked
                granted = {"epoch": self.epoch, "why": step.why}
                return [*notes, Note(logging.INFO, "manager lease granted", granted)]

    def _same_term(self, asked_in: int, term: int) -> tuple[bool, list[Note]]:
        """Count a grant or renewal only if it committed in the term it was asked in: only
        then did it reach any later leader in the frames of its own term's leader (what
        `countdown_from` relies on). Else it lapses, and is expired and taken afresh."""
        if term == asked_in:
            return True, []
        message = "lease entry committed in a later term: not counted"
        return False, [Note(logging.INFO, message, {"term": asked_in})]

    def release(
        self, now: float, seen: Seen, reason: str, hold_off: float
    ) -> list[Announce | Release]:
        """Stop acting and give the lease up, so that the next leader takes it at once, and
        do not take it again for `hold_off` seconds: announce it, then `Release` it (none
        of that if this node was not acting)."""
        epoch, was_acting = self.epoch, self.acting(now, seen)
        self.epoch, self.valid_until = 0, 0.0
        self._hold_off_until = now + hold_off
        if not was_acting:
            return []
        self._acting_seen = False
        return [Announce(False, epoch, 0.0, f"releasing: {reason}"), Release(epoch, reason)]

    def watch(self, now: float, seen: Seen) -> list[Announce | Note]:
        """Announce when acting starts and stops, and every `ANNOUNCE_EVERY` while it lasts."""
        acting = self.acting(now, seen)
        due = acting and now - self._announced_at >= ANNOUNCE_EVERY
        if acting == self._acting_seen and not due:
            return []
        if self._acting_seen and not acting:
            why = "lost the Raft leadership" if not seen.leader else "lease ran out"
            stopped = Note(logging.WARNING, "stopped acting as manager", {"why": why})
            out: list[Announce | Note] = [stopped, Announce(False, self._announced_epoch, 0.0, why)]
        else:
            self._announced_epoch = self.epoch
            valid_for = self.valid_for(now, seen)
            out = [Announce(True, self.epoch, valid_for, "holds the manager lease")]
        self._acting_seen, self._announced_at = acting, now
        return out


def _reason(outcomes: list[Outcome]) -> dict:
    return {"reason": outcomes[-1].error}
