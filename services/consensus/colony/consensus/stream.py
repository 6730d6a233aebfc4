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
they could be moved off, or a voter's server lost while a replica was being moved off
another) has no leader: it can neither store nor be moved, and JetStream refuses to
change its placement ("stream move already in progress"). Once it has been leaderless
for `LEADERLESS_GRACE` seconds, the keeper removes, one per look, a replica that is not
current and not on a voter: the JetStream meta leader drops it from the stream's Raft
group (the replicas left then need a smaller quorum) and places a replacement where
the placement allows. It refuses ("peer remap failed", 503) when no allowed server is
free for a replacement: in a move, a placement that predates the latest voter change.
A step that fails is tried again with a growing backoff, and meanwhile the others are
tried (the other lost replica). A voter's replica is never removed: a lost voter is
replaced first (by the voter keeper), then excluded like any other non-voter. A move
that has not finished after `MOVE_GRACE` seconds while the replica it would drop is
lost (its server gone) has that replica removed the same way: JetStream may wait on it
for good.

Re-creating. Removals may not be enough: the replicas left may each know a different
Raft group (one added by a move that was not yet committed when the leader died), and
none gathers a quorum. When the stream has been leaderless for `RECREATE_GRACE`
seconds and enough voters are alive to hold every replica, the keeper deletes the
stream and makes it again, empty, on the voters (the meta leader does both without a
stream leader). The change log in the management database is the source of truth: the
relay sees the stream went back (or is empty) and sends again every change the
database holds: every one not relayed yet (the database keeps those) and the newest
`change_log_kept` at least; only older history is gone. Should the making fail, the
relay makes the stream (placed anywhere) and the keeper places it.

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
RECREATE_GRACE = 30.0
"""Seconds a stream must be seen without a leader before it is re-created: removals and
a new election had their chance; a re-created stream loses what the change log pruned."""
MOVE_GRACE = 10.0
"""Seconds a move may take before a lost replica it would drop is removed: the move of a
replica whose server is lost finishes in seconds on a stream without consumers, but one
with followers' (ordered, ephemeral) consumers was seen to stay mid-move for good."""
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
"""Seconds before a failed step is tried again: doubling from the first to the max."""

log = logging.getLogger("colony.consensus.stream")


def placement(voters: Collection[str], nodes: Collection[str]) -> tuple[str, ...]:
    """The placement tags that keep replicas off every node in `nodes` that is not a voter."""
    return tuple(sorted(f"!{natsd.node_tag(node)}" for node in set(nodes) - set(voters)))


@dataclass(frozen=True)
class Step:
    """One change to the stream: set its placement `tags`, remove its replica on `peer`, or
    re-create it (empty, placed by `tags`)."""

    kind: Literal["place", "remove", "recreate"]
    reason: str
    tags: tuple[str, ...] = ()
    peer: str = ""

    @property
    def key(self) -> str:
        """What names the step among those backing off after a failure (a placement with
        other tags is another step: tried at once)."""
        if self.kind == "remove":
            return f"remove {self.peer}"
        return f"{self.kind} {','.join(self.tags)}"

    @property
    def action(self) -> str:
        """The step as a log line says it."""
        if self.kind == "remove":
            return f"remove {self.peer}'s replica of the change stream"
        if self.kind == "recreate":
            return f"re-create the change stream, empty, placed by {list(self.tags)}"
        return f"place the change stream by {list(self.tags)}"


