"""The membership protocol's pure core: SWIM with incarnations and Lifeguard.

Events in, instructions out: the service calls `tick`, `ping_received`,
`ack_received`, `nack_received`, `told`, `gossip_received`, `announce_received`
and `leave` with the current monotonic time, and carries out what they return
(`Ping`, `PingReq`, `Reply`, `PushPull`, `Tell`, `Broadcast`, `Announce`,
`Changed`). No
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
- A death is taken as news only about a member already suspected: one declared
  dead while we hold it alive is suspected instead (the declarer may have been
  cut off from it, not it from everyone), so it can refute.
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
- Admission: anyone on the bus can name a member, so a node nobody here
  knows enters the table only once it answered a ping from this member
  itself (a *candidate* until then, outside the probe round, forgotten
  quietly if silent), or when a member of the table vouches for it in an
  answer to our own request (its ack, or its full state in a push-pull).
  Candidates, the newcomers one sender may name per period (a full state
  aside) and the table itself are bounded: a flood of invented names never
  dilutes the probe round of the real members.
- A member announces itself each period while it knows no peer, and a few
  times after it outbid a past life, until another member shows it alive at
  the new incarnation (a restarted one may soon hear a peer restarted with
  it, which proves nothing to the others); a member that holds the announcer suspect,
  dead or left at an incarnation as high as the announced one takes it alive
  at the next incarnation at once (the announcement is the proof of life),
  so nodes restarted together are not left for dead until a push-pull.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

import msgspec

from colony.shared.messages import MemberStatus, MemberUpdate, NodeMeta

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
"""At equal incarnation, the higher rank wins."""

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_id(node: str) -> bool:
    """A node id names the node's subjects, so it must be one subject token
    (`messages.ObjectId`): anything else never enters the table."""
    return _ID.fullmatch(node) is not None


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
    join_pulls: int = 3
    """Push-pulls after joining, one period apart, while each still teaches new members."""
    max_health: int = 8
    """Lifeguard's awareness score at most: timeouts stretch up to (max_health + 1) times."""
    max_candidates: int = 32
    """Newcomers waiting to answer our ping, at most; others are not heard of meanwhile
    (a real one announces itself again, or is gossiped again)."""
    verify_per_tick: int = 1
    """Pings to candidates per tick (period / 4) at most: a flood costs a bounded rate,
    and a group forming at once checks its pairs over a few seconds, not all at once."""
    verify_wait: float = 2.0
    """Seconds a candidate has to answer our ping, at full health."""
    announce_unseen: int = 2
    """Announcements of a new incarnation that outbid a past life or a death, made until
    another member shows it back (at most; the first 2 periods after the refutation,
    which is news already): one lost announcement must not leave members holding this
    member dead until a push-pull."""
    new_per_sender: int = 4
    """Newcomers one sender may name per period (a push-pull's full state aside): one
    message cannot fill the candidate pool or the table."""


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
class Announce:
    """Announce this member to every member (their `announce_received`)."""

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


