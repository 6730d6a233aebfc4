"""The manager role: the Raft leader holds the manager lease, renews it, and acts while it is valid.

The decisions, and why they keep two managers from ever acting at once, are
in `lease.py` (`ManagerLease`). This is its shell: every `look` seconds it
tells the core what the replica says (`Seen`) and carries out what it
decides (commit `LeaderElected`, a renewal, a grant, an expiry), reporting
each outcome back; while acting, every `WATCH` seconds, it publishes what
the core announces (`manager.acting`); `release` commits the lease's end when the
holder hands over or stops; `propose` commits on the manager's behalf,
fenced by its epoch. Time comes from an injected `Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from colony.consensus.lease import (
    Announce,
    AppliedClock,
    LeaseTimers,
    ManagerLease,
    Note,
    RecordLeader,
    Release,
    Renew,
    Seen,
    Take,
    WaitUntil,
)
from colony.consensus.machine import encode_batch
from colony.consensus.raft import NotCommitted, Replica
from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.clock import Clock, SystemClock
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

WATCH = 0.02
"""Seconds between looks at the clock for the moment acting must stop, while acting."""
NOT_ACTING_WATCH = 1.0
"""Seconds between those looks while not acting: acting starts only with a grant or a
renewal this role commits, and it wakes the watch then (the slow look is a safety net)."""

log = logging.getLogger("colony.consensus.manager")


class ManagerRole:
    def __init__(
        self,
        replica: Replica,
        bus: Bus,
        timers: LeaseTimers | None = None,
        clock: Clock | None = None,
    ) -> None:
        """`clock` must be the one `replica` reads (its `log_arrived_by`): the system's."""
        self.replica = replica
        self.bus = bus
        self.me = replica.me
        self.timers = timers = timers or LeaseTimers()
        self.clock = clock or SystemClock()
        self.applied = AppliedClock(self.clock.monotonic)
        replica.machine.watch(self.applied)
        self.lease = ManagerLease(self.me, timers)
        self._committed = asyncio.Event()
        """Set when a lease step committed: acting may have started."""

    @property
    def epoch(self) -> int:
        """The epoch this node holds the lease at (0: none)."""
        return self.lease.epoch

    @property
    def valid_until(self) -> float:
        """Monotonic time when its lease runs out by its own clock."""
        return self.lease.valid_until

    def acting(self) -> bool:
        """Act as manager now? (`ManagerLease.acting`)"""
        return self.lease.acting(self.clock.monotonic(), self._seen())

    def valid_for(self) -> float:
        return self.lease.valid_for(self.clock.monotonic(), self._seen())

    def _seen(self) -> Seen:
        replica = self.replica
        return Seen(
            leader=replica.is_leader,
            term=replica.term,
            lease=replica.machine.lease(MANAGER),
            renewed=self.applied.renewed(MANAGER),
            arrived_by=replica.log_arrived_by,
        )

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
                await self.clock.sleep(min(self.timers.look, self.timers.renew))
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

    async def _step(self) -> None:
        """Carry out what the core decides, until it has nothing more to do this step."""
        while True:
            step = self.lease.look(self.clock.monotonic(), self._seen())
            match step:
                case None:
                    return
                case WaitUntil(at=at):
                    await self.clock.sleep(at - self.clock.monotonic())
                    continue
                case RecordLeader(term=term):
                    proposals = [Proposal(new_id(), LeaderElected(self.me, term))]
                case Renew(epoch=epoch, term=term):
                    proposals = [Proposal(new_id(), LeaseRenew(self.me, term=term), epoch)]
                case Take():
                    proposals = self._take(step)
            outcomes = await self._commit(proposals)
            _log(self.lease.committed(step, outcomes, self.replica.term))
            self._committed.set()
            if not isinstance(step, RecordLeader):
                return

    def _take(self, take: Take) -> list[Proposal]:
        grant = LeaseGrant(
            self.me,
            self.timers.ttl,
            expected_epoch=take.expected_epoch,
            reason=take.why,
            term=take.term,
        )
        proposals = [Proposal(new_id(), grant)]
        if take.expire:
            end = LeaseEnd(take.expected_epoch, "expired", reason=take.why)
            proposals.insert(0, Proposal(new_id(), end))
        return proposals

    async def release(self, reason: str, also: list[Command] = (), hold_off: float = 0) -> bool:
        """Stop acting and give the lease up (with `also`, in the same entry), so the next
        leader takes it at once, and do not take it again for `hold_off` seconds; False if
        it was not held or the release did not commit."""
        decisions = self.lease.release(self.clock.monotonic(), self._seen(), reason, hold_off)
        for decision in decisions:
            match decision:
                case Announce():
                    await self._announce(decision)
                case Release(epoch=epoch):
                    proposals = [Proposal(new_id(), c, epoch) for c in also]
                    end = LeaseEnd(epoch, "released", reason=decision.reason)
                    proposals.append(Proposal(new_id(), end, epoch))
                    try:
                        outcomes = await self._commit(proposals)
                    except (NotCommitted, TimeoutError):
                        return False  # it expires instead: the next leader waits one ttl
                    return outcomes[-1].ok
        return False

    async def _commit(self, proposals: list[Proposal]) -> list[Outcome]:
        _index, outcomes = await self.replica.commit(encode_batch(proposals), self.timers.ttl)
        if outcomes is None:  # applied before (a journal replay): cannot happen for new ids
            raise NotCommitted("the entry was applied before")
        return outcomes

    async def _watch(self) -> None:
        """Announce when acting starts and stops, and keep announcing while it lasts."""
        while True:
            self._committed.clear()  # before the look: a commit after it wakes the next
            for decision in self.lease.watch(self.clock.monotonic(), self._seen()):
                if isinstance(decision, Note):
                    _log([decision])
                else:
                    await self._announce(decision)
            if self.acting():
                await self.clock.sleep(WATCH)
            else:
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: see relay.py
                    async with asyncio.timeout(NOT_ACTING_WATCH):
                        await self._committed.wait()

    async def _announce(self, announce: Announce) -> None:
        event = ManagerActing(
            node=self.me,
            epoch=announce.epoch,
            acting=announce.acting,
            valid_for=announce.valid_for,
            reason=announce.reason,
        )
        with contextlib.suppress(BusError):
            await self.bus.publish(subjects.manager_acting(), event)


def _log(notes: list[Note]) -> None:
    for note in notes:
        log.log(note.level, note.message, extra=note.extra)
