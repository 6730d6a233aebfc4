"""The membership protocol's pure core: SWIM with incarnations and Lifeguard.

Events in, instructions out: the service calls `tick`, `ping_received`,
`ack_received`, `nack_received`, `gossip_received`, `announce_received` and
`leave` with the current monotonic time, and carries out what they return
(`Ping`, `PingReq`, `Reply`, `PushPull`, `Tell`, `Broadcast`, `Changed`). No
clock reads, no randomness but the injected `random.Random`, no I/O, so
every timeout is tested instantly.

The rules, in short:

- Each protocol period one peer is probed, round-robin over a shuffled list.
  No ack within the probe timeout: `indirect` other members are asked to
  probe it (ping-req); each answers with the target's ack or a nack. No ack
  by the end of the period: the prober *accuses* it (suspect, by itself).
- A suspect that does not refute within the suspicion timeout becomes
  *dead*. The timeout starts long and shrinks as other members accuse it
  independently (Lifeguard), so one slow prober does not kill a peer.
- A member that hears itself suspected (or declared dead, or left by a past
  life of its own) refutes by bumping its incarnation. Higher incarnations
  win; at equal incarnation left > dead > suspect > alive.
- Updates ride on pings and acks, each retransmitted about
  retransmit_mult · log10(N + 1) times; a full state exchange (push-pull)
  with a random peer (dead ones included, so partitions heal) every
  `push_pull_every` seconds repairs what gossip missed. News that cannot
  wait for gossip (an accusation, a death, a refutation, a leave) is also
  broadcast: one NATS publish that the server fans out to every member.
- Lifeguard's self-awareness: a member that misses its own deadlines (its
  probes fail although the helpers it asked did not nack, it has to refute,
  or its loop stalled) raises its `health` score, which stretches its probe
  timeout and period, so an overloaded member slows down instead of accusing
  healthy peers. Each successful probe lowers it again.
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
    """Seconds per protocol period (one probe), at full health."""
    probe_timeout: float = 0.2
    """Seconds to wait for a direct ack before asking others to probe, at full health."""
    indirect: int = 3
    """Members asked to probe indirectly (k); also the accusers beyond the first that
    bring a suspicion to its minimum."""
    suspicion_min_mult: float = 5.0
    suspicion_max_mult: float = 4.0
    """Suspicion lasts from max_mult · log10(N) · period down to min_mult · period
    as independent accusers confirm it (`indirect` accusers beyond the first
    bring it to the minimum). Below N = 18, max_mult · log10(N) < min_mult and
    suspicion is the minimum from the start. The minimum outlasts a member
    blocked for 2 s, which must refute, not die; it does not grow with N, so
    failures are confirmed fast in large groups."""
    retransmit_mult: int = 3
    """Each update is sent about retransmit_mult · log10(N + 1) times (λ)."""
    max_piggyback: int = 8
    """Updates carried per message at most."""
    push_pull_every: float = 10.0
    max_health: int = 8
    """Lifeguard's awareness score at most: timeouts stretch up to (max_health + 1) times."""


# --- instructions ------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Send a direct probe to `to`; report its ack with `ack_received(seq)`."""

    to: str
    seq: int
    updates: list[MemberUpdate]
    timeout: float
    """Seconds after which the ack no longer matters."""


@dataclass(frozen=True)
class PingReq:
    """Ask `via` to probe `target` for us: its ack is `ack_received(seq)`, its nack
    `nack_received(seq)`."""

    via: str
    target: str
    seq: int
    updates: list[MemberUpdate]
    timeout: float


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
class Broadcast:
    """Send `updates` to every member at once (their `gossip_received`)."""

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


Instruction = Ping | PingReq | Reply | PushPull | Tell | Broadcast | Changed


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
    accusers: list[str] = field(default_factory=list)
    """Distinct members whose own probes failed, the first one first."""

    @property
    def confirmations(self) -> int:
        """Accusers beyond the first."""
        return max(len(self.accusers) - 1, 0)


@dataclass
class _Probe:
    target: str
    seq: int
    ask_at: float
    """When to ask helpers if no ack came."""
    deadline: float
    """When to give up: no ack by then is an accusation."""
    indirect_sent: bool = False
    helpers: int = 0
    """Members asked to probe indirectly."""
    nacks: int = 0
    """Helpers that answered they could not reach the target either."""


