"""The Raft leader keeps the voters: replaces lost ones, and hands leadership to free resources.

Both decisions read this node's membership view (`members`): who is alive,
dead or gone, and each node's free resources (declared capacity - use, from
its monitor, carried with its membership).

Replacing: a voter that membership declares dead (or that left) is removed
from the Raft cluster, then the healthy standby node with the most free
resources is added, and only once that change is committed is it told to
start its replica (`consensus.join`): a voter must be in the cluster before
it serves, or its first election would split the vote. One change at a
time, removal first, so a majority of the current voters is always up.

Preferring: the leader hands leadership (Raft TimeoutNow) to a caught-up
voter whose free resources score clearly higher than its own (`margin`),
and not within `hold` seconds of the last transfer anywhere in the cluster
(the machine records transfers), so leadership never ping-pongs. The
manager lease is released in the same entry that records the transfer: the
next leader takes it without waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

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

LOOK_EVERY = 1.0
"""Seconds between looks at membership."""
JOIN_PATIENCE = 10.0
"""Seconds an added voter has to start its replica before it is removed again."""
SHUNNED_FOR = 60.0
"""Seconds a node that failed to join is passed over."""
SETTLE = 5.0
"""Seconds a new leader waits before judging whether to hand leadership on."""
HANDOVER = 2.0
"""Seconds a leader handing over leaves the lease free for the next one (then takes it back)."""

log = logging.getLogger("colony.consensus.voters")


@dataclass(frozen=True)
class Preference:
    margin: float = 0.25
    hold: float = 60.0


def score(free: Resources, best: Resources) -> float:
    """Free resources as one number: the mean of cpu and memory, each relative to the best."""
    cpu = free.cpu / best.cpu if best.cpu > 0 else 0.0
    memory = free.memory / best.memory if best.memory > 0 else 0.0
    return (max(cpu, 0.0) + max(memory, 0.0)) / 2


class VoterKeeper:
    def __init__(
        self,
        replica: Replica,
        bus: Bus,
        role: ManagerRole,
        target: int,
        preference: Preference = Preference(),
    ) -> None:
        self.replica = replica
        self.bus = bus
        self.role = role
        self.me = replica.me
        self.target = target
        self.preference = preference
        self._shunned: dict[str, float] = {}
        self._leading_since: float | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(LOOK_EVERY)
            if not self.replica.is_leader:
                self._leading_since = None
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
        voters = self.replica.voters
        if lost := lost_voter(self.me, voters, members):
            await self._remove(lost, f"membership says it is {members[lost].status}")
        elif len(voters) < self.target:
            await self._promote(voters, members)
        else:
            await self._retire_strays(voters, members)
            await self._prefer(voters, members)

    async def _remove(self, node: str, reason: str) -> None:
        await self.replica.remove_voter(node)
        log.warning("voter removed", extra={"node": node, "reason": reason})
        await self._record(VoterChanged(node, "removed", reason))

    async def _promote(self, voters: list[str], members: dict[str, MemberView]) -> None:
        now = time.monotonic()
        shunned = {n for n, until in self._shunned.items() if until > now}
        chosen = promotion(voters, members, shunned)
        if chosen is None:
            return
        await self.replica.add_voter(chosen)
        voters = [*voters, chosen]
        if not await self._join(chosen, voters):
            self._shunned[chosen] = time.monotonic() + SHUNNED_FOR
            await self._remove(chosen, f"did not start its replica within {JOIN_PATIENCE:g} s")
            return
        reason = f"voters were {len(voters) - 1} of {self.target}; most free resources"
        log.warning("voter added", extra={"node": chosen, "reason": reason})
        await self._record(VoterChanged(chosen, "added", reason))

    async def _join(self, node: str, voters: list[str]) -> bool:
        deadline = time.monotonic() + JOIN_PATIENCE
        while time.monotonic() < deadline:
            try:
                await self.bus.request(
                    subjects.consensus_join(node), JoinRequest(voters=voters), 2.0
                )
                return True
            except BusError:
                await asyncio.sleep(0.5)
        return False

    async def _retire_strays(self, voters: list[str], members: dict[str, MemberView]) -> None:
        """A removed voter that comes back still runs its replica: tell it to stand by."""
        for node, member in members.items():
            if node in voters or member.status != "alive":
                continue
            try:
                status = await self.bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
            except BusError:
                continue
            if status.role != "standby":
                await self.bus.request(
                    subjects.consensus_retire(node),
                    RetireRequest(reason=f"not among the voters {voters}"),
                    2.0,
                )
                log.warning("told a removed voter to stand by", extra={"node": node})

    async def _prefer(self, voters: list[str], members: dict[str, MemberView]) -> None:
        now = time.monotonic()
        last = self.replica.machine.last_transfer_at
        if last is not None and now - last < self.preference.hold:
            return
        if self._leading_since is None or now - self._leading_since < SETTLE:
            return
        choice = transfer(self.me, voters, members, self.preference.margin)
        if choice is None:
            return
        target, reason = choice
        status = self.replica.status()
        if status["match_index"].get(target) != status["commit_index"]:
            return  # not caught up: it would lose the election; look again soon
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


def lost_voter(me: str, voters: list[str], members: dict[str, MemberView]) -> str | None:
    """A voter (not `me`) that membership declares dead or gone, if any."""
    lost = [v for v in voters if v != me and v in members and members[v].status in _GONE]
    return lost[0] if lost else None


def promotion(voters: list[str], members: dict[str, MemberView], shunned: set[str]) -> str | None:
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


def transfer(
    me: str, voters: list[str], members: dict[str, MemberView], margin: float
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


_GONE = ("dead", "left")


def _best(free) -> Resources:
    frees = list(free)
    return Resources(
        cpu=max((f.cpu for f in frees), default=0.0),
        memory=max((f.memory for f in frees), default=0),
    )
