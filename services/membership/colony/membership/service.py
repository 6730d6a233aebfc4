"""The membership service: the SWIM core (`state.py`) wired to NATS.

Loop: every quarter period, `tick` the core and carry out its instructions.
Pings, ping-reqs and push-pulls are NATS requests to the peer's own
subjects; tells are plain publishes; broadcasts are one publish on the news
subject, which the server fans out to every member; every state change is
published as a change event. Until it knows a peer, the member announces
itself on the announce subject each period (that is how a node joins knowing
only a NATS URL); every member that hears it adds it, a few tell it who they
are, and a push-pull with the first of them brings the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import msgspec
import nats.errors

from colony.membership.state import (
    Broadcast,
    Changed,
    Instruction,
    Membership,
    Ping,
    PingReq,
    PushPull,
    Reply,
    Tell,
    Timing,
)
from colony.shared import __version__, subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.messages import (
    Gossip,
    MemberChanged,
    MembersReply,
    MembersRequest,
    MemberUpdate,
    MemberView,
    NodeMeta,
    NodeMetrics,
    PingReqRequest,
)
from colony.shared.runner import Context, Refused

MAX_META_BYTES = 2048
"""A member's metadata, encoded, at most: membership must stay cheap to gossip."""
NACK = 504
"""A ping-req helper's answer when the target did not answer it either."""