def next_step(
    stream: StreamPlacement,
    voters: Collection[str],
    nodes: Collection[str] | None,
    leaderless_for: float,
    alive: Collection[str] | None = None,
    waiting: Collection[str] = (),
    moving_for: float = 0.0,
) -> Step | None:
    """What to do next, if anything. `nodes`: every node membership knows of, `alive`: those
    it sees alive (None: no view now); `leaderless_for`: seconds the stream has been seen
    without a leader, `moving_for` with more replicas than it should have (a move);
    `waiting`: the keys of steps that failed and wait to be tried again."""
    if stream.replicas < 2:
        return None
    peers = [peer.name for peer in stream.peers if peer.name]
    moving = len(stream.peers) > stream.replicas  # JetStream is moving a replica: let it finish
    wanted = None if nodes is None else placement(voters, {*nodes, *peers})
    steps: list[Step] = []
    if wanted is not None and wanted != stream.tags and not moving:
        strays = sorted(set(peers) - set(voters))
        why = f"replicas on non-voters {strays}" if strays else "the non-voters changed"
        steps.append(Step("place", f"keep replicas on the voters: {why}", tags=wanted))
    leaderless = stream.leader is None and leaderless_for >= LEADERLESS_GRACE
    stalled = stream.leader is not None and moving and moving_for >= MOVE_GRACE
    if leaderless:
        since = f"the stream has had no leader for {leaderless_for:.0f} s"
        hosts = set(voters) & set(alive or ())  # the servers `wanted` allows that are up
        can_hold = len(hosts) >= stream.replicas
        if wanted is not None and leaderless_for >= RECREATE_GRACE and can_hold:
            why = f"the voters alive ({', '.join(sorted(hosts))}) can hold its replicas"
            steps.append(Step("recreate", f"{since}, and {why}", tags=wanted))
    else:
        since = f"a move of a replica has not finished for {moving_for:.0f} s"
    if leaderless or stalled:
        for peer in stream.peers:
            if peer.name and not peer.current and peer.name not in voters:
                why = f"{peer.name} (not a voter) is not current"
                steps.append(Step("remove", f"{since}, and {why}", peer=peer.name))
    return next((step for step in steps if step.key not in waiting), None)


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
        self._moving_since: float | None = None
        self._failed: dict[str, tuple[int, float]] = {}
        """Each step that failed (by its key): how many times in a row, and when it may be
        tried again."""
        self._said = ""
        """The last failure logged: a failure that repeats at every look is logged once."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LOOK_EVERY)
            if not self.is_leader():
                self._leaderless_since = self._moving_since = None
                self._failed.clear()
                continue
            try:
                await self.keep()
            except BusError as e:
                self._say(f"could not keep the change stream on the voters: {e}")
            except Exception:  # a bug must not end the keeping
                log.exception("keeping the change stream on the voters failed; trying again")

    async def keep(self) -> Step | None:
        """One look: at most one step. Returns the step taken, if it succeeded."""
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
        if len(stream.peers) <= stream.replicas:
            self._moving_since = None
        elif self._moving_since is None:
            self._moving_since = now
        leaderless_for = 0.0 if self._leaderless_since is None else now - self._leaderless_since
        moving_for = 0.0 if self._moving_since is None else now - self._moving_since
        members = await self._members()
        waiting = {key for key, (_, retry_at) in self._failed.items() if retry_at > now}
        step = next_step(
            stream,
            voters,
            None if members is None else set(members),
            leaderless_for,
            alive=None if members is None else {n for n, s in members.items() if s == "alive"},
            waiting=waiting,
            moving_for=moving_for,
        )
        if step is None:
            if not waiting:  # nothing to do, and no failed step waits: the counts start over
                self._failed.clear()
            self._said = ""
            return None
        where = {"stream": self.stream, "reason": step.reason, "voters": sorted(voters)}
        try:
            await self._take(step, where)
        except BusError as e:
            failures = self._failed.get(step.key, (0, 0.0))[0] + 1
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            self._failed[step.key] = (failures, now + delay)
            log.warning(
                f"could not {step.action}: {e}; trying again in {delay:g} s, and meanwhile"
                " any other step",
                extra={**where, "failures": failures},
            )
            return None
        self._failed.pop(step.key, None)
        self._said = ""
        return step

    async def _take(self, step: Step, where: dict[str, object]) -> None:
        if step.kind == "remove":
            log.info(f"removing {step.peer}'s replica of the change stream", extra=where)
            await self.bus.remove_stream_peer(self.stream, step.peer)
            log.warning(
                f"removed {step.peer}'s replica of the change stream; the JetStream meta leader"
                " places a replacement where the placement allows",
                extra={**where, "peer": step.peer},
            )
        elif step.kind == "recreate":
            log.error(
                "re-creating the change stream, empty, on the voters: its replicas lost their"
                " quorum for good; the relay sends the change log again",
                extra={**where, "tags": step.tags},
            )
            await self.bus.recreate_stream(self.stream, list(step.tags))
            self._leaderless_since = None
            log.warning("re-created the change stream", extra={**where, "tags": step.tags})
        else:
            # A RequestTimeout (no stream leader to confirm it) counts as a failure: the meta
            # leader may have recorded it, but if the tags did not change it is tried again
            # only after a backoff, and meanwhile the rescue steps get their looks.
            await self.bus.place_stream(self.stream, list(step.tags))
            log.info("placed the change stream", extra={**where, "tags": step.tags})

    async def _members(self) -> dict[str, str] | None:
        """Every node this node's membership knows of, whatever its status, with its status;
        None if it does not answer (then the placement stays as it is)."""
        try:
            reply = await self.bus.request(subjects.members(self.me), MembersRequest(), 1.0)
        except BusError:
            return None
        return {member.node: member.status for member in reply.members}

    def _say(self, failure: str) -> None:
        if failure != self._said:
            log.warning(failure)
            self._said = failure
