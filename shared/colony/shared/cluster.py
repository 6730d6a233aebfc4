"""One client for the cluster: who votes, who leads, who manages, and what runs where.

Every caller (the CLI, the tests, the benchmarks) asks the same questions the
same way: each voter is asked for its consensus status, and a voter that does
not answer is reported unreachable, never raised; the Raft leader is the one
the answering voters of its group agree on, in its term; the manager is the
one node acting on the lease, at the epoch every answering voter of its group
agrees on. Waits poll those answers until a deadline and then say what they
last saw.

    cluster = Cluster(bus, ["node-1-ab12", "node-2-cd34", "node-3-ef56"])
    leader = await cluster.wait_leader(10)
    manager = await cluster.wait_manager(30, above_epoch=3, node="node-2-cd34")
    for service in await cluster.services("consensus"):
        print(service.node_name, service.endpoints)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.messages import ConsensusStatus, ConsensusStatusRequest, LeaseView

T = TypeVar("T")

ASK = 1.0
"""Seconds a voter may take to answer for its status before it counts as unreachable."""
DISCOVERY_WINDOW = 0.3
"""Seconds service discovery collects answers (NATS micro replies have no count)."""
EVERY = 0.02
"""Seconds between two looks while waiting."""


class WaitTimeout(TimeoutError):
    """The cluster did not reach what a wait asked for in time: the message says what it
    last saw, and `last` holds those statuses."""

    def __init__(self, message: str, last: Statuses) -> None:
        super().__init__(message)
        self.last = last


@dataclass(frozen=True, slots=True)
class Leader:
    """The Raft leader its group agrees on, with its own view of the group."""

    node: str
    term: int
    status: ConsensusStatus

    @property
    def voters(self) -> list[str]:
        """Every voter of the group, as the leader knows it (itself first)."""
        return [v.node for v in self.status.voters]

    @property
    def in_step(self) -> list[str]:
        """The voters connected to the leader and caught up with its commit index."""
        top = self.node
        return [v.node for v in self.status.voters if v.node == top or (v.connected and v.lag == 0)]


@dataclass(frozen=True, slots=True)
class Manager:
    """The node acting as manager, at the lease epoch its group agrees on."""

    node: str
    epoch: int
    lease: LeaseView
    """The lease as the acting node holds it (ttl, ages on its own clock)."""
    status: ConsensusStatus
    """The acting node's consensus status."""


@dataclass(frozen=True, slots=True)
class Statuses:
    """Each asked node's consensus status at one moment; None: it did not answer."""

    of: dict[str, ConsensusStatus | None]

    @property
    def answered(self) -> dict[str, ConsensusStatus]:
        return {node: s for node, s in self.of.items() if s is not None}

    @property
    def unreachable(self) -> list[str]:
        return [node for node, s in self.of.items() if s is None]

    def leader(self) -> Leader | None:
        """The node that leads and every answering, running voter of its group follows,
        in its term (a voter that is silent is not asked to agree)."""
        claims = [s for s in self.answered.values() if s.role == "leader" and not s.stopped]
        if not claims:
            return None
        top = max(claims, key=lambda s: s.term)  # a deposed leader may not know it yet
        for node in (v.node for v in top.voters if v.node != top.node):
            view = self.of.get(node)
            if view is None or not _runs(view):
                continue
            if (view.leader, view.term) != (top.node, top.term):
                return None
        return Leader(top.node, top.term, top)

    def manager(self) -> Manager | None:
        """The one node acting as manager, once every answering, running voter of its
        group holds the same lease (holder and epoch)."""
        acting = [
            s
            for s in self.answered.values()
            if s.acting and s.manager is not None and s.manager.holder == s.node
        ]
        if len(acting) != 1:
            return None
        [chief] = acting
        lease = chief.manager
        assert lease is not None  # checked just above
        for node in (v.node for v in chief.voters if v.node != chief.node):
            view = self.of.get(node)
            if view is None or not _runs(view) or view.manager is None:
                continue
            if (view.manager.holder, view.manager.epoch) != (chief.node, lease.epoch):
                return None
        return Manager(chief.node, lease.epoch, lease, chief)

    def settled(self, voters: int | None = None) -> Leader | None:
        """The leader once every voter of its group (`voters` of them, if given) is
        connected, caught up, and answers following it."""
        top = self.leader()
        if top is None or (voters is not None and len(top.voters) != voters):
            return None
        if len(top.in_step) != len(top.voters):
            return None
        following = all(self.of.get(n) is not None for n in top.voters)
        return top if following else None

    def describe(self) -> str:
        """One line for people: each node's role, term, and lease as it answered."""
        return "; ".join(_describe(node, s) for node, s in self.of.items()) or "no voters asked"


def _runs(view: ConsensusStatus) -> bool:
    """The node runs a replica (neither standing by nor stopped for a conflict)."""
    return view.role != "standby" and not view.stopped


def _describe(node: str, s: ConsensusStatus | None) -> str:
    if s is None:
        return f"{node} unreachable"
    if s.stopped:
        return f"{node} stopped ({s.stopped})"
    if s.role == "standby":
        return f"{node} standby"
    said = f"{node} {s.role} term {s.term}"
    if s.role != "leader":
        said += f" (leader {s.leader or 'unknown'})"
    if s.manager is not None:
        lease = s.manager
        said += f", lease {lease.holder or 'free'} epoch {lease.epoch}"
        said += " acting" if s.acting else ""
    return said


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """A Colony service answering NATS micro discovery, and the node it runs on."""

    service: str
    """Its short name (monitor, membership, consensus...)."""
    node: str
    node_name: str
    id: str
    """The micro instance id (a new one at every start)."""
    version: str
    endpoints: tuple[str, ...]
    """The subjects it serves."""


