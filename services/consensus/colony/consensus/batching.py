"""Proposals of requests that arrive together, committed in one log entry.

Every log entry costs the same whatever it holds: a Raft round (frames to
each follower, a journal flush on each voter), a SQLite transaction on each
voter, a callback. Clients with many requests in flight (the curator, an
agent's reports, scripts) send them one at a time, so under load the leader
would spend nearly all of its time on that fixed cost. The `Batcher` takes
the requests that arrived in the same turn of the event loop (the same read
from the connection, above all) and proposes them as one entry, then gives
each request its own outcomes back, as etcd batches the proposals waiting
for its Raft loop. A lone request goes through alone at once: nothing waits
for company.

An entry holds one `made` (when its client made the proposals, for the
idempotency window: kinds/retention.py); requests are grouped only while
their `made` agree within `MADE_SPREAD` and the entry takes the earliest, so
the window's check is never weaker than each request's own. A request that
cannot be encoded with the others (too large, or invalid) is proposed on its
own, so it alone is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from colony.consensus.machine import MAX_BATCH, BadBatch, encode_batch
from colony.shared.messages import Outcome, Proposal

MADE_SPREAD = 1.0
"""Seconds between the earliest and the latest `made` of requests sharing an entry, at
most (0, unknown, is only grouped with 0)."""

Commit = Callable[[bytes], Awaitable[tuple[int, "list[Outcome] | None"]]]


@dataclass
class _Request:
    proposals: list[Proposal]
    made: float
    answer: asyncio.Future[tuple[int, list[Outcome]]] = field(repr=False)


class Batcher:
    def __init__(self, commit: Commit) -> None:
        self._commit = commit
        self._waiting: list[_Request] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.entries = 0
        """Entries proposed (each holding one or more requests)."""
        self.requests = 0

    async def propose(self, proposals: list[Proposal], made: float) -> tuple[int, list[Outcome]]:
        """Commit `proposals` (one request's) in a log entry, perhaps with other requests';
        (the entry's log index, their outcomes). Raises what the commit raises, and
        BadBatch if they cannot be encoded."""
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush)  # after what else arrived in this turn
        request = _Request(proposals, made, loop.create_future())
        self._waiting.append(request)
        return await request.answer

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for group in _groups(waiting):
            task = asyncio.create_task(self._propose(group))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _propose(self, group: list[_Request]) -> None:
        proposals = [p for request in group for p in request.proposals]
        try:
            entry = encode_batch(proposals, made=min(r.made for r in group))
        except BadBatch as e:
            if len(group) == 1:
                _fail(group, e)
                return
            for request in group:  # each on its own: only the one at fault is refused
                await self._propose([request])
            return
        self.entries += 1
        self.requests += len(group)
        try:
            index, outcomes = await self._commit(entry)
        except asyncio.CancelledError:
            for request in group:
                request.answer.cancel()
            raise
        except Exception as e:  # every request of the entry shares its fate
            _fail(group, e)
            return
        outcomes = outcomes or []
        start = 0
        for request in group:
            end = start + len(request.proposals)
            if not request.answer.done():  # its caller may have given up
                request.answer.set_result((index, outcomes[start:end]))
            start = end


def _groups(requests: list[_Request]) -> list[list[_Request]]:
    """`requests` in order, cut into entries: at most MAX_BATCH proposals each, their
    `made` within MADE_SPREAD (and 0 only with 0)."""
    groups: list[list[_Request]] = []
    count, low, high = 0, 0.0, 0.0
    for request in requests:
        n, made = len(request.proposals), request.made
        if (
            groups
            and count + n <= MAX_BATCH
            and (made == 0) == (low == 0)
            and max(high, made) - min(low, made) <= MADE_SPREAD
        ):
            groups[-1].append(request)
            count, low, high = count + n, min(low, made), max(high, made)
        else:
            groups.append([request])
            count, low, high = n, made, made
    return groups


def _fail(group: list[_Request], error: Exception) -> None:
    for request in group:
        if not request.answer.done():
            request.answer.set_exception(error)
