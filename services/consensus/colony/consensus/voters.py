"""The Raft leader keeps the voters: replaces lost ones, and hands leadership to free resources.

Every decision is a pure function of the voters, this node's membership view
(`members`: who is alive, dead or gone, and each node's free resources from
its monitor), when the Raft link last heard each voter (`heard`), and the
clock; `VoterKeeper` only carries them out, one change per look.

Replacing. A voter is lost once membership has said it is dead (or gone) for
`GRACE` seconds without a break *and* this leader has heard nothing from it
on the Raft link for as long: a verdict that arrives from the far side of a
healed partition about a voter that stayed here is not acted on. A lost
voter is removed only if at least `floor(target)` voters (3, or the target's
majority if that is larger) remain: a group of 2 stops at the next loss. At
the floor, a standby node is added first and the lost voter removed as soon
as that is committed. Below the target, the alive non-voter with the most free
resources is added, a returning voter as soon as membership says it is
alive. One change at a time: pysyncobj refuses a second while the first is
uncommitted.

Adding a node: first it must be standing by. A removed voter that restarts
runs its old replica, campaigning at an ever higher term (the voters drop its
frames); added as it is, that term would unseat the leader. So it is told to
`retire` (it drops its replica, journal and database) and added only once it
reports standby. The leader compacts its log (so the node is sent a snapshot
holding today's voters, not the history of every earlier set of them),
appends the change, then tells the node to `join` with the new voters: it
starts a fresh replica at term 0 and follows the leader's frames, which it
is already sent; with a lost voter still in the group the change commits
only once the new one holds the log, and the lost voter is removed at once.
`join` and `retire` are signed with the cluster secret: a node obeys no one
else.

Preferring. The leader hands leadership (Raft TimeoutNow) to a caught-up
voter whose free resources score clearly higher than its own (`margin`), only
once the same voter was preferred at `STEADY_LOOKS` consecutive looks
`LOOK_APART` seconds apart (the figures ride on membership metadata: one
odd sample must not move the leader), and not within `hold` seconds of the
last transfer anywhere in the cluster (the machine records transfers), so
leadership never ping-pongs. The manager lease is released in the same entry
that records the transfer: the next leader takes it without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from colony.consensus.machine import encode_batch
from colony.consensus.manager import ManagerRole
from colony.consensus.raft import NotCommitted, Replica
from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.messages import (
    ConsensusStatusRequest,
    JoinRequest,
    LeadershipTransferred,
    MembersRequest,
    MemberView,
    Proposal,
    Resources,
    RetireRequest,
    VoterChanged,
    new_id,
)
from colony.shared.signing import sign

LOOK_EVERY = 1.0
"""Seconds between looks at membership."""
GRACE = 3.0
"""Seconds a voter must be dead (or gone) in this view, and silent on the Raft link, before
it is removed: long enough for a healed partition's stale verdict to be refuted."""
JOIN_PATIENCE = 10.0
"""Seconds an added voter has to start its replica before it is removed again."""
STANDBY_PATIENCE = 10.0
"""Seconds a node told to retire has to report standby before it is passed over."""
SHUNNED_FOR = 60.0
"""Seconds a node that failed to join is passed over."""
NOT_READY_FOR = 5.0
"""Seconds a node that did not come to standby is passed over (another may be ready)."""
SETTLE = 5.0
"""Seconds a new leader waits before judging whether to hand leadership on."""
HANDOVER = 2.0
"""Seconds a leader handing over leaves the lease free for the next one (then takes it back)."""
STEADY_LOOKS = 3
"""Consecutive looks that must prefer the same voter before leadership moves to it."""
LOOK_APART = 2.0
"""Seconds at least between two looks that count towards `STEADY_LOOKS`."""
COMPACTED = 2
"""Entries in a log that holds nothing but its snapshot's last two (pysyncobj keeps them)."""

log = logging.getLogger("colony.consensus.voters")


@dataclass(frozen=True)
class Preference:
    margin: float = 0.25
    hold: float = 60.0