class MembershipService:
    name = "membership"
    description = "SWIM-style gossip membership: who is alive, suspect, dead or left"

    def __init__(self, timing: Timing | None = None, max_members: int = 1024) -> None:
        self.timing = timing or Timing()
        self.max_members = max_members
        self.core: Membership | None = None
        self.ctx: Context | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        node = ctx.config.node
        meta = NodeMeta(
            nats_url=ctx.config.nats.servers[0],
            roles=tuple(node.roles),
            labels=dict(node.labels),
            version=__version__,
        )
        core = self.core = Membership(
            node.id, meta, ctx.clock.monotonic(), random.Random(), self.timing
        )
        me = node.id
        await ctx.serve(subjects.member_ping(me), self._on_ping)
        # concurrent: a helper's probe waits up to a probe timeout, and must not
        # make the ping-reqs queued behind it miss their requesters' deadlines
        await ctx.serve(subjects.member_ping_req(me), self._on_ping_req, concurrent=True)
        await ctx.serve(subjects.member_sync(me), self._on_sync)
        await ctx.serve(subjects.members(me), self._on_members)
        self._listen(subjects.member_tell(me), self._on_gossip)
        self._listen(subjects.member_news(), self._on_gossip)
        self._listen(subjects.member_announce(), self._on_announce)
        self._listen(subjects.node_metrics(me), self._on_metrics)
        next_announce = 0.0
        try:
            while True:
                now = ctx.clock.monotonic()
                if core.lonely and now >= next_announce:
                    next_announce = now + self.timing.period
                    myself = [u for u in core.full_state() if u.node == me]
                    await ctx.bus.publish(subjects.member_announce(), self._gossip(myself))
                self._execute(core.tick(now))
                await ctx.clock.sleep(self.timing.period / 4)
        finally:
            # Leaving: stop listening (nothing may change our mind now), then tell
            # everyone while the connection is still up.
            for task in self.tasks:
                task.cancel()
            news = [i for i in core.leave(ctx.clock.monotonic()) if isinstance(i, Broadcast)]
            with contextlib.suppress(BusError, TimeoutError, nats.errors.Error):
                for instruction in news:
                    await ctx.bus.publish(subjects.member_news(), self._gossip(instruction.updates))
                await ctx.bus.nc.flush(timeout=1)

    # --- incoming ------------------------------------------------------------------

    async def _on_ping(self, ping: Gossip) -> Gossip:
        self._not_me(ping.sender)
        out = self._core.ping_received(self._now(), ping.sender, self._heard(ping))
        return self._gossip(self._execute(out), seq=ping.seq)

    async def _on_ping_req(self, request: PingReqRequest) -> Gossip:
        self._not_me(request.sender)
        updates = self._heard(request)
        self._execute(self._core.gossip_received(self._now(), request.sender, updates))
        ping = self._gossip([], seq=request.seq)
        try:
            ack = await self._bus.request(
                subjects.member_ping(request.target), ping, timeout=self.timing.probe_timeout
            )
        except BusError as e:
            raise Refused(NACK, f"{request.target} did not answer: {e}") from None
        relayed = self._heard(ack)
        self._execute(self._core.gossip_received(self._now(), request.target, relayed))
        return self._gossip([], seq=request.seq)

    async def _on_sync(self, state: Gossip) -> Gossip:
        self._not_me(state.sender)
        mine = self._core.full_state()
        self._execute(self._core.gossip_received(self._now(), state.sender, self._heard(state)))
        return self._gossip(mine)

    async def _on_gossip(self, gossip: Gossip) -> None:
        if gossip.sender != self._core.me:
            self._execute(
                self._core.gossip_received(self._now(), gossip.sender, self._heard(gossip))
            )

    async def _on_announce(self, gossip: Gossip) -> None:
        if gossip.sender != self._core.me:
            self._execute(
                self._core.announce_received(self._now(), gossip.sender, self._heard(gossip))
            )

    async def _on_members(self, _request: MembersRequest) -> MembersReply:
        now = self._now()
        views = [
            MemberView(m.node, m.status, m.incarnation, m.meta, round(now - m.changed_at, 3))
            for m in sorted(self._core.members.values(), key=lambda m: m.node)
        ]
        return MembersReply(observer=self._core.me, members=views, health=self._core.health)

    async def _on_metrics(self, sample: NodeMetrics) -> None:
        """The node's free resources ride with its membership, updated without flooding."""
        me = self._core.members[self._core.me]
        old = me.meta.free
        changed_cpu = abs(sample.free.cpu - old.cpu) > 0.1 * max(sample.capacity.cpu, 0.01)
        changed_memory = abs(sample.free.memory - old.memory) > 0.1 * max(sample.capacity.memory, 1)
        if changed_cpu or changed_memory:
            meta = msgspec.structs.replace(me.meta, free=sample.free)
            self._execute(self._core.update_meta(self._now(), meta))

    # --- carrying out instructions --------------------------------------------------

    def _execute(self, instructions: list[Instruction]) -> list[MemberUpdate]:
        """Start what the core asked for; return the updates of a Reply, if any."""
        reply: list[MemberUpdate] = []
        for i in instructions:
            if isinstance(i, Reply):
                reply = i.updates
            elif isinstance(i, Ping):
                self._spawn(self._ping(i))
            elif isinstance(i, PingReq):
                self._spawn(self._ping_req(i))
            elif isinstance(i, PushPull):
                self._spawn(self._push_pull(i))
            elif isinstance(i, Tell):
                self._spawn(self._bus.publish(subjects.member_tell(i.to), self._gossip(i.updates)))
            elif isinstance(i, Broadcast):
                self._spawn(self._bus.publish(subjects.member_news(), self._gossip(i.updates)))
            elif isinstance(i, Changed):
                self._spawn(self._changed(i))
        return reply

    async def _ping(self, ping: Ping) -> None:
        message = self._gossip(ping.updates, seq=ping.seq)
        ack = await self._bus.request(subjects.member_ping(ping.to), message, timeout=ping.timeout)
        self._execute(self._core.ack_received(self._now(), ping.to, ping.seq, self._heard(ack)))

    async def _ping_req(self, req: PingReq) -> None:
        message = PingReqRequest(
            sender=self._core.me, target=req.target, seq=req.seq, updates=req.updates
        )
        try:
            ack = await self._bus.request(
                subjects.member_ping_req(req.via), message, timeout=req.timeout
            )
        except RemoteError as e:
            if e.code == NACK:
                self._core.nack_received(req.seq)
            return
        self._execute(self._core.ack_received(self._now(), req.via, req.seq, self._heard(ack)))

    async def _push_pull(self, push: PushPull) -> None:
        theirs = await self._bus.request(
            subjects.member_sync(push.to), self._gossip(push.state), timeout=self.timing.period
        )
        self._execute(self._core.gossip_received(self._now(), push.to, self._heard(theirs)))

    async def _changed(self, change: Changed) -> None:
        assert self.ctx is not None
        self.ctx.log.info(
            "member changed",
            extra={"member": change.node, "status": change.status, "cause": change.cause},
        )
        event = MemberChanged(
            observer=self._core.me,
            node=change.node,
            status=change.status,
            incarnation=change.incarnation,
            previous=change.previous,
            cause=change.cause,
        )
        await self._bus.publish(subjects.member_changes(change.node), event)

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        """One protocol exchange ended: an unanswered one is what the protocol expects."""
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error and not isinstance(error, BusError | TimeoutError):
            assert self.ctx is not None
            self.ctx.log.error("protocol exchange failed", exc_info=error)

    # --- helpers -------------------------------------------------------------------

    def _not_me(self, sender: str) -> None:
        """Refuse a request that claims to come from this member (a twin, or a spoof)."""
        if sender == self._core.me:
            self._log_drop(sender, "a message from a member with this member's own id")
            raise Refused(409, f"{sender} is this member's own id")

    def _heard(self, gossip: Gossip) -> list[MemberUpdate]:
        return self._checked(gossip.sender, gossip.updates)

    def _checked(self, sender: str, updates: list[MemberUpdate]) -> list[MemberUpdate]:
        """Refuse what no honest member sends: a flood, lies about the sender, fat metadata."""
        if len(updates) > self.max_members:
            self._log_drop(sender, f"{len(updates)} updates in one message")
            return []
        lies = [u for u in updates if u.node == sender and u.status in ("suspect", "dead")]
        if lies:
            self._log_drop(sender, "a member never suspects or buries itself")
        fat = [u for u in updates if u.meta and len(msgspec.json.encode(u.meta)) > MAX_META_BYTES]
        if fat:
            self._log_drop(sender, f"metadata over {MAX_META_BYTES} bytes")
        return [u for u in updates if u not in lies and u not in fat]

    def _log_drop(self, sender: str, why: str) -> None:
        assert self.ctx is not None
        self.ctx.log.warning("dropped gossip", extra={"sender": sender, "reason": why})

    def _listen(self, subject, handler) -> None:
        async def listen() -> None:
            async for message in await self._bus.subscribe(subject):
                await handler(message)

        self._spawn(listen())

    def _gossip(self, updates: list[MemberUpdate], seq: int = 0) -> Gossip:
        return Gossip(sender=self._core.me, seq=seq, updates=updates)

    def _now(self) -> float:
        assert self.ctx is not None
        return self.ctx.clock.monotonic()

    @property
    def _core(self) -> Membership:
        assert self.core is not None
        return self.core

    @property
    def _bus(self):
        assert self.ctx is not None
        return self.ctx.bus