class Membership:
    """One member's view of the group, and the decisions of the SWIM protocol."""

    def __init__(
        self, me: str, meta: NodeMeta, now: float, rng: random.Random, timing: Timing = Timing()
    ) -> None:
        self.me = me
        self.timing = timing
        self.rng = rng
        self.members: dict[str, Member] = {me: Member(me, ALIVE, 0, meta, now)}
        self.health = 0
        """Lifeguard's local health multiplier: 0 is healthy."""
        self._suspects: set[str] = set()
        self._queue: dict[tuple[str, str], tuple[MemberUpdate, int]] = {}
        """Gossip to send: (node, accuser) -> (its newest update, transmissions left)."""
        self._order: list[str] = []
        self._probe: _Probe | None = None
        self._seq = 0
        self._last_tick: float | None = None
        """When the loop last ticked (None before the first tick: starting is no stall)."""
        self._patient_until = now
        """No verdicts before this: after a stall, what arrived meanwhile is read first."""
        self._next_probe = now
        self._next_push_pull = now + timing.push_pull_every
        self._had_peers = False
        self._enqueue(self._update(self.members[me]))

    # --- views ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.me].incarnation

    @property
    def lonely(self) -> bool:
        """True while this member knows no peer that may answer (it must announce itself)."""
        return not any(
            m.status in (ALIVE, SUSPECT) for n, m in self.members.items() if n != self.me
        )

    def live_peers(self) -> list[str]:
        """Peers that are alive or suspect (they may still answer)."""
        return sorted(
            n for n, m in self.members.items() if n != self.me and m.status in (ALIVE, SUSPECT)
        )

    def full_state(self) -> list[MemberUpdate]:
        return [self._update(m) for m in self.members.values()]

    @property
    def probe_timeout(self) -> float:
        return self.timing.probe_timeout * (self.health + 1)

    @property
    def interval(self) -> float:
        """This member's protocol period now: longer while it is unhealthy."""
        return self.timing.period * (self.health + 1)

    def suspicion_timeout(self, suspicion: Suspicion) -> float:
        """Lifeguard: from max down to min as independent accusations arrive."""
        t = self.timing
        low = t.suspicion_min_mult * t.period
        high = max(low, t.suspicion_max_mult * math.log10(max(len(self.members), 10)) * t.period)
        expected = max(self.timing.indirect, 1)
        done = min(suspicion.confirmations, expected)
        return max(low, high - (high - low) * math.log(done + 1) / math.log(expected + 1))

    # --- events -----------------------------------------------------------------

    def tick(self, now: float) -> list[Instruction]:
        """Time passed: probe, escalate unanswered probes, expire suspicions, push-pull."""
        out: list[Instruction] = []
        if self._last_tick is not None and now - self._last_tick > self.timing.probe_timeout:
            # Our loop stalled (ticks come every period / 4): acks and refutations
            # may sit unread in our socket. Judge nobody until they are read; the
            # stall is our health's fault.
            self._probe = None
            self._patient_until = now + self.timing.period
            self._next_probe = self._patient_until
            self._adjust_health(+1)
        self._last_tick = now
        out += self._escalate(now)
        if now >= self._patient_until:
            out += self._expire_suspicions(now)
        if self._probe is None and now >= self._next_probe:
            self._next_probe = now + self.interval
            target = self._next_target()
            if target:
                self._seq += 1
                self._probe = _Probe(
                    target, self._seq, now + self.probe_timeout, now + self.interval
                )
                out.append(Ping(target, self._seq, self._piggyback(to=target), self.interval))
        if not self._had_peers and not self.lonely:
            self._had_peers = True
            self._next_push_pull = now  # just joined: pull the whole member list at once
        if now >= self._next_push_pull:
            self._next_push_pull = now + self.timing.push_pull_every
            # Dead members too: that is how the two sides of a healed partition
            # find each other again (left members are gone for good).
            peers = [n for n, m in self.members.items() if n != self.me and m.status != LEFT]
            if peers:
                out.append(PushPull(self.rng.choice(sorted(peers)), self.full_state()))
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
            self._adjust_health(-1)
        return out

    def nack_received(self, seq: int) -> None:
        """A ping-req helper could not reach the target of probe `seq` either.

        Only counted (Lifeguard: were the helpers reachable?): the direct ping may
        still be answered, so the verdict waits for the probe's deadline."""
        if self._probe and self._probe.seq == seq:
            self._probe.nacks += 1

    def gossip_received(
        self, now: float, sender: str, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """Merge updates heard from `sender` (piggybacked, broadcast, or a full state)."""
        out: list[Instruction] = []
        for update in updates:
            out += self._apply(update, now, sender)
        return out

    def announce_received(
        self, now: float, sender: str, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """`sender` announces itself (joining, or back after a restart).

        Take it in; and, as one of about `indirect` members chosen at random
        (every member hears the announcement: all answering would flood it),
        tell it about ourselves, so it learns a peer to push-pull with, and
        what we know of it, so a restarted member hears of its past life
        (dead or left at a higher incarnation) and refutes it. A member that
        nobody answered announces itself again next period.
        """
        if sender == self.me:
            return []
        out = self.gossip_received(now, sender, [u for u in updates if u.node == sender])
        known = self.members.get(sender)
        if known is None or self.rng.random() * len(self.members) > self.timing.indirect:
            return out
        return [*out, Tell(sender, [self._update(self.members[self.me]), self._update(known)])]

    def leave(self, now: float) -> list[Instruction]:
        """Leave gracefully: broadcast `left` at a new incarnation."""
        me = self.members[self.me]
        if me.status == LEFT:
            return []
        out = self._apply(MemberUpdate(self.me, LEFT, me.incarnation + 1), now, self.me, local=True)
        # Broadcast, not left to gossip: a peer that missed it would soon find
        # us silent and declare us dead instead.
        return [*out, Broadcast([self._update(me)])]

    def update_meta(self, now: float, meta: NodeMeta) -> list[Instruction]:
        """New metadata for this member: gossip it with a new incarnation (if it changed)."""
        me = self.members[self.me]
        if meta == me.meta or me.status == LEFT:  # a member that left stays left
            return []
        update = MemberUpdate(self.me, ALIVE, me.incarnation + 1, meta)
        return self._apply(update, now, self.me, local=True)

    # --- the rules --------------------------------------------------------------

    def _escalate(self, now: float) -> list[Instruction]:
        """The probe under way: ask helpers after the probe timeout, accuse at the deadline."""
        probe = self._probe
        if probe is None:
            return []
        target = self.members.get(probe.target)
        if target is None or target.status not in (ALIVE, SUSPECT):
            self._probe = None  # it died or left meanwhile: nothing to judge, nobody to blame
            return []
        out: list[Instruction] = []
        if not probe.indirect_sent and now >= probe.ask_at:
            probe.indirect_sent = True
            # Helpers get at least a probe timeout, even if this tick came late.
            probe.deadline = max(probe.deadline, now + self.probe_timeout)
            helpers = [p for p in self.live_peers() if p != probe.target]
            chosen = self.rng.sample(helpers, min(self.timing.indirect, len(helpers)))
            probe.helpers = len(chosen)
            left = probe.deadline - now
            out += [
                PingReq(v, probe.target, probe.seq, self._piggyback(to=v), left) for v in chosen
            ]
        if now < probe.deadline:
            return out
        self._probe = None
        # Lifeguard: helpers that nacked were reachable and could not reach the
        # target either, so the fault is likely its. Silence from a helper
        # points at us. With nobody to ask, every failure counts against us.
        self._adjust_health(probe.helpers - probe.nacks if probe.helpers else 1)
        if target.suspicion and self.me in target.suspicion.accusers:
            return out  # accused it already
        accusation = MemberUpdate(target.node, SUSPECT, target.incarnation, by=self.me)
        # Broadcast: every member's suspicion then counts every accuser at once
        # (confirmations left to gossip could arrive after the suspicion expired).
        return [*out, *self._apply(accusation, now, self.me), Broadcast([accusation])]

    def _expire_suspicions(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for node in sorted(self._suspects):
            member = self.members[node]
            s = member.suspicion
            if s and now >= s.started + self.suspicion_timeout(s):
                death = MemberUpdate(node, DEAD, member.incarnation)
                out += self._apply(death, now, "suspicion-timeout")
                out.append(Broadcast([death]))
        return out

    def _apply(
        self, update: MemberUpdate, now: float, source: str, local: bool = False
    ) -> list[Instruction]:
        """Merge one update from `source`; `local` marks this member's own decisions
        about itself (a leave, new metadata): anything else about it is others' talk."""
        current = self.members.get(update.node)
        if update.node == self.me and not local:
            return self._about_me(update, now)
        if current is None:
            if update.status != ALIVE:
                return []  # an unknown member may only announce itself
            member = Member(update.node, ALIVE, update.incarnation, update.meta or NodeMeta(), now)
            self.members[update.node] = member
            self._enqueue(self._update(member))
            self._add_to_round(update.node)
            return [Changed(update.node, ALIVE, update.incarnation, None, source)]
        if not _wins(update, current):
            s = current.suspicion
            same = update.status == SUSPECT and update.incarnation == current.incarnation
            if s and same and update.by and update.by not in s.accusers:
                s.accusers.append(update.by)  # an independent accusation: pass it on too
                self._enqueue(update)
            return []
        previous = current.status
        current.incarnation = update.incarnation
        current.status = update.status
        if update.meta is not None:
            current.meta = update.meta
        if update.status == SUSPECT:
            current.suspicion = Suspicion(now, [update.by or source])
            self._suspects.add(current.node)
        else:
            current.suspicion = None
            self._suspects.discard(current.node)
        self._enqueue(self._update(current))
        if previous == current.status:
            return []  # same status, newer incarnation or metadata: gossip it, no event
        if previous in (DEAD, LEFT):
            self._add_to_round(current.node)  # back: probe it this round
        current.changed_at = now
        return [Changed(update.node, update.status, update.incarnation, previous, source)]

    def _about_me(self, update: MemberUpdate, now: float) -> list[Instruction]:
        """Others talk about me: refute suspicion, death or a past life's leave."""
        me = self.members[self.me]
        if me.status == LEFT:
            return []
        stale = update.incarnation > me.incarnation or (
            update.incarnation == me.incarnation and update.status != ALIVE
        )
        if not stale:
            return []
        current_life = update.incarnation == me.incarnation
        me.incarnation = update.incarnation + 1
        self._enqueue(self._update(me))
        if update.status == ALIVE:
            return []  # only an old incarnation of mine going round: gossip will do
        if current_life and update.status == SUSPECT:
            self._adjust_health(+1)  # Lifeguard: being suspected hints that we are slow
        # Broadcast: a refutation left to gossip could lose the race with the suspicion.
        return [Broadcast([self._update(me)])]

    def _adjust_health(self, delta: int) -> None:
        self.health = min(max(self.health + delta, 0), self.timing.max_health)

    def _next_target(self) -> str | None:
        """Round-robin over a shuffled list, reshuffled each full round."""
        while self._order:
            node = self._order.pop()
            if self.members[node].status in (ALIVE, SUSPECT):
                return node
        self._order = self.live_peers()
        self.rng.shuffle(self._order)
        return self._order.pop() if self._order else None

    def _add_to_round(self, node: str) -> None:
        """A member that joined (or came back) is probed this round, not after it:
        at a random place, so it is not probed by everyone at once. A round
        lasts N periods: waiting for the next one would leave it unwatched."""
        if node != self.me and node not in self._order:
            self._order.insert(self.rng.randint(0, len(self._order)), node)

    def _update(self, member: Member) -> MemberUpdate:
        meta = member.meta if member.status == ALIVE else None
        by = member.suspicion.accusers[0] if member.suspicion else ""
        return MemberUpdate(member.node, member.status, member.incarnation, meta, by)

    def _enqueue(self, update: MemberUpdate) -> None:
        """Queue `update` for piggybacking: it replaces the news of that node it
        supersedes, but accusations by different members travel side by side."""
        newer = (update.incarnation, _RANK[update.status])
        for key, (queued, _) in list(self._queue.items()):
            if key[0] == update.node and (queued.incarnation, _RANK[queued.status]) < newer:
                del self._queue[key]
        times = self.timing.retransmit_mult * math.ceil(math.log10(len(self.members) + 1))
        self._queue[(update.node, update.by)] = (update, max(times, 1))

    def _piggyback(self, to: str | None = None) -> list[MemberUpdate]:
        """The updates sent least so far, each counted as one more transmission.

        A message to a member we suspect, or hold dead, always tells it so
        (Lifeguard's buddy system), however often that gossip was sent already:
        it is the one member that can refute (a dead one that answers is back,
        after a partition healed).
        """
        buddy = self.members.get(to or "")
        told = [self._update(buddy)] if buddy and buddy.status in (SUSPECT, DEAD) else []
        chosen = sorted(self._queue.items(), key=lambda item: -item[1][1])
        chosen = chosen[: self.timing.max_piggyback]
        for key, (update, left) in chosen:
            if left <= 1:
                del self._queue[key]
            else:
                self._queue[key] = (update, left - 1)
        return told + [update for _, (update, _) in chosen if update not in told]


def _wins(update: MemberUpdate, current: Member) -> bool:
    """Does `update` supersede what we know? Higher incarnation, else higher rank."""
    return (update.incarnation, _RANK[update.status]) > (
        current.incarnation,
        _RANK[current.status],
    )