@dataclass(frozen=True)
class Change:
    """One change of the voters: add or remove `node`, and why."""

    kind: Literal["add", "remove"]
    node: str
    reason: str
    replacing: str | None = None
    """An add at the floor: the lost voter to remove as soon as the add is committed."""


@dataclass(frozen=True)
class Streak:
    """Consecutive looks that preferred `target` for leadership, and when they were taken."""

    target: str | None = None
    looks: tuple[float, ...] = ()


def score(free: Resources, best: Resources) -> float:
    """Free resources as one number: the mean of cpu and memory, each relative to the best."""
    cpu = free.cpu / best.cpu if best.cpu > 0 else 0.0
    memory = free.memory / best.memory if best.memory > 0 else 0.0
    return (max(cpu, 0.0) + max(memory, 0.0)) / 2


def floor(target: int) -> int:
    """The fewest voters a removal may leave: 3 (one more loss is survived), or the target's
    majority if that is more. With a target of 1 the lone voter is never removed anyway."""
    return max(3, target // 2 + 1)


def lost_voters(
    me: str,
    voters: list[str],
    members: Mapping[str, MemberView],
    heard: Mapping[str, float],
    now: float,
    grace: float = GRACE,
) -> list[str]:
    """Voters (never `me`) that membership has declared dead or gone for `grace` seconds,
    and that this node has not heard on the Raft link for as long (`heard`: node -> when
    its last frame arrived, on the clock of `now`)."""
    return [
        v
        for v in voters
        if v != me
        and v in members
        and members[v].status in _GONE
        and members[v].since >= grace
        and now - heard.get(v, -math.inf) >= grace
    ]


def promotion(
    voters: list[str], members: Mapping[str, MemberView], shunned: Collection[str]
) -> str | None:
    """The alive non-voter with the most free resources (None: there is none)."""
    standby = [
        m
        for n, m in members.items()
        if n not in voters and n not in shunned and m.status == "alive"
    ]
    if not standby:
        return None
    best = _best(m.meta.free for m in standby)
    return max(standby, key=lambda m: (score(m.meta.free, best), m.node)).node


def voter_change(
    me: str,
    voters: list[str],
    members: Mapping[str, MemberView],
    heard: Mapping[str, float],
    now: float,
    target: int,
    shunned: Collection[str] = (),
    grace: float = GRACE,
) -> Change | None:
    """The one change of the voters to make now, if any."""
    lost = lost_voters(me, voters, members, heard, now, grace)
    chosen = promotion(voters, members, shunned)
    if lost:
        node = lost[0]
        why = f"membership says it is {members[node].status}, and it is silent"
        if len(voters) - 1 >= floor(target):
            return Change("remove", node, why)
        if chosen is not None:  # removing it now would leave too few: replace it first
            return Change("add", chosen, f"replacing {node} ({why}); most free resources", node)
        return None  # keep it: it counts against the majority, but the group stays whole
    if len(voters) < target and chosen is not None:
        return Change("add", chosen, f"voters were {len(voters)} of {target}; most free resources")
    return None


def transfer(
    me: str, voters: list[str], members: Mapping[str, MemberView], margin: float
) -> tuple[str, str] | None:
    """The alive voter to hand leadership to, and why: one whose free resources score
    more than `margin` above this leader's (None: stay)."""
    alive = [members[v] for v in voters if v in members and members[v].status == "alive"]
    mine = members.get(me)
    if mine is None or len(alive) < 2:
        return None
    best = _best(m.meta.free for m in alive)
    target = max(alive, key=lambda m: (score(m.meta.free, best), m.node))
    mine_score, target_score = score(mine.meta.free, best), score(target.meta.free, best)
    if target.node == me or target_score <= mine_score * (1 + margin):
        return None
    reason = (
        f"more free resources: {target.node} scores {target_score:.2f}, "
        f"{me} {mine_score:.2f} (margin {margin:.0%})"
    )
    return target.node, reason


def steady(streak: Streak, preferred: str | None, now: float, apart: float = LOOK_APART) -> Streak:
    """The streak after a look that preferred `preferred` (None: this leader): a look that
    prefers another voter, or none, starts over; one within `apart` of the last counted
    look changes nothing."""
    if preferred is None:
        return Streak()
    if preferred != streak.target or not streak.looks:
        return Streak(preferred, (now,))
    if now - streak.looks[-1] < apart:
        return streak
    return Streak(preferred, (*streak.looks, now))


class VoterKeeper:
    def __init__(
        self,
        replica: Replica,
        bus: Bus,
        role: ManagerRole,
        target: int,
        preference: Preference = Preference(),
        *,
        secret: bytes,
        heard: Mapping[str, float],
    ) -> None:
        """`secret` signs `join` and `retire`; `heard` is the Raft link's record of when
        each voter's last frame arrived (`Link.heard`, read only)."""
        self.replica = replica
        self.bus = bus
        self.role = role
        self.me = replica.me
        self.target = target
        self.preference = preference
        self.secret = secret
        self.heard = heard
        self._shunned: dict[str, float] = {}
        self._leading_since: float | None = None
        self._streak = Streak()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LOOK_EVERY)
            if not self.replica.is_leader:
                self._leading_since = None
                self._streak = Streak()
                continue
            if self._leading_since is None:
                self._leading_since = time.monotonic()
            try:
                members = await self._members()
                if members is not None:
                    await self.keep(members)
            except (NotCommitted, TimeoutError) as e:
                log.info("voter change not committed", extra={"reason": str(e)})
            except Exception:  # a bug or a refusal must not end the keeping
                log.exception("keeping the voters failed; trying again")

    async def _members(self) -> dict[str, MemberView] | None:
        try:
            reply = await self.bus.request(subjects.members(self.me), MembersRequest(), 1.0)
        except BusError:
            return None  # no membership view now: change nothing
        return {m.node: m for m in reply.members}

    async def keep(self, members: dict[str, MemberView]) -> None:
        """One decision: at most one cluster change or one transfer."""
        voters = self._voters()
        now = time.monotonic()
        shunned = {n for n, until in self._shunned.items() if until > now}
        change = voter_change(self.me, voters, members, self.heard, now, self.target, shunned)
        if change is not None:
            self._streak = Streak()  # the group changes: judge the leadership afresh
            if change.kind == "remove":
                await self._remove(change.node, change.reason)
            else:
                await self._add(change.node, voters, change.reason, change.replacing)
        else:
            await self._retire_strays(voters, members)
            await self._prefer(voters, members)

    async def _remove(self, node: str, reason: str) -> None:
        await self.replica.remove_voter(node)
        log.warning("voter removed", extra={"voter": node, "reason": reason})
        await self._record(VoterChanged(node, "removed", reason))

    async def _add(
        self, node: str, voters: list[str], reason: str, replacing: str | None = None
    ) -> None:
        ready = await self._standing_by(node, voters)
        if ready is None:
            return  # its consensus service is not answering yet: look again next time
        if not ready:
            self._shunned[node] = time.monotonic() + NOT_READY_FOR
            log.info("not adding a voter: it did not come to stand by", extra={"voter": node})
            return
        await self._snapshot_log()
        adding = asyncio.create_task(self.replica.add_voter(node))
        # Told to join only once the change is appended here: from then on this leader
        # sends it frames (so it follows at once rather than campaign) and hears its own.
        for _ in range(int(JOIN_PATIENCE / 0.005)):  # pysyncobj's thread appends it in a tick
            if adding.done() or node in self._voters():
                break
            await asyncio.sleep(0.005)
        if node not in self._voters():
            await adding  # refused (another change pending, or not the leader): raises
            return
        joined = await self._join(node, self._voters())
        if not joined:
            self._shunned[node] = time.monotonic() + SHUNNED_FOR
        await adding
        if not joined:
            await self._remove(node, f"did not start its replica within {JOIN_PATIENCE:g} s")
            return
        log.warning("voter added", extra={"voter": node, "reason": reason})
        if replacing is not None:
            # At once, not at the next look, nor after recording the add: until it is gone
            # every commit waits for the new voter, busy applying the log it was just sent.
            await self._remove(replacing, f"replaced by {node}")
        await self._record(VoterChanged(node, "added", reason))

    async def _snapshot_log(self) -> None:
        """Compact this leader's log into a snapshot now, so that the node about to join is
        sent the snapshot, which holds the voters as they are, not the log's history.
        Replaying that, it would pass through every earlier set of voters: one without a
        voter that was removed and added back since (this leader, perhaps), whose frames
        its transport would then drop as a stranger's, so that it never catches up and
        campaigns instead, term after term."""
        before = self.replica.log_length()
        if before <= COMPACTED:
            return
        self.replica.compact()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if self.replica.log_length() < before:
                return
        log.info("the log was not compacted before a voter joined", extra={"entries": before})

    def _voters(self) -> list[str]:
        """The voters as pysyncobj's thread has them now (it may be changing them)."""
        while True:
            with contextlib.suppress(RuntimeError):  # set changed size during iteration
                return self.replica.voters

    async def _standing_by(self, node: str, voters: list[str]) -> bool | None:
        """Whether `node` stands by, after telling it to retire if it still runs a replica
        (a removed voter back with its old journal), and waiting until it does; None if
        its consensus service does not answer."""
        deadline = time.monotonic() + STANDBY_PATIENCE
        told = False
        while time.monotonic() < deadline:
            try:
                status = await self.bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
            except BusError:  # not answering, or busy dropping its replica
                if not told:
                    return None
                await asyncio.sleep(0.1)
                continue
            if status.role == "standby":
                return True
            if not told:
                await self._retire(node, f"not among the voters {voters}: rejoining afresh")
                told = True
            await asyncio.sleep(0.1)
        return False

    async def _join(self, node: str, voters: list[str]) -> bool:
        deadline = time.monotonic() + JOIN_PATIENCE
        while time.monotonic() < deadline:
            try:
                request = sign(self.secret, JoinRequest(voters=voters))
                await self.bus.request(subjects.consensus_join(node), request, 2.0)
                return True
            except BusError:
                await asyncio.sleep(0.5)
        return False

    async def _retire(self, node: str, reason: str) -> None:
        request = sign(self.secret, RetireRequest(reason=reason, node=node))
        await self.bus.request(subjects.consensus_retire(node), request, 2.0)
        log.warning("told a removed voter to stand by", extra={"voter": node})

    async def _retire_strays(self, voters: list[str], members: dict[str, MemberView]) -> None:
        """A removed voter that comes back still runs its replica: tell it to stand by."""
        for node, member in members.items():
            if node in voters or member.status != "alive":
                continue
            try:
                status = await self.bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
                if status.role != "standby":
                    await self._retire(node, f"not among the voters {voters}")
            except BusError:
                continue

    async def _prefer(self, voters: list[str], members: dict[str, MemberView]) -> None:
        now = time.monotonic()
        choice = transfer(self.me, voters, members, self.preference.margin)
        self._streak = steady(self._streak, choice and choice[0], now)
        last = self.role.applied.transferred_at
        if last is not None and now - last < self.preference.hold:
            return
        if self._leading_since is None or now - self._leading_since < SETTLE:
            return
        if choice is None or len(self._streak.looks) < STEADY_LOOKS:
            return
        target, reason = choice
        status = self.replica.status()
        if status["match_index"].get(target) != status["commit_index"]:
            return  # not caught up: it would lose the election; look again soon
        self._streak = Streak()
        record = LeadershipTransferred(self.me, target, reason)
        # Released first, so the next leader takes the lease at once; and not taken back
        # while the handover is under way.
        if not await self.role.release(reason, also=[record], hold_off=HANDOVER):
            await self._record(record)  # not acting now: record it unfenced
        if await self.replica.transfer_leadership(target, patience=HANDOVER / 2):
            log.warning("leadership handed over", extra={"to": target, "reason": reason})
        else:
            log.warning("leadership transfer refused by Raft", extra={"to": target})

    async def _record(self, command) -> None:
        await self.replica.commit(encode_batch([Proposal(new_id(), command)]), 5.0)


_GONE = ("dead", "left")


def _best(free) -> Resources:
    frees = list(free)
    return Resources(
        cpu=max((f.cpu for f in frees), default=0.0),
        memory=max((f.memory for f in frees), default=0),
    )
