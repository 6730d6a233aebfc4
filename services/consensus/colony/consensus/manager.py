"""The manager role: the Raft leader holds the manager lease, renews it, and acts while it is valid.

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
in: it then came to every later leader from that term's leader. A holder that hands over
(leadership transfer, shutdown) releases the lease, and the next leader takes
it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors

from colony.consensus.machine import Applied, LeaseState, encode_batch
from colony.consensus.raft import NotCommitted, Replica
from colony.shared import subjects
from colony.shared.bus import Bus
from colony.shared.messages import (
    MANAGER,
    Command,
    LeaderElected,
    LeaseEnd,
    LeaseGrant,
    LeaseRenew,
    ManagerActing,
    Outcome,
    Proposal,
    new_id,
)

ANNOUNCE_EVERY = 1.0
"""Seconds between `manager.acting` events while acting."""
WATCH = 0.02
"""Seconds between looks at the clock for the moment acting must stop."""

log = logging.getLogger("colony.consensus.manager")


@dataclass(frozen=True)
class LeaseTimers:
    ttl: float = 1.0
    renew: float = 0.2
    margin: float = 0.1


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


class ManagerRole:
    def __init__(self, replica: Replica, bus: Bus, timers: LeaseTimers = LeaseTimers()) -> None:
        self.replica = replica
        self.bus = bus
        self.me = replica.me
        self.timers = timers
        self.applied = AppliedClock()
        replica.machine.watch(self.applied)
        self.epoch = 0
        """The epoch this node holds the lease at (0: none)."""
        self.valid_until = 0.0
        """Monotonic time when its lease runs out by its own clock."""
        self._announced_term = 0
        self._acting_seen = False
        self._hold_off_until = 0.0

    def acting(self) -> bool:
        """Act as manager now? Only with a valid lease that no later grant applied here
        has replaced, and only as the Raft leader."""
        if not (self.epoch > 0 and time.monotonic() < self.valid_until):
            return False
        lease = self.replica.machine.lease(MANAGER)
        return lease.holder == self.me and lease.epoch == self.epoch and self.replica.is_leader

    def valid_for(self) -> float:
        return max(0.0, self.valid_until - time.monotonic()) if self.acting() else 0.0

    async def propose(self, *commands: Command, timeout: float | None = None) -> list[Outcome]:
        """Commit `commands` on the manager's behalf (fenced by its epoch)."""
        if not self.acting():
            raise NotCommitted(f"{self.me} is not acting as manager")
        proposals = [Proposal(new_id(), c, self.epoch) for c in commands]
        _index, outcomes = await self.replica.commit(
            encode_batch(proposals), timeout or self.timers.ttl
        )
        return outcomes or []

    async def run(self) -> None:
        watching = asyncio.create_task(self._watch())
        try:
            while True:
                try:
                    await self._step()
                except NotCommitted as e:
                    log.info("lease step not committed", extra={"reason": str(e)})
                except TimeoutError:
                    log.info("lease step not committed in time")
                except Exception:  # a bug must not end the role: it stops acting by the clock
                    log.exception("lease step failed; trying again")
                await asyncio.sleep(self.timers.renew)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    async def _step(self) -> None:
        if not self.replica.is_leader:
            self._announced_term = 0
            return
        if time.monotonic() < self._hold_off_until:
            return  # handing leadership over: the lease is left for the next leader
        term = self.replica.term
        if term != self._announced_term:
            # The first entry of the term: once applied, so is every earlier one, and the
            # lease as applied here is the latest committed.
            await self._commit([Proposal(new_id(), LeaderElected(self.me, term))])
            self._announced_term = term
        lease = self.replica.machine.lease(MANAGER)
        if lease.holder == self.me and lease.epoch == self.epoch and self.acting():
            await self._renew()
        elif not lease.holder:
            await self._take(lease.epoch, [], "the lease was free")
        else:
            renewed = self.applied.renewed(MANAGER)
            seen = countdown_from(lease, renewed, term, self.replica.log_arrived_by)
            expires = seen + lease.ttl + self.timers.margin
            wait = expires - time.monotonic()
            if wait > self.timers.renew:
                return
            if wait > 0:
                await asyncio.sleep(wait)
            if self.applied.renewed(MANAGER) != renewed:
                return  # renewed meanwhile: look again next step
            silence = lease.ttl + self.timers.margin
            reason = f"no renewal from {lease.holder} for {silence:g} s"
            end = LeaseEnd(lease.epoch, "expired", reason=reason)
            await self._take(lease.epoch, [Proposal(new_id(), end)], reason)

    async def _renew(self) -> None:
        asked, term = time.monotonic(), self.replica.term
        renew = LeaseRenew(self.me, term=term)
        [outcome] = await self._commit([Proposal(new_id(), renew, self.epoch)])
        if not outcome.ok:
            log.warning("lease renewal refused", extra={"reason": outcome.error})
            self.epoch = 0
        elif self._same_term(term):
            self.valid_until = asked + self.timers.ttl

    async def _take(self, epoch: int, first: list[Proposal], why: str) -> None:
        asked, term = time.monotonic(), self.replica.term
        grant = LeaseGrant(self.me, self.timers.ttl, expected_epoch=epoch, reason=why, term=term)
        outcomes = await self._commit([*first, Proposal(new_id(), grant)])
        if not outcomes[-1].ok:
            log.info("manager lease not granted", extra={"reason": outcomes[-1].error})
            return
        self.epoch = outcomes[-1].version
        self.valid_until = asked + self.timers.ttl if self._same_term(term) else 0.0
        log.info("manager lease granted", extra={"epoch": self.epoch, "why": why})

    def _same_term(self, asked_in: int) -> bool:
        """Count a grant or renewal only if it committed in the term it was asked in: only
        then did it reach any later leader in the frames of its own term's leader (what
        `countdown_from` relies on). Else it lapses, and is expired and taken afresh."""
        if self.replica.term == asked_in:
            return True
        log.info("lease entry committed in a later term: not counted", extra={"term": asked_in})
        return False

    async def release(self, reason: str, also: list[Command] = (), hold_off: float = 0) -> bool:
        """Stop acting and give the lease up (with `also`, in the same entry), so the next
        leader takes it at once, and do not take it again for `hold_off` seconds; False if
        it was not held or the release did not commit."""
        epoch, was_acting = self.epoch, self.acting()
        self.epoch, self.valid_until = 0, 0.0
        self._hold_off_until = time.monotonic() + hold_off
        if not was_acting:
            return False
        await self._announce(False, f"releasing: {reason}", epoch)
        self._acting_seen = False
        proposals = [Proposal(new_id(), c, epoch) for c in also]
        proposals.append(Proposal(new_id(), LeaseEnd(epoch, "released", reason=reason), epoch))
        try:
            outcomes = await self._commit(proposals)
        except (NotCommitted, TimeoutError):
            return False  # it expires instead: the next leader waits one ttl
        return outcomes[-1].ok

    async def _commit(self, proposals: list[Proposal]) -> list[Outcome]:
        _index, outcomes = await self.replica.commit(encode_batch(proposals), self.timers.ttl)
        if outcomes is None:  # applied before (a journal replay): cannot happen for new ids
            raise NotCommitted("the entry was applied before")
        return outcomes

    async def _watch(self) -> None:
        """Announce when acting starts and stops, and keep announcing while it lasts."""
        last, announced = 0.0, 0
        while True:
            acting = self.acting()
            now = time.monotonic()
            if acting != self._acting_seen or (acting and now - last >= ANNOUNCE_EVERY):
                if self._acting_seen and not acting:
                    why = (
                        "lost the Raft leadership"
                        if not self.replica.is_leader
                        else "lease ran out"
                    )
                    log.warning("stopped acting as manager", extra={"why": why})
                    await self._announce(False, why, announced)
                else:
                    announced = self.epoch
                    await self._announce(True, "holds the manager lease", announced)
                self._acting_seen, last = acting, now
            await asyncio.sleep(WATCH)

    async def _announce(self, acting: bool, reason: str, epoch: int) -> None:
        event = ManagerActing(
            node=self.me, epoch=epoch, acting=acting, valid_for=self.valid_for(), reason=reason
        )
        with contextlib.suppress(nats.errors.Error):
            await self.bus.publish(subjects.manager_acting(), event)
