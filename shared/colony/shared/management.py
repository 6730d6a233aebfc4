"""A client of the management database: proposals and reads through any voter, retried.

Any voter takes a proposal (a follower hands it to the leader). While a request
waits past `PROBE_EVERY`, the voter asked is probed (its status subject) every
`PROBE_EVERY`: one killed mid-request has no subscriptions left (NATS drops them
with its connection), so the probe is refused at once (no responders) and the
request goes at once to the next voter, the one the voters last named leader if it
still listens. A voter that answers probes is waited for however slow its commit
(a retry elsewhere would only be handed back to it); one that answers neither the
request nor a probe for `ATTEMPT` is given up (hung, or cut off from NATS). While
the group has no leader the voters refuse at once (503), and the client tries
again after a short backoff until its deadline. Every retry keeps the proposals'
ids, so one of a proposal that did commit is answered with its first outcome,
never applied twice. Bad input (400) is not retried.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from colony.shared import subjects
from colony.shared.bus import Bus, BusError, NoResponders, RemoteError, RequestTimeout
from colony.shared.messages import (
    Command,
    ConsensusStatusRequest,
    Proposal,
    ProposeReply,
    ProposeRequest,
    QueryReply,
    QueryRequest,
    Stored,
    new_id,
)

ATTEMPT = 2.0
"""Seconds a voter may answer neither a request nor any probe before the next is tried."""
PROBE_EVERY = 0.1
"""Seconds a request waits before its voter is probed, and between probes (commits take
ms; an election 0.3-0.6 s, so a dead leader is found well before its successor leads)."""
GONE_FOR = 1.0
"""Seconds a voter found not listening is tried after the others (it may restart)."""
BACKOFF = (0.05, 0.25)
"""Seconds between tries while no voter can answer: the first, doubling up to the last
(an election takes 0.3-0.6 s: a short wait, never a hot loop)."""


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
        delay = BACKOFF[0]
        watch = _watch(self.bus)
        while True:
            voter = self.voters[self._next % len(self.voters)]
            try:
                return await self._attempt(watch, voter, subject_of(voter), request, deadline)
            except RemoteError as e:
                if e.code in (400, 403, 404):  # bad input, not allowed, no such object: for good
                    raise ManagementError(str(e), retryable=False) from None
                last, gone = e, False
            except NoResponders as e:  # nothing listens there (now): that voter is down
                watch.lost(voter)
                last, gone = e, True
            except BusError as e:  # no answer in time, or no connection to NATS
                last, gone = e, False
            self._next = self._after(watch, voter)
            if gone and not watch.is_gone(self.voters[self._next % len(self.voters)]):
                continue  # a live voter is left to ask: at once, the same ids (safe)
            if time.monotonic() + delay >= deadline:
                raise ManagementError(f"no voter could answer: {last}", retryable=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF[1])

    async def _attempt(self, watch: _Watch, voter: str, subject, request, deadline: float):
        """Ask `voter` and wait for its answer while it lives: a voter that stops listening
        (killed: NATS drops its subscriptions with its connection) is given up within a
        probe, one that answers probes is waited for however slow its commit, and one that
        answers neither the request nor a probe for `ATTEMPT` is given up (hung, or cut
        off from NATS)."""
        began = time.monotonic()
        left = max(deadline - began, 0.1)
        asking = asyncio.ensure_future(self.bus.request(subject, request, timeout=left))
        probe: asyncio.Future | None = None
        try:
            while True:
                # Most answers come before the first probe is due: none is sent for them.
                waits = {asking} if probe is None or probe.done() else {asking, probe}
                await asyncio.wait(waits, timeout=PROBE_EVERY, return_when=asyncio.FIRST_COMPLETED)
                if asking.done():
                    return asking.result()
                now = time.monotonic()
                if watch.gone_since(voter, began):
                    raise NoResponders(f"{voter} stopped listening while asked on {subject}")
                if now - max(began, watch.heard.get(voter, 0.0)) > ATTEMPT:
                    raise RequestTimeout(
                        f"{voter} answered neither on {subject} nor to probes for {ATTEMPT:g} s"
                    )
                # A new probe each period even while one is unanswered: a probe sent just
                # before a kill is never answered, the next is refused at once.
                if probe is None or probe.done() or now - watch.started(voter) >= PROBE_EVERY:
                    probe = watch.probe(voter)
        finally:
            asking.cancel()  # given up (or done): nats-py forgets the reply inbox

    def _after(self, watch: _Watch, failed: str) -> int:
        """Which voter to try after `failed`: the one the voters last named leader if it
        is another that still listens, else the next that does (else simply the next)."""
        n = len(self.voters)
        leader = watch.leader
        if leader in self.voters and leader != failed and not watch.is_gone(leader):
            return self.voters.index(leader)
        start = self.voters.index(failed) if failed in self.voters else self._next
        for step in range(1, n + 1):
            if not watch.is_gone(self.voters[(start + step) % n]):
                return start + step
        return start + 1


class _Watch:
    """What the clients on one bus have learnt of the voters: when each last answered a
    probe or was found not listening, and who their status says leads. Shared by every
    `Management` on the bus, so that many requests waiting on one voter send it one probe
    per period, not one each."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.leader: str | None = None
        """The leader a probed voter named last (None: none known)."""
        self.heard: dict[str, float] = {}
        """When each voter last answered a probe."""
        self._gone: dict[str, float] = {}
        """When each voter was last found not listening (cleared when it answers)."""
        self._probes: dict[str, tuple[asyncio.Task[None], float]] = {}
        """Each voter's latest probe and when it was sent."""

    def probe(self, voter: str) -> asyncio.Task[None]:
        """The probe of `voter` sent less than half a period ago, else a new one."""
        probe, sent = self._probes.get(voter, (None, 0.0))
        now = time.monotonic()
        if probe is None or now - sent >= PROBE_EVERY / 2:
            probe = asyncio.ensure_future(self._probe(voter))
            self._probes[voter] = (probe, now)
        return probe

    def started(self, voter: str) -> float:
        """When the latest probe of `voter` was sent (0: never)."""
        return self._probes.get(voter, (None, 0.0))[1]

    async def _probe(self, voter: str) -> None:
        try:
            status = await self.bus.request(
                subjects.consensus_status(voter), ConsensusStatusRequest(), timeout=ATTEMPT
            )
        except NoResponders:
            self.lost(voter)
            return
        except RemoteError:  # it refused (starting, or its status changing): it is there
            status = None
        except BusError:  # no answer in time, or no connection: nothing learnt
            return
        self.heard[voter] = time.monotonic()
        self._gone.pop(voter, None)
        if status is not None:
            self.leader = voter if status.role == "leader" else status.leader

    def lost(self, voter: str) -> None:
        """`voter` does not listen: try the others first for a while."""
        self._gone[voter] = time.monotonic()
        if self.leader == voter:
            self.leader = None

    def gone_since(self, voter: str, since: float) -> bool:
        """`voter` was found not listening after `since`."""
        at = self._gone.get(voter)
        return at is not None and at >= since

    def is_gone(self, voter: str) -> bool:
        """`voter` was found not listening within the last `GONE_FOR` seconds."""
        return self.gone_since(voter, time.monotonic() - GONE_FOR)


_watches: weakref.WeakKeyDictionary[Bus, _Watch] = weakref.WeakKeyDictionary()


def _watch(bus: Bus) -> _Watch:
    """The one `_Watch` of `bus` (made at its first request)."""
    watch = _watches.get(bus)
    if watch is None:
        watch = _watches[bus] = _Watch(bus)
    return watch
