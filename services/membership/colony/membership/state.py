"""The membership protocol's pure core: SWIM with incarnations and Lifeguard suspicion.

Events in, instructions out: the service calls `tick`, `ping_received`,
`ack_received`, `gossip_received` and `leave` with the current monotonic
time, and carries out what they return (`Ping`, `PingReq`, `Reply`,
`PushPull`, `Tell`, `Changed`). No clock reads, no randomness but the injected
`random.Random`, no I/O, so every timeout is tested instantly.

The rules, in short:

- Each protocol period one peer is probed, round-robin over a shuffled list.
  No ack within `probe_timeout`: `indirect` other members are asked to probe
  it (ping-req). No ack by the end of the period: it becomes *suspect*.
- A suspect that does not refute within the suspicion timeout becomes
  *dead*. The timeout starts long and shrinks as other members independently
  suspect it too (Lifeguard), so a lone slow prober does not kill a peer.
- A member that hears itself suspected (or declared dead) refutes by
  bumping its incarnation and gossiping *alive*. Higher incarnations win;
  at equal incarnation dead > suspect > alive. *left* is final for that
  incarnation and never confused with dead.
- Updates ride on pings and acks, each retransmitted about
  retransmit_mult · log10(N + 1) times; a full state exchange (push-pull)
  with a random peer (dead ones included) every `push_pull_every` seconds
  heals what was missed, partitions included.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from colony.shared.messages import MemberStatus, MemberUpdate, NodeMeta

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
"""At equal incarnation, the higher rank wins."""


@dataclass(frozen=True)
class Timing:
    period: float = 0.5
    """Seconds per protocol period (one probe)."""
    probe_timeout: float = 0.2
    """Seconds to wait for a direct ack before asking others to probe."""
    indirect: int = 3
    """Members asked to probe indirectly (k)."""
    suspicion_min_mult: float = 6.0
    suspicion_max_mult: float = 12.0
    """Suspicion lasts from max_mult · log10(N) · period down to min_mult · period
    as independent confirmations arrive (expected: `indirect` of them). The
    minimum outlasts a member blocked for 2 s, which must refute, not die;
    it does not grow with N, so failures are confirmed fast in large groups."""
    retransmit_mult: int = 3
    """Each update is sent about retransmit_mult · log10(N + 1) times (λ)."""
    max_piggyback: int = 8
    """Updates carried per message at most."""
    push_pull_every: float = 10.0


# --- instructions ------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Send a direct probe to `to`; report its ack with `ack_received(seq)`."""

    to: str
    seq: int
    updates: list[MemberUpdate]


@dataclass(frozen=True)
class PingReq:
    """Ask `via` to probe `target` for us; its positive answer is an ack for `seq`."""

    via: str
    target: str
    seq: int
    updates: list[MemberUpdate]


@dataclass(frozen=True)
class Reply:
    """Answer the message being handled (an ack), carrying these updates."""

    updates: list[MemberUpdate]


@dataclass(frozen=True)
class PushPull:
    """Exchange full state with `to`: send `state`, feed its answer to `gossip_received`."""

    to: str
    state: list[MemberUpdate]


@dataclass(frozen=True)
class Tell:
    """Send `updates` to `to` (no answer expected): feed them to its `gossip_received`."""

    to: str
    updates: list[MemberUpdate]


@dataclass(frozen=True)
class Changed:
    """A member's status changed in this member's view: publish it as a change event."""

    node: str
    status: MemberStatus
    incarnation: int
    previous: MemberStatus | None
    """None when the member was not known before (joined)."""
    cause: str


Instruction = Ping | PingReq | Reply | PushPull | Tell | Changed


# --- state -----------------------------------------------------------------------


@dataclass
class Member:
    node: str
    status: MemberStatus
    incarnation: int
    meta: NodeMeta
    changed_at: float
    """When its status last changed here (monotonic seconds)."""
    suspicion: Suspicion | None = None


@dataclass
class Suspicion:
    started: float
    confirmations: set[str] = field(default_factory=set)
    """Members other than the first who independently suspect it."""


@dataclass
class _Probe:
    target: str
    seq: int
    sent: float
    indirect_sent: bool = False


