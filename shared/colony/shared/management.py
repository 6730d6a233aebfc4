"""A client of the management database: proposals and reads through any voter, retried.

Any voter takes a proposal (a follower hands it to the leader). While the
group has no leader, or the voter asked is down, the client tries the next
voter with a short backoff until its deadline; the proposals keep their ids,
so a retry of a proposal that did commit is answered with its first outcome,
never applied twice. Bad input (400) is not retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from colony.shared import subjects
from colony.shared.bus import Bus, BusError, RemoteError
from colony.shared.messages import (
    Command,
    Proposal,
    ProposeReply,
    ProposeRequest,
    QueryReply,
    QueryRequest,
    Stored,
    new_id,
)

ATTEMPT = 2.0
"""Seconds one voter may take to answer before the next is tried (commits take ms)."""


class ManagementError(Exception):
    """The request could not be answered: the message says why (last voter's answer)."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


@dataclass(frozen=True)
class Listing:
    """Every object a query selected, read page by page: each page is a reply of its own,
    read at its own log index (`QueryReply.index`), so the pages may be of different
    moments. A follower of the change stream takes a change of an object only if it is
    newer than the page the object came from (`each`), and a change of an object no page
    held only if it is newer than `index`."""

    pages: tuple[QueryReply, ...]

    @property
    def objects(self) -> list[Stored]:
        """Every object, in id order."""
        return [stored for page in self.pages for stored in page.objects]

    @property
    def index(self) -> int:
        """The lowest log index a page was read at: every change up to it is in every page
        (an object no page holds was absent, or removed, by then)."""
        return min(page.index for page in self.pages)

    def each(self) -> Iterator[tuple[int, Stored]]:
        """Each object with the log index its page was read at (every change of it up to
        that index is in this copy), in id order."""
        for page in self.pages:
            for stored in page.objects:
                yield page.index, stored


class Management:
    def __init__(self, bus: Bus, voters: list[str], timeout: float = 10.0) -> None:
        if not voters:
            raise ValueError("no voters to ask: is consensus configured (consensus.voters)?")
        self.bus = bus
        self.voters = list(voters)
        self.timeout = timeout
        self._next = 0

    async def propose(
        self, *commands: Command, ids: list[str] | None = None, epoch: int = 0
    ) -> ProposeReply:
        """Commit `commands` in one log entry, in order; ids default to fresh ones. With
        the manager's `epoch`, each applies only if that epoch is still the current one."""
        ids = ids or [new_id() for _ in commands]
        request = ProposeRequest(
            proposals=[Proposal(i, c, epoch) for i, c in zip(ids, commands, strict=True)]
        )
        return await self._ask(subjects.propose, request)

    async def get(self, key: str, stale: bool = False) -> QueryReply:
        """Read `key`: linearizable, or (stale) whatever the voter asked holds now."""
        return await self._ask(subjects.query, QueryRequest(key=key, stale=stale))

    async def query(self, request: QueryRequest) -> QueryReply:
        """Read what `request` selects (a kind's objects by id, fields, page)."""
        return await self._ask(subjects.query, request)

    async def query_all(
        self,
        kind: str,
        where: dict[str, str] | None = None,
        key: str = "",
        stale: bool = False,
        limit: int = 0,
    ) -> Listing:
        """Every object of `kind` (with these field values; `key`: that id's), asking page
        after page (`limit` objects each, 0: the kind's page size) until none is left."""
        pages: list[QueryReply] = []
        after = ""
        while True:
            reply = await self.query(
                QueryRequest(
                    key=key, kind=kind, where=where or {}, after=after, limit=limit, stale=stale
                )
            )
            pages.append(reply)
            if not reply.more or not reply.objects:
                return Listing(tuple(pages))
            after = reply.objects[-1].id

    async def _ask(self, subject_of, request):
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        while True:
            voter = self.voters[self._next % len(self.voters)]
            left = deadline - time.monotonic()
            try:
                # A voter killed mid-request never answers: give each try a short
                # time and retry elsewhere (with the same ids: safe) rather than wait.
                timeout = min(max(left, 0.1), ATTEMPT)
                return await self.bus.request(subject_of(voter), request, timeout=timeout)
            except RemoteError as e:
                if e.code in (400, 404):  # bad input, or no such object: asking again won't help
                    raise ManagementError(str(e), retryable=False) from None
                last = e
            except BusError as e:  # no responders, timeout: that voter is down
                last = e
            self._next += 1
            if time.monotonic() + delay >= deadline:
                raise ManagementError(f"no voter could answer: {last}", retryable=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