class _Endpoint(msgspec.Struct):
    subject: str = ""


class _MicroInfo(msgspec.Struct):
    """The part of a NATS micro INFO reply Colony reads."""

    name: str
    id: str = ""
    version: str = ""
    metadata: dict[str, str] | None = None
    endpoints: list[_Endpoint] | None = None


def service_info(data: bytes) -> ServiceInfo | None:
    """A micro INFO reply as a Colony service, or None if it is not one of Colony's
    (anything else may speak micro on the same servers)."""
    try:
        info = msgspec.json.decode(data, type=_MicroInfo)
    except msgspec.DecodeError:
        return None
    node = (info.metadata or {}).get("node", "")
    if not info.name.startswith(subjects.SERVICE_PREFIX) or not node:
        return None
    return ServiceInfo(
        service=info.name.removeprefix(subjects.SERVICE_PREFIX),
        node=node,
        node_name=(info.metadata or {}).get("node_name") or node,
        id=info.id,
        version=info.version,
        endpoints=tuple(e.subject for e in info.endpoints or ()),
    )


class Cluster:
    """Asks the voters over `bus`: `voters` (node ids), or, when None, every node
    whose consensus service answers discovery (voters and standby nodes alike)."""

    def __init__(self, bus: Bus, voters: Iterable[str] | None = None, ask: float = ASK) -> None:
        self.bus = bus
        self.voters = list(voters) if voters is not None else None
        self.ask = ask

    # --- one look ----------------------------------------------------------------------

    async def services(
        self, service: str | None = None, window: float = DISCOVERY_WINDOW
    ) -> list[ServiceInfo]:
        """Every Colony service (or every `service`, e.g. "consensus") that answers
        discovery within `window` seconds, by node then name; [] if the bus cannot ask."""
        name = None if service is None else f"{subjects.SERVICE_PREFIX}{service}"
        try:
            replies = await self.bus.gather(subjects.service_info(name), window)
        except BusError:
            return []
        found = {(i.node, i.service, i.id): i for i in map(service_info, replies) if i}
        return [found[key] for key in sorted(found)]

    async def nodes(self) -> list[str]:
        """The nodes to ask: the voters given, else those running consensus."""
        if self.voters is not None:
            return self.voters
        return sorted({s.node for s in await self.services("consensus")})

    async def status(self, node: str) -> ConsensusStatus | None:
        """`node`'s consensus status, or None if it does not answer within `ask` seconds."""
        try:
            return await self.bus.request(
                subjects.consensus_status(node), ConsensusStatusRequest(), timeout=self.ask
            )
        except BusError:
            return None

    async def statuses(self, among: Iterable[str] | None = None) -> Statuses:
        """Every node's status (of `among` if given), asked at once."""
        nodes = list(among) if among is not None else await self.nodes()
        answers = await asyncio.gather(*(self.status(n) for n in nodes))
        return Statuses(dict(zip(nodes, answers, strict=True)))

    async def leader(self, among: Iterable[str] | None = None) -> Leader | None:
        return (await self.statuses(among)).leader()

    async def manager(self, among: Iterable[str] | None = None) -> Manager | None:
        return (await self.statuses(among)).manager()

    # --- waits -------------------------------------------------------------------------

    async def until(
        self,
        check: Callable[[Statuses], T | Awaitable[T | None] | None],
        timeout: float,
        what: str,
        among: Iterable[str] | None = None,
        every: float = EVERY,
    ) -> T:
        """Look at the statuses until `check` returns something truthy, and return it;
        WaitTimeout after `timeout` seconds, saying `what` and what was last seen."""
        nodes = list(among) if among is not None else None
        deadline = time.monotonic() + timeout
        while True:
            last = await self.statuses(nodes)
            found = check(last)
            if isinstance(found, Awaitable):
                found = await found
            if found:
                return found
            if time.monotonic() + every >= deadline:
                raise WaitTimeout(
                    f"no {what} within {timeout:g} s; last seen: {last.describe()}", last
                )
            await asyncio.sleep(every)

    async def wait_leader(
        self, timeout: float, among: Iterable[str] | None = None, above_term: int = 0
    ) -> Leader:
        """Until the voters (of `among`) agree on a leader, in a term above `above_term`."""
        what = "Raft leader" + (f" in a term above {above_term}" if above_term else "")
        return await self.until(
            lambda s: (top := s.leader()) and top.term > above_term and top,
            timeout,
            what,
            among,
        )

    async def wait_manager(
        self,
        timeout: float,
        above_epoch: int = 0,
        node: str | None = None,
        among: Iterable[str] | None = None,
    ) -> Manager:
        """Until one node acts as manager at an epoch above `above_epoch` (and it is
        `node`, if given), its group agreeing on the lease."""
        what = f"manager{f' {node}' if node else ''} acting at an epoch above {above_epoch}"

        def found(s: Statuses) -> Manager | None:
            chief = s.manager()
            if chief is None or chief.epoch <= above_epoch:
                return None
            return chief if node is None or chief.node == node else None

        return await self.until(found, timeout, what, among)

    async def wait_settled(
        self, timeout: float, voters: int | None = None, among: Iterable[str] | None = None
    ) -> Leader:
        """Until the leader's group (of `voters` voters, if given) is all connected,
        caught up, and following it."""
        what = f"settled group of {voters} voters" if voters else "settled Raft group"
        return await self.until(lambda s: s.settled(voters), timeout, what, among)