class Membership:
    """One member's view of the group, and the decisions of the SWIM protocol."""

    def __init__(
        self, me: str, meta: NodeMeta, now: float, rng: random.Random, timing: Timing = Timing()
    ) -> None:
        self.me = me
        self.timing = timing
        self.rng = rng
        self.members: dict[str, Member] = {me: Member(me, ALIVE, 0, meta, now)}
        self._queue: dict[str, tuple[MemberUpdate, int]] = {}
        """Gossip to send: node -> (its newest update, transmissions left)."""
        self._order: list[str] = []
        self._probe: _Probe | None = None
        self._seq = 0
        self._next_probe = now
        self._next_push_pull = now + timing.push_pull_every
        self._enqueue(self._update(self.members[me]))

    # --- views ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.me].incarnation

    def live_peers(self) -> list[str]:
        """Peers that are alive or suspect (they may still answer)."""
        return sorted(
            n for n, m in self.members.items() if n != self.me and m.status in (ALIVE, SUSPECT)
        )

    def full_state(self) -> list[MemberUpdate]:
        return [self._update(m) for m in self.members.values()]

    def suspicion_timeout(self, suspicion: Suspicion) -> float:
        """Lifeguard: from max down to min as independent confirmations arrive."""
        t = self.timing
        low = t.suspicion_min_mult * t.period
        high = max(low, t.suspicion_max_mult * math.log10(max(len(self.members), 10)) * t.period)
        expected = max(self.timing.indirect, 1)
        done = min(len(suspicion.confirmations), expected)
        return max(low, high - (high - low) * math.log(done + 1) / math.log(expected + 1))

    # --- events -----------------------------------------------------------------

    def tick(self, now: float) -> list[Instruction]:
        """Time passed: probe, escalate unanswered probes, expire suspicions, push-pull."""
        out: list[Instruction] = []
        probe = self._probe
        if probe and not probe.indirect_sent and now >= probe.sent + self.timing.probe_timeout:
            probe.indirect_sent = True
            helpers = [p for p in self.live_peers() if p != probe.target]
            for via in self.rng.sample(helpers, min(self.timing.indirect, len(helpers))):
                out.append(PingReq(via, probe.target, probe.seq, self._piggyback()))
        if probe and now >= probe.sent + self.timing.period:
            self._probe = None
            target = self.members.get(probe.target)
            if target and target.status == ALIVE:
                out += self._apply(
                    MemberUpdate(target.node, SUSPECT, target.incarnation), now, self.me
                )
            elif target and target.suspicion:
                target.suspicion.confirmations.add(self.me)
        for member in list(self.members.values()):
            s = member.suspicion
            if member.status == SUSPECT and s and now >= s.started + self.suspicion_timeout(s):
                out += self._apply(
                    MemberUpdate(member.node, DEAD, member.incarnation), now, "suspicion-timeout"
                )
        if self._probe is None and now >= self._next_probe:
            self._next_probe = now + self.timing.period
            target = self._next_target()
            if target:
                self._seq += 1
                self._probe = _Probe(target, self._seq, now)
                out.append(Ping(target, self._seq, self._piggyback(to=target)))
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.timing.push_pull_every
            # Dead members too: that is how the two sides of a healed partition
            # find each other again (left members are gone for good).
            peers = sorted(n for n, m in self.members.items() if n != self.me and m.status != LEFT)
            if peers:
                out.append(PushPull(self.rng.choice(peers), self.full_state()))
        return out

    def ping_received(
        self, now: float, sender: str, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """A probe from `sender`: take its gossip, answer with ours."""
        out = self.gossip_received(now, sender, updates)
        return [*out, Reply(self._piggyback(to=sender))]

    def ack_received(
        self, now: float, sender: str, seq: int, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """An ack (direct, or relayed by a ping-req helper) for probe `seq`."""
        out = self.gossip_received(now, sender, updates)
        if self._probe and self._probe.seq == seq:
            self._probe = None
        return out

    def gossip_received(
        self, now: float, sender: str, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """Merge updates heard from `sender` (piggybacked, or a push-pull's full state)."""
        out: list[Instruction] = []
        for update in updates:
            out += self._apply(update, now, sender)
        return out

    def leave(self, now: float) -> list[Instruction]:
        """Leave gracefully: gossip `left` at a new incarnation."""
        me = self.members[self.me]
        out = self._apply(MemberUpdate(self.me, LEFT, me.incarnation + 1), now, self.me)
        # Told to everyone at once, not left to gossip: a peer that missed it would
        # soon find us silent and declare us dead instead.
        news = [self._update(me)]
        return out + [Tell(peer, news) for peer in self.live_peers()]

    def update_meta(self, now: float, meta: NodeMeta) -> list[Instruction]:
        """New metadata for this member: gossip it with a new incarnation (if it changed)."""
        me = self.members[self.me]
        if meta == me.meta:
            return []
        return self._apply(MemberUpdate(self.me, ALIVE, me.incarnation + 1, meta), now, self.me)

    # --- the rules --------------------------------------------------------------

    def _apply(self, update: MemberUpdate, now: float, source: str) -> list[Instruction]:
        current = self.members.get(update.node)
        if update.node == self.me and source != self.me:
            return self._about_me(update, now)
        if current is None:
            if update.status != ALIVE:
                return []  # an unknown member may only announce itself
            member = Member(update.node, ALIVE, update.incarnation, update.meta or NodeMeta(), now)
            self.members[update.node] = member
            self._enqueue(self._update(member))
            return [Changed(update.node, ALIVE, update.incarnation, None, source)]
        if not _wins(update, current):
            if current.suspicion and update == self._update(current) and source != self.me:
                current.suspicion.confirmations.add(source)  # someone else suspects it too
            return []
        previous = current.status
        current.incarnation = update.incarnation
        current.status = update.status
        if update.meta is not None:
            current.meta = update.meta
        current.suspicion = Suspicion(now) if update.status == SUSPECT else None
        self._enqueue(self._update(current))
        if previous == current.status:
            return []  # same status, newer incarnation or metadata: gossip it, no event
        current.changed_at = now
        return [Changed(update.node, update.status, update.incarnation, previous, source)]

    def _about_me(self, update: MemberUpdate, now: float) -> list[Instruction]:
        """Others talk about me: refute suspicion or death with a higher incarnation."""
        me = self.members[self.me]
        if me.status == LEFT:
            return []
        stale = update.incarnation > me.incarnation or (
            update.incarnation == me.incarnation and update.status != ALIVE
        )
        if not stale or update.status == LEFT:  # nobody else may say that I left
            return []
        me.incarnation = update.incarnation + 1
        self._enqueue(self._update(me))
        if update.status == ALIVE:
            return []  # only an old incarnation of mine going round: gossip will do
        # Refuted to everyone at once: a suspicion left to gossip could expire first.
        news = [self._update(me)]
        return [Tell(peer, news) for peer in self.live_peers()]

    def _next_target(self) -> str | None:
        """Round-robin over a shuffled list, reshuffled each full round."""
        live = set(self.live_peers())
        self._order = [n for n in self._order if n in live]
        if not self._order:
            self._order = sorted(live)
            self.rng.shuffle(self._order)
        return self._order.pop(0) if self._order else None

    def _update(self, member: Member) -> MemberUpdate:
        meta = member.meta if member.status == ALIVE else None
        return MemberUpdate(member.node, member.status, member.incarnation, meta)

    def _enqueue(self, update: MemberUpdate) -> None:
        times = self.timing.retransmit_mult * math.ceil(math.log10(len(self.members) + 1))
        self._queue[update.node] = (update, max(times, 1))

    def _piggyback(self, to: str | None = None) -> list[MemberUpdate]:
        """The updates sent least so far, each counted as one more transmission.

        A message to a member we suspect always tells it so (Lifeguard's
        buddy system), however often that gossip was sent already: it is the
        one member that can refute.
        """
        buddy = self.members.get(to or "")
        told = [self._update(buddy)] if buddy and buddy.status == SUSPECT else []
        chosen = sorted(self._queue.items(), key=lambda item: -item[1][1])
        chosen = chosen[: self.timing.max_piggyback]
        for node, (update, left) in chosen:
            if left <= 1:
                del self._queue[node]
            else:
                self._queue[node] = (update, left - 1)
        return told + [update for _, (update, _) in chosen if update not in told]


def _wins(update: MemberUpdate, current: Member) -> bool:
    """Does `update` supersede what we know? Higher incarnation, else higher rank."""
    return (update.incarnation, _RANK[update.status]) > (
        current.incarnation,
        _RANK[current.status],
    )
