"""The change stream's replicas stay on live voters.

The change stream (`COLONY_CHANGES`, three replicas) is kept by JetStream's own Raft
groups, on servers its meta leader picks among every node's nats-server, voter or not.
Left there, losing two non-voter nodes for good could stop the stream while the
management database (on the voters) is fine. The Raft leader runs a `StreamKeeper`
beside the relay that keeps the replicas on voters, one step per look:

Placing. Every node's nats-server is named by its node id and tagged with it
(`natsd.node_tag`). The stream's placement excludes each node known not to vote (every
node membership knows of, and any server holding a replica): "!node:<id>". JetStream
itself moves a replica the placement rules out: it adds one on an allowed server, lets
it catch up, then drops the old one, so the stream never has fewer current replicas
than before. When a lost voter is replaced, the placement follows: the old voter is
now excluded and its replica moves to a voter.

Rescuing. A stream that lost a quorum of its replicas (two non-voters lost before
they could be moved off) has no leader: it can neither store nor be moved. Once it has
been leaderless for `LEADERLESS_GRACE` seconds, the keeper removes, one per look, a
replica that is not current and not on a voter; the JetStream meta leader places a
replacement where the placement allows, and the replicas left elect a leader. A
voter's replica is never removed: a lost voter is replaced first (by the voter
keeper), then excluded like any other non-voter.

A single-replica stream (a test's standalone server) has no quorum to keep and is
left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from colony.shared import natsd, subjects
from colony.shared.bus import (
    Bus,
    BusError,
    NoResponders,
    NotFound,
    RequestTimeout,
    StreamPlacement,
)
from colony.shared.messages import MembersRequest

LOOK_EVERY = 1.0
"""Seconds between looks at the stream."""
LEADERLESS_GRACE = 3.0
"""Seconds a stream must be seen without a leader before its lost replicas are removed
(the JetStream meta leader only describes it after some 10 s without one anyway)."""

log = logging.getLogger("colony.consensus.stream")


def placement(voters: Collection[str], nodes: Collection[str]) -> tuple[str, ...]:
    """The placement tags that keep replicas off every node in `nodes` that is not a voter."""
    return tuple(sorted(f"!{natsd.node_tag(node)}" for node in set(nodes) - set(voters)))


@dataclass(frozen=True)
class Step:
    """One change to the stream: set its placement `tags`, or remove its replica on `peer`."""

    kind: Literal["place", "remove"]
    reason: str
    tags: tuple[str, ...] = ()
    peer: str = ""


def next_step(
    stream: StreamPlacement,
    voters: Collection[str],
    nodes: Collection[str] | None,
    leaderless_for: float,
) -> Step | None:
    """What to do next, if anything. `nodes`: every node membership knows of (None: no
    view now); `leaderless_for`: seconds the stream has been seen without a leader."""
    if stream.replicas < 2:
        return None
    peers = [peer.name for peer in stream.peers if peer.name]
    moving = len(stream.peers) > stream.replicas  # JetStream is moving a replica: let it finish
    if nodes is not None and not moving:
        wanted = placement(voters, {*nodes, *peers})
        if wanted != stream.tags:
            strays = sorted(set(peers) - set(voters))
            why = f"replicas on non-voters {strays}" if strays else "the non-voters changed"
            return Step("place", f"keep replicas on the voters: {why}", tags=wanted)
    if stream.leader is None and leaderless_for >= LEADERLESS_GRACE:
        for peer in stream.peers:
            if peer.name and not peer.current and peer.name not in voters:
                return Step(
                    "remove",
                    f"the stream has had no leader for {leaderless_for:.0f} s, and {peer.name}"
                    " (not a voter) is not current",
                    peer=peer.name,
                )
    return None


async def placement_of(bus: Bus, stream: str) -> list[str]:
    """The stream's placement tags now (none if there is no such stream yet): what whoever
    re-creates the stream must keep."""
    try:
        return list((await bus.stream_placement(stream)).tags)
    except NotFound:
        return []


class StreamKeeper:
    """Run by every voter; acts while `is_leader()`. `voters()` reads the current voters."""

    def __init__(
        self,
        bus: Bus,
        me: str,
        is_leader: Callable[[], bool],
        voters: Callable[[], Collection[str]],
        stream: str = subjects.CHANGES_STREAM,
    ) -> None:
        self.bus = bus
        self.me = me
        self.is_leader = is_leader
        self.voters = voters
        self.stream = stream
        self._leaderless_since: float | None = None
        self._said = ""
        """The last failure logged: a failure that repeats at every look is logged once."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LOOK_EVERY)
            if not self.is_leader():
                self._leaderless_since = None
                continue
            try:
                await self.keep()
            except BusError as e:
                self._say(f"could not keep the change stream on the voters: {e}")
            except Exception:  # a bug must not end the keeping
                log.exception("keeping the change stream on the voters failed; trying again")

    async def keep(self) -> Step | None:
        """One look: at most one step. Returns the step taken."""
        try:
            stream = await self.bus.stream_placement(self.stream)
        except (NotFound, RequestTimeout, NoResponders):
            return None  # not made yet, or leaderless and not yet described: look again
        now = time.monotonic()
        if stream.leader is not None:
            self._leaderless_since = None
        elif self._leaderless_since is None:
            self._leaderless_since = now
        try:
            voters = set(self.voters())
        except RuntimeError:  # pysyncobj's thread is changing them: next look
            return None
        leaderless_for = 0.0 if self._leaderless_since is None else now - self._leaderless_since
        step = next_step(stream, voters, await self._nodes(), leaderless_for)
        if step is None:
            self._said = ""
            return None
        where = {"stream": self.stream, "reason": step.reason, "voters": sorted(voters)}
        if step.kind == "remove":
            await self.bus.remove_stream_peer(self.stream, step.peer)
            log.warning(
                "removed a lost replica of the change stream", extra={**where, "peer": step.peer}
            )
        else:
            what = "placed the change stream"
            try:
                await self.bus.place_stream(self.stream, list(step.tags))
            except RequestTimeout:  # leaderless: recorded, but no stream leader to confirm it
                what += " (unconfirmed: it has no leader)"
            log.info(what, extra={**where, "tags": step.tags})
        self._said = ""
        return step

    async def _nodes(self) -> set[str] | None:
        """Every node this node's membership knows of, whatever its status; None if it does
        not answer (then the placement stays as it is)."""
        try:
            reply = await self.bus.request(subjects.members(self.me), MembersRequest(), 1.0)
        except BusError:
            return None
        return {member.node for member in reply.members}

    def _say(self, failure: str) -> None:
        if failure != self._said:
            log.warning(failure)
            self._said = failure
