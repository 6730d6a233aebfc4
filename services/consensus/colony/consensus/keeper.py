"""The voter keeper's decisions, pure: which voter is lost, whom to promote, when to hand over.

Every decision is a function of the voters, this node's membership view
(`members`: who is alive, dead or gone, and each node's free resources from
its monitor), when the Raft link last heard each voter (`heard`), and the
time, passed in; `Keeping` remembers what a look needs from the looks
before (since when this node leads, the streak of looks that preferred one
voter, the nodes passed over for a while). No clock reads, no I/O: the
voter keeper (`voters.py`) carries the decisions out, one change per look.

Replacing. A voter is lost once membership has said it is dead (or gone) for
`GRACE` seconds without a break *and* this leader has heard nothing from it
on the Raft link for as long: a verdict that arrives from the far side of a
healed partition about a voter that stayed here is not acted on. A lost
voter is removed only if at least `floor(target)` voters (3, or the target's
majority if that is larger) remain: a group of 2 stops at the next loss. At
the floor, a standby node is added first and the lost voter removed as soon
as that is committed. Below the target, the alive non-voter with the most free
resources is added, a returning voter as soon as membership says it is
alive. A node that did not come to stand by, or did not join, is passed over
for a while (`NOT_READY_FOR`, `SHUNNED_FOR`).

Seeding. A node about to join may start from a replica snapshot and replay
the leader's log after it (`may_seed`), unless that log holds the removal of
a voter of today: replaying it, the node would pass through a set of voters
without that one, and drop its frames as a stranger's. Then the leader
compacts its log instead, and the node is sent that snapshot.

Preferring. The leader hands leadership (Raft TimeoutNow) to a caught-up
voter whose free resources score clearly higher than its own (`margin`), only
once the same voter was preferred at `STEADY_LOOKS` consecutive looks
`LOOK_APART` seconds apart (the figures ride on membership metadata: one
odd sample must not move the leader), not before it led for `SETTLE`
seconds, and not within `hold` seconds of the last transfer anywhere in the
cluster (the machine records transfers), so leadership never ping-pongs.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from colony.shared.messages import MemberView, Resources

MEMBERSHIP = 2
"""The first byte of a pysyncobj log entry that changes the voters (its _COMMAND_TYPE);
the rest is a pickle of [change, node id, node], change 'add' or 'rem'."""

GRACE = 3.0
"""Seconds a voter must be dead (or gone) in this view, and silent on the Raft link, before
it is removed: long enough for a healed partition's stale verdict to be refuted."""
SHUNNED_FOR = 60.0
"""Seconds a node that failed to join is passed over."""
NOT_READY_FOR = 5.0
"""Seconds a node that did not come to standby is passed over (another may be ready)."""
SETTLE = 5.0
"""Seconds a new leader waits before judging whether to hand leadership on."""
STEADY_LOOKS = 3
"""Consecutive looks that must prefer the same voter before leadership moves to it."""
LOOK_APART = 2.0
"""Seconds at least between two looks that count towards `STEADY_LOOKS`."""


@dataclass(frozen=True)
class Preference:
    """When leadership moves to a voter with more free resources."""

    margin: float = 0.25
    """How much higher (a fraction of this leader's) the voter's score must be."""
    hold: float = 60.0
    """Seconds after the last transfer during which leadership does not move again."""


@dataclass(frozen=True)
class Change:
    """One change of the voters: add or remove `node`, and why."""

    kind: Literal["add", "remove"]
    node: str
    reason: str
    replacing: str | None = None
    """An add at the floor: the lost voter to remove as soon as the add is committed."""


@dataclass(frozen=True)
class Transfer:
    """Hand Raft leadership to `target` (releasing the manager lease with it), and why."""

    target: str
    reason: str


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


def membership_change(command: bytes) -> tuple[str, str] | None:
    """(change, node id) of a log entry's command that adds ('add') or removes ('rem') a
    voter; None for any other entry (or one that does not decode: pysyncobj's own)."""
    if command[:1] != bytes([MEMBERSHIP]):
        return None
    try:
        change = pickle.loads(command[1:])  # this leader's own log: trusted
        return str(change[0]), str(change[1])
    except Exception:  # not ours to judge: pysyncobj applies it
        return None


def may_seed(removed: Iterable[str], voters: Collection[str]) -> bool:
    """Whether a node about to join may start from a replica snapshot and replay this
    leader's log after it: not if the log removes (`removed`: the voters its removal
    entries name) one of today's `voters` (the replay would pass through a set of voters
    without it)."""
    return not any(node in voters for node in removed)


def strays(voters: list[str], members: Mapping[str, MemberView]) -> list[str]:
    """The alive nodes that are not voters: any of them that still runs a replica (a removed
    voter back with its old journal) is told to stand by."""
    return [n for n, m in members.items() if n not in voters and m.status == "alive"]


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


class Keeping:
    """What the voter keeper remembers between its looks, and its decisions at each."""

    def __init__(self, me: str, target: int, preference: Preference = Preference()) -> None:
        self.me = me
        self.target = target
        self.preference = preference
        self.leading_since: float | None = None
        """When this node last became the Raft leader, as its looks saw (None: it follows)."""
        self.streak = Streak()
        self.passed_over: dict[str, float] = {}
        """Nodes not to promote for now: node -> until when."""

    def leading(self, now: float, leader: bool) -> bool:
        """A look begins: whether this node leads (only the leader keeps the voters)."""
        if not leader:
            self.leading_since, self.streak = None, Streak()
            return False
        if self.leading_since is None:
            self.leading_since = now
        return True

    def change(
        self,
        now: float,
        voters: list[str],
        members: Mapping[str, MemberView],
        heard: Mapping[str, float],
    ) -> Change | None:
        """The one change of the voters to make now, if any (`voter_change`)."""
        shunned = {n for n, until in self.passed_over.items() if until > now}
        change = voter_change(self.me, voters, members, heard, now, self.target, shunned)
        if change is not None:
            self.streak = Streak()  # the group changes: judge the leadership afresh
        return change

    def pass_over(self, node: str, now: float, seconds: float) -> None:
        """Do not promote `node` for `seconds` (it did not stand by, or did not join)."""
        self.passed_over[node] = now + seconds

    def prefer(
        self,
        now: float,
        voters: list[str],
        members: Mapping[str, MemberView],
        transferred_at: float | None,
        caught_up: Collection[str],
    ) -> Transfer | None:
        """Whether to hand leadership over now: to the voter `transfer` prefers, once it
        was preferred at `STEADY_LOOKS` looks apart, this node has led for `SETTLE`, no
        transfer was applied here (`transferred_at`) within the hold, and it holds every
        committed entry (`caught_up`: else it would lose the election)."""
        choice = transfer(self.me, voters, members, self.preference.margin)
        self.streak = steady(self.streak, choice and choice[0], now)
        if transferred_at is not None and now - transferred_at < self.preference.hold:
            return None
        if self.leading_since is None or now - self.leading_since < SETTLE:
            return None
        if choice is None or len(self.streak.looks) < STEADY_LOOKS:
            return None
        target, reason = choice
        if target not in caught_up:
            return None  # look again soon
        self.streak = Streak()
        return Transfer(target, reason)


_GONE = ("dead", "left")


def _best(free: Iterable[Resources]) -> Resources:
    frees = list(free)
    return Resources(
        cpu=max((f.cpu for f in frees), default=0.0),
        memory=max((f.memory for f in frees), default=0),
    )
