"""A client of the management database: proposals and reads through any voter, retried.

Any voter takes a proposal (a follower hands it to the leader). Once a request has
waited `PROBE_EVERY`, the voter asked is probed (its status subject) every period:
one killed mid-request has no subscriptions left (NATS drops them with its
connection), so a probe is refused at once (no responders) and the request goes at
once to the next voter, the one the voters last named leader if it still listens. A
voter that answers probes is waited for however slow its commit (a retry elsewhere
would only be handed back to it), up to `PATIENCE`; one that answers neither the
request nor a probe for `ATTEMPT` is given up (hung, or cut off from NATS). While the
group has no leader the voters refuse at once (503), and the client tries again after
a short backoff until its deadline. Every retry keeps the proposals' ids, so one of a
proposal that did commit is answered with its first outcome, never applied twice. A
refusal for good (400 bad input, 403, 404) is not retried.
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
PATIENCE = 6.0
"""Seconds a voter that answers probes is waited for: past its own limit (consensus'
propose_timeout, 5 s by default), after which it answers itself; no answer by then was
lost (a reconnection of NATS), so the request is asked again."""
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
        """Ask `voter`, and wait for its answer while `watch` does not give it up."""
        left = max(deadline - time.monotonic(), 0.1)
        waiting = watch.enter(voter, subject.name)
        cancelled = False
        try:
            return await self.bus.request(subject, request, timeout=left)
        except asyncio.CancelledError:
            cancelled = True
            if waiting.why is None or waiting.task.uncancel() > 0:
                raise  # cancelled by someone else (too)
            raise waiting.why from None
        finally:
            watch.leave(waiting)
            if waiting.why is not None and not cancelled:
                # Given up as the answer came: nats-py's wait_for (Python 3.11) kept the
                # answer and dropped the cancellation. Take it back, or the task would
                # count one pending (and a later asyncio.timeout in it would misread it).
                waiting.task.uncancel()

    def _after(self, watch: _Watch, failed: str) -> int:
        """Which voter to try after `failed`: the one the voters last named leader if it
        is another that still listens, else the next that does (else simply the next)."""
        n = len(self.voters)
        leader = watch.leader
        if leader in self.voters and leader != failed and not watch.is_gone(leader):
            return self.voters.index(leader)
        start = self._next  # `failed`'s place
        for step in range(1, n + 1):
            if not watch.is_gone(self.voters[(start + step) % n]):
                return start + step
        return start + 1


@dataclass(eq=False, slots=True)
class _Waiting:
    """A request waiting on `voter`'s answer, in `task`; `why`: the error it was given up
    with (its task cancelled)."""

    voter: str
    subject: str
    task: asyncio.Task
    began: float
    why: BusError | None = None


class _Watch:
    """Watches over the voters that requests on one bus wait on, for every `Management` on
    the bus (one probe a period for all the requests waiting on a voter, not one each),
    and gives up a request (cancels its task, `why` set) as the module says. A request
    answered within a period costs a set entry: no timer, no probe."""

    def __init__(self, bus: Bus) -> None:
        self._bus = weakref.ref(bus)
        """Weak: `_watches` keeps a watch as long as its bus, no longer."""
        self.leader: str | None = None
        """The leader a probed voter named last (None: none known)."""
        self.heard: dict[str, float] = {}
        """When each voter last answered a probe."""
        self._gone: dict[str, float] = {}
        """When each voter was last found not listening (cleared when it answers)."""
        self._waiting: set[_Waiting] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._probes: set[asyncio.Task[None]] = set()

    def enter(self, voter: str, subject: str) -> _Waiting:
        """The current task waits on `voter` from now on."""
        task = asyncio.current_task()
        assert task is not None  # requests are made from tasks
        waiting = _Waiting(voter, subject, task, time.monotonic())
        self._waiting.add(waiting)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return waiting

    def leave(self, waiting: _Waiting) -> None:
        self._waiting.discard(waiting)

    async def _sweep(self) -> None:
        """Each period while requests wait: probe the voters they waited on a period or
        more (a new probe even while one is unanswered: one sent just before a kill never
        is, the next is refused at once), and give up those to give up."""
        try:
            while self._waiting:
                await asyncio.sleep(PROBE_EVERY)
                now = time.monotonic()
                for voter in {w.voter for w in self._waiting if now - w.began >= PROBE_EVERY}:
                    probe = asyncio.ensure_future(self._probe(voter))
                    self._probes.add(probe)
                    probe.add_done_callback(self._probes.discard)
                self._judge()
        finally:
            self._sweeper = None

    def _judge(self) -> None:
        now = time.monotonic()
        for waiting in self._waiting:
            voter, subject = waiting.voter, waiting.subject
            if waiting.why is not None:
                continue
            if self.gone_since(voter, waiting.began):
                waiting.why = NoResponders(f"{voter} stopped listening while asked on {subject}")
            elif now - max(waiting.began, self.heard.get(voter, 0.0)) > ATTEMPT:
                waiting.why = RequestTimeout(
                    f"{voter} answered neither on {subject} nor probes for {ATTEMPT:g} s"
                )
            elif now - waiting.began > PATIENCE:
                waiting.why = RequestTimeout(
                    f"{voter} answers probes but not on {subject} within {PATIENCE:g} s"
                )
            else:
                continue
            waiting.task.cancel()

    async def _probe(self, voter: str) -> None:
        bus = self._bus()
        if bus is None:  # nobody can be waiting on it any more
            return
        try:
            status = await bus.request(
                subjects.consensus_status(voter), ConsensusStatusRequest(), timeout=ATTEMPT
            )
        except NoResponders:
            self.lost(voter)
            self._judge()  # at once, not at the next period
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