Instruction = Ping | PingReq | Reply | PushPull | Tell | Broadcast | Announce | Changed


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
class _Candidate:
    """A node heard of but not yet heard from: it must answer our ping to be admitted."""

    update: MemberUpdate
    """The newest we heard of it (admitted with this incarnation and metadata)."""
    source: str
    """Who named it first: the cause of its join event."""
    seq: int = 0
    """Our ping to it (0: not sent yet)."""
    deadline: float = 0.0
    """When it is forgotten if it has not answered."""


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
        self,
        me: str,
        meta: NodeMeta,
        now: float,
        rng: random.Random,
        timing: Timing = Timing(),
        max_members: int = 1024,
    ) -> None:
        self.me = me
        self.timing = timing
        self.rng = rng
        self.max_members = max_members
        """Members in the table at most, this one included (candidates count too)."""
        self.members: dict[str, Member] = {me: Member(me, ALIVE, 0, meta, now)}
        self.candidates: dict[str, _Candidate] = {}
        """Newcomers named by others, until they answer our ping (or are forgotten)."""
        self._named: dict[str, int] = {}
        """Candidates each sender named this period."""
        self._next_naming = now
        self._verify_budget = timing.verify_per_tick
        self._unheard = False
        """We outbid a past life (or a death) that others may still hold, and no other
        member has shown us alive at the new incarnation yet."""
        self._unheard_announcements = 0
        self._announced = False
        self._next_announce = now
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
        self._quick_pulls = 0
        self._enqueue(self._update(self.members[me]))

    # --- views ------------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.members[self.me].incarnation

    @property
    def lonely(self) -> bool:
        """True while this member knows no peer that may answer."""
        return not any(
            m.status in (ALIVE, SUSPECT) for n, m in self.members.items() if n != self.me
        )

    @property
    def announcing(self) -> bool:
        """Should this member announce itself (each period)? Once at its start, whatever
        it heard already: a peer restarted with it proves nothing to the members
        holding it dead. Then while it knows no peer and checks no candidate (those
        that pinged a newcomer to check it are the peers it checks in turn: announcing
        meanwhile would only repeat itself to every member). And a few times after it
        outbid a past life, until another member shows it alive at the new
        incarnation."""
        if self.members[self.me].status == LEFT:
            return False
        if not self._announced:
            return True
        if self.lonely:
            return not self.candidates
        return self._unheard and self._unheard_announcements < self.timing.announce_unseen

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
        self._verify_budget = self.timing.verify_per_tick
        if now >= self._next_naming:
            self._next_naming = now + self.timing.period
            self._named.clear()
        for node, c in list(self.candidates.items()):
            if c.seq and now >= c.deadline:
                del self.candidates[node]  # never answered: forgotten, nobody accused
        out += self._verify(now)
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
        if now >= self._next_announce and self.announcing:
            self._announced = True
            self._next_announce = now + self.timing.period
            if not self.lonely:
                self._unheard_announcements += 1
            out.append(Announce([self._update(self.members[self.me])]))
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
        out: list[Instruction] = []
        if sender not in self.members and sender not in self.candidates:
            # It knows us, so we should know it (a restarted member hears this way of
            # those that took it alive again): check it, as any newcomer.
            limit = self.timing.new_per_sender
            out += self._apply(MemberUpdate(sender, ALIVE, 0), now, sender, limit=limit)
        out += self.told(now, sender, updates)
        reply = self._piggyback(to=sender)
        if any(u.node == sender for u in updates):
            # It introduces itself (a candidate's check does): introduce us in turn, or
            # it would admit us with no metadata until a push-pull.
            mine = self._update(self.members[self.me])
            reply = [mine, *(u for u in reply if u.node != self.me)][: self.timing.max_piggyback]
        return [*out, Reply(reply)]

    def ack_received(
        self, now: float, sender: str, seq: int, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """An ack (direct, or relayed by a ping-req helper) for probe `seq`, or from a
        candidate we pinged (it is admitted)."""
        out: list[Instruction] = []
        candidate = self.candidates.get(sender)
        if candidate and candidate.seq == seq:
            out += self._admit(candidate.update, now, candidate.source)
        # An answer to our own ping, from a member we admitted: it vouches for the
        # newcomers it names (as many as one honest ack carries, per period), as a
        # group forming at once would otherwise ping every pair.
        vouched = sender in self.members
        limit = self.timing.max_piggyback if vouched else self.timing.new_per_sender
        out += self._merge(now, sender, updates, vouched=vouched, limit=limit)
        if self._probe and self._probe.seq == seq:
            self._probe = None
            self._adjust_health(-1)
        return out

    def unanswerable(self, seq: int) -> None:
        """Ping `seq` cannot be answered (nobody listens on its subject): if it went to a
        candidate, forget it now (an invented name frees its place at once)."""
        for node, c in list(self.candidates.items()):
            if c.seq == seq:
                del self.candidates[node]

    def nack_received(self, seq: int) -> None:
        """A ping-req helper could not reach the target of probe `seq` either.

        Only counted (Lifeguard: were the helpers reachable?): the direct ping may
        still be answered, so the verdict waits for the probe's deadline."""
        if self._probe and self._probe.seq == seq:
            self._probe.nacks += 1

    def gossip_received(
        self, now: float, sender: str, updates: list[MemberUpdate]
    ) -> list[Instruction]:
        """Merge the full state `sender` answered our push-pull with: a member we chose
        to ask vouches for all the newcomers it lists (a joiner learns everyone at once)."""
        out = self._merge(now, sender, updates, vouched=True, limit=None)
        learned = any(isinstance(i, Changed) and i.previous is None for i in out)
        if learned and self._quick_pulls < self.timing.join_pulls:
            # Its first peer may have joined with it (restarted together) and know
            # little: pull again from another next period, while it teaches us members.
            self._quick_pulls += 1
            self._next_push_pull = min(self._next_push_pull, now + self.timing.period)
        return out

    def told(self, now: float, sender: str, updates: list[MemberUpdate]) -> list[Instruction]:
        """Merge what `sender` sent unasked (a tell, news, a ping's piggyback, a push-pull
        from it): the few newcomers it may name must answer our ping first."""
        return self._merge(now, sender, updates, vouched=False, limit=self.timing.new_per_sender)

    def _merge(
        self,
        now: float,
        sender: str,
        updates: list[MemberUpdate],
        vouched: bool,
        limit: int | None,
    ) -> list[Instruction]:
        if not valid_id(sender):
            return []  # its name would become an accuser's or a join's cause
        out: list[Instruction] = []
        for update in updates:
            out += self._apply(update, now, sender, vouched=vouched, limit=limit)
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
        mine = [u for u in updates if u.node == sender]  # an announcement names only itself
        known = self.members.get(sender)
        past = self._update(known) if known else None
        if known and known.status != ALIVE:
            # It speaks, so it lives: a past life of it that we hold suspect, dead or
            # left must not keep this one out until it hears of it and refutes (it may
            # have found a peer restarted with it, and stopped announcing). Take it
            # alive at the incarnation its refutation will have, now.
            mine = [
                msgspec.structs.replace(u, incarnation=known.incarnation + 1)
                if u.status == ALIVE and u.incarnation <= known.incarnation
                else u
                for u in mine
            ]
        out = self.told(now, sender, mine)
        group = len(self.members) + len(self.candidates)  # while forming, both count
        if self.rng.random() * group > self.timing.indirect:
            return out
        # Who we are, even to a newcomer we have no room to check now: it checks us in
        # turn, and once it admits us our push-pull answer vouches for everyone else.
        told = [self._update(self.members[self.me])] + ([past] if past else [])
        return [*out, Tell(sender, told)]

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
        self,
        update: MemberUpdate,
        now: float,
        source: str,
        local: bool = False,
        vouched: bool = False,
        limit: int | None = 0,
    ) -> list[Instruction]:
        """Merge one update from `source`; `local` marks this member's own decisions
        about itself (a leave, new metadata): anything else about it is others' talk.
        A newcomer is admitted at once only if `vouched`, else it must answer a ping;
        `source` may name `limit` newcomers per period (None: any number)."""
        if not valid_id(update.node) or (update.by and not valid_id(update.by)):
            return []
        current = self.members.get(update.node)
        if update.node == self.me and not local:
            return self._about_me(update, now)
        if current is None:
            if update.status != ALIVE:
                return []  # an unknown member may only announce itself
            if limit is not None:
                if self._named.get(source, 0) >= limit:
                    return []  # one message, or one sender, cannot fill the table or the pool
                self._named[source] = self._named.get(source, 0) + 1
            if vouched:
                return self._admit(update, now, source)
            return self._consider(update, now, source)
        if not _wins(update, current):
            s = current.suspicion
            same = update.status == SUSPECT and update.incarnation == current.incarnation
            if s and same and update.by and update.by not in s.accusers:
                s.accusers.append(update.by)  # an independent accusation: pass it on too
                self._enqueue(update)
            return []
        if update.status == DEAD and current.status == ALIVE:
            # A death we never suspected: whoever declared it could not reach the member,
            # but we had no word of that. Typically a cut-off member's verdict arriving as
            # its partition heals, about a member that is fine: taken as it comes, every
            # member would hold it dead (and its work be moved) before it can refute. So it
            # counts as an accusation, which the member refutes at once if it lives, and
            # which our own suspicion timeout turns into its death if it does not.
            update = MemberUpdate(update.node, SUSPECT, update.incarnation, by=source)
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
        if update.status == ALIVE and update.incarnation == me.incarnation:
            self._unheard = False  # someone holds this life alive: no need to announce it
        stale = update.incarnation > me.incarnation or (
            update.incarnation == me.incarnation and update.status != ALIVE
        )
        if not stale:
            return []
        current_life = update.incarnation == me.incarnation
        if not current_life or update.status in (DEAD, LEFT):
            # Members that hold that past life (or this one) dead must hear the new
            # incarnation: announce it until someone shows it back to us.
            self._unheard = True
            self._unheard_announcements = 0
            self._next_announce = now + 2 * self.timing.period  # a refutation is news already
        me.incarnation = update.incarnation + 1
        self._enqueue(self._update(me))
        if update.status == ALIVE:
            return []  # only an old incarnation of mine going round: gossip will do
        if current_life and update.status == SUSPECT:
            self._adjust_health(+1)  # Lifeguard: being suspected hints that we are slow
        # Broadcast: a refutation left to gossip could lose the race with the suspicion.
        return [Broadcast([self._update(me)])]

    def _admit(self, update: MemberUpdate, now: float, source: str) -> list[Instruction]:
        """A newcomer joins the table (bounded: a full table takes nobody new)."""
        self.candidates.pop(update.node, None)
        if len(self.members) >= self.max_members:
            return []
        member = Member(update.node, ALIVE, update.incarnation, update.meta or NodeMeta(), now)
        self.members[update.node] = member
        self._enqueue(self._update(member))
        self._add_to_round(update.node)
        return [Changed(update.node, ALIVE, update.incarnation, None, source)]

    def _consider(self, update: MemberUpdate, now: float, source: str) -> list[Instruction]:
        """A newcomer named by `source`: a candidate, pinged to see that it exists.

        Until it answers it is not probed, gossiped or counted, so invented names
        cost a bounded ping rate and never dilute the probe round or the table."""
        known = self.candidates.get(update.node)
        if known:
            if _fresher(update, known.update):
                known.update = update  # admitted with the newest we heard
            return []
        room = min(self.timing.max_candidates, self.max_members - len(self.members))
        if len(self.candidates) >= room:
            return []
        self.candidates[update.node] = _Candidate(update, source)
        return self._verify(now)

    def _verify(self, now: float) -> list[Instruction]:
        """Ping candidates not pinged yet, within this tick's budget (oldest first)."""
        out: list[Instruction] = []
        for node, c in self.candidates.items():
            if self._verify_budget <= 0:
                break
            if c.seq:
                continue
            self._verify_budget -= 1
            self._seq += 1
            # Patient: nothing hangs on the answer, and a node that is starting (or a group
            # forming at once) may answer late; an invented name fails at once.
            wait = self.timing.verify_wait * (self.health + 1)
            c.seq, c.deadline = self._seq, now + wait
            # Only who we are: gossip spent on a name that may not exist would be lost.
            out.append(Ping(node, c.seq, [self._update(self.members[self.me])], wait))
        return out

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


def _fresher(update: MemberUpdate, than: MemberUpdate) -> bool:
    """A newer incarnation, or the same one with the metadata the other lacked."""
    return (update.incarnation, update.meta is not None) > (than.incarnation, than.meta is not None)
