"""The Raft leader bounds the management database: it proposes `Prune` about once a second.

What each `Prune` forgets, and why it is a command, is in kinds/retention.py.
This side only decides the numbers, on the leader's clock: every PERIOD it
notes (now, the log index it has applied); the idempotency records of the
entries up to the newest note at least `idempotency_window` old can go, and
proposals made before half a window after that note are refused from then
on. The change log can go up to what its relay has put on the change stream,
keeping the `change_log_kept` newest changes. A new leader starts its notes
afresh, so it prunes no records until it has led for a window: the safe side.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from colony.shared.messages import Prune

PERIOD = 1.0
"""Seconds between the leader's looks (and at most one Prune entry each)."""
STEPS = 10
"""Records are forgotten in steps of at least a window / STEPS apart: every entry applied
moves what a window ago is (an idle cluster's lease renewals too), and a Prune each second
for that alone would be most of an idle cluster's entries."""

log = logging.getLogger("colony.consensus.pruner")


class Pruner:
    def __init__(
        self,
        is_leader: Callable[[], bool],
        positions: Callable[[], Awaitable[tuple[int, int]]],
        relayed: Callable[[], int],
        propose: Callable[[Prune], Awaitable[object]],
        window: float,
        kept: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.is_leader = is_leader
        self.positions = positions
        """(the log index this voter has applied, the index of its newest change)."""
        self.relayed = relayed
        """Every change up to this index is on the change stream."""
        self.propose = propose
        self.window = window
        self.kept = kept
        self.clock = clock
        self.notes: deque[tuple[float, int]] = deque()
        """(wall clock, applied index) of this leadership, oldest first."""
        self._proposed = Prune(proposals_upto=0, refuse_before=0.0, changes_upto=0)
        self._records_moved_at = -math.inf
        """When (the pruner's clock) the last Prune moved the records' limits."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PERIOD)
            try:
                await self.look()
            except Exception as e:  # a lost leadership, no quorum: the next look tries again
                log.info("pruning skipped", extra={"reason": f"{type(e).__name__}: {e}"})

    async def look(self) -> Prune | None:
        """Note the applied index; propose a Prune if there is anything new to forget."""
        if not self.is_leader():
            self.notes.clear()
            return None
        now = self.clock()
        applied, last_change = await self.positions()
        self.notes.append((now, applied))
        old: tuple[float, int] | None = None
        while self.notes and self.notes[0][0] <= now - self.window:
            old = self.notes.popleft()
        if old is not None:
            self.notes.appendleft(old)  # still the newest old enough until a later one is
        at, upto = old if old is not None else (0.0, 0)
        changes = min(self.relayed(), last_change - self.kept)
        command = Prune(
            proposals_upto=max(upto, self._proposed.proposals_upto),
            refuse_before=max(at + self.window / 2 if upto else 0.0, self._proposed.refuse_before),
            changes_upto=max(changes, self._proposed.changes_upto),
        )
        if command == self._proposed:
            return None
        records = (command.proposals_upto, command.refuse_before)
        moves_records = records != (self._proposed.proposals_upto, self._proposed.refuse_before)
        if command.changes_upto == self._proposed.changes_upto and (
            now - self._records_moved_at < self.window / STEPS
        ):
            return None  # only the records' limits would move, and they did a moment ago
        await self.propose(command)
        self._proposed = command
        if moves_records:
            self._records_moved_at = now
        return command
