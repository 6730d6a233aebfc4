"""The membership service: the SWIM core (`state.py`) wired to NATS.

Loop: every quarter period, `tick` the core and carry out its instructions.
Pings, ping-reqs and push-pulls are NATS requests to the peer's own
subjects; tells are plain publishes; broadcasts are one publish on the news
subject, which the server fans out to every member; every state change is
published as a change event; announcements (the core says when) are one
publish on the announce subject. That is how a node joins knowing only a
NATS URL: every member that hears it pings it and admits it once it
answers (one that held a past life of it dead takes it alive again at
once), and push-pulls with its first peers bring it the rest.

Everything that arrives is checked at the edge (ids that are not subject
tokens, lies about the sender, floods, fat metadata) and a bad message is
dropped with one log line; no message can end a listener. The node's free
resources are taken only from metrics its own monitor signed with the cluster
secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import msgspec

from colony.membership.metrics import MembershipMetrics
from colony.membership.state import (
    Announce,
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
    valid_id,
)
from colony.shared import __version__, subjects
from colony.shared.bus import BusError, NoResponders, RemoteError
from colony.shared.messages import (
    MAX_INT,
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
from colony.shared.signing import BadSignature, read_secret, verify

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
        self.secret: bytes | None = None
        """The cluster secret that the node's monitor signs its metrics with (None: the
        node has none configured, and neither does its monitor)."""
        self._metrics_ts = 0.0
        """The time of the last metrics sample taken: an older one is a replay."""
        self.metrics = MembershipMetrics()

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        node = ctx.config.node
        meta = NodeMeta(
            nats_url=ctx.config.nats.servers[0],
            roles=tuple(node.roles),
            labels=dict(node.labels),
            version=__version__,
        )
        secret_file = ctx.config.consensus.secret_file
        self.secret = read_secret(secret_file) if secret_file else None
        core = self.core = Membership(
            node.id, meta, ctx.clock.monotonic(), random.Random(), self.timing, self.max_members
        )
        me = node.id
        # Subscribed before the first announcement: the tells answering it must not
        # arrive before we listen.
        counted = self.metrics.receiving
        await self._listen(subjects.member_tell(me), counted("gossip", self._on_gossip))
        await self._listen(subjects.member_news(), counted("gossip", self._on_gossip))
        await self._listen(subjects.member_announce(), counted("announce", self._on_announce))
        await self._listen(subjects.node_metrics(me), self._on_metrics)
        await ctx.serve(subjects.member_ping(me), counted("ping", self._on_ping))
        # concurrent: a helper's probe waits up to a probe timeout, and must not
        # make the ping-reqs queued behind it miss their requesters' deadlines
        ping_req = counted("ping_req", self._on_ping_req)
        await ctx.serve(subjects.member_ping_req(me), ping_req, concurrent=True)
        await ctx.serve(subjects.member_sync(me), counted("sync", self._on_sync))
        await ctx.serve(subjects.members(me), self._on_members)
        await self.metrics.serve(ctx, core)
        try:
            while True:
                self._execute(core.tick(ctx.clock.monotonic()))
                await ctx.clock.sleep(self.timing.period / 4)
        finally:
            # Leaving: stop listening (nothing may change our mind now), then tell
            # everyone while the connection is still up.
            for task in self.tasks:
                task.cancel()
            news = [i for i in core.leave(ctx.clock.monotonic()) if isinstance(i, Broadcast)]
            with contextlib.suppress(BusError):
                for instruction in news:
                    await ctx.bus.publish(subjects.member_news(), self._gossip(instruction.updates))
                await ctx.bus.flush(timeout=1)

    # --- incoming ------------------------------------------------------------------

    async def _on_ping(self, ping: Gossip) -> Gossip:
        self._refuse_sender(ping.sender)
        out = self._core.ping_received(self._now(), ping.sender, self._heard(ping))
        return self._gossip(self._execute(out), seq=ping.seq)

    async def _on_ping_req(self, request: PingReqRequest) -> Gossip:
        self._refuse_sender(request.sender)
        if not valid_id(request.target):
            self._log_drop(request.sender, f"a ping-req for {request.target[:80]!r}, not a node id")
            raise Refused(400, "the target is not a node id")
        updates = self._heard(request)
        self._execute(self._core.told(self._now(), request.sender, updates))
        ping = self._gossip([], seq=request.seq)
        try:
            ack = await self._bus.request(
                subjects.member_ping(request.target), ping, timeout=self.timing.probe_timeout
            )
        except BusError as e:
            raise Refused(NACK, f"{request.target} did not answer: {e}") from None
        relayed = self._heard(ack)
        self._execute(self._core.told(self._now(), request.target, relayed))
        return self._gossip([], seq=request.seq)

    async def _on_sync(self, state: Gossip) -> Gossip:
        self._refuse_sender(state.sender)
        mine = self._core.full_state()
        # Pushed to us unasked: newcomers in it must answer our ping before they count.
        self._execute(self._core.told(self._now(), state.sender, self._heard(state)))
        return self._gossip(mine)

    async def _on_gossip(self, gossip: Gossip) -> None:
        if gossip.sender != self._core.me and self._sender_ok(gossip.sender):
            self._execute(self._core.told(self._now(), gossip.sender, self._heard(gossip)))

    async def _on_announce(self, gossip: Gossip) -> None:
        if gossip.sender != self._core.me and self._sender_ok(gossip.sender):
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
        """The node's free resources ride with its membership, updated without flooding.

        Leadership follows them, so only a sample of this node signed by its monitor
        with the cluster secret counts (anyone on the bus can publish on the subject)."""
        refused = self._refuse_metrics(sample)
        if refused:
            assert self.ctx is not None
            self.ctx.log.warning("dropped metrics", extra={"node": sample.node, "reason": refused})
            return
        self._metrics_ts = sample.ts
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
            self.metrics.executed(i, self._core.me)
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
            elif isinstance(i, Announce):
                announcement = self._gossip(i.updates)
                self._spawn(self._bus.publish(subjects.member_announce(), announcement))
            elif isinstance(i, Changed):
                self._spawn(self._changed(i))
        return reply

    async def _ping(self, ping: Ping) -> None:
        message = self._gossip(ping.updates, seq=ping.seq)
        try:
            ack = await self._bus.request(
                subjects.member_ping(ping.to), message, timeout=ping.timeout
            )
        except NoResponders:
            self._core.unanswerable(ping.seq)  # nothing there: an invented name, or gone
            return
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

    def _refuse_sender(self, sender: str) -> None:
        """Refuse a request from a sender that is not a node id, or that claims to be
        this member (a twin, or a spoof)."""
        if not self._sender_ok(sender):
            raise Refused(400, "the sender is not a node id")
        if sender == self._core.me:
            self._log_drop(sender, "a message from a member with this member's own id")
            raise Refused(409, f"{sender} is this member's own id")

    def _sender_ok(self, sender: str) -> bool:
        if valid_id(sender):
            return True
        self._log_drop(sender, "the sender is not a node id (one subject token)")
        return False

    def _heard(self, gossip: Gossip) -> list[MemberUpdate]:
        return self._checked(gossip.sender, gossip.updates)

    def _checked(self, sender: str, updates: list[MemberUpdate]) -> list[MemberUpdate]:
        """Refuse what no honest member sends: a flood, ids that are not subject tokens,
        lies about the sender, fat metadata. One log line per message, whatever its size."""
        if len(updates) > self.max_members:
            self._log_drop(sender, f"{len(updates)} updates in one message")
            return []
        bad = [u for u in updates if not _well_formed(u)]
        if bad:
            # an id would name subjects (its pings, its change events) that cannot exist
            self._log_drop(sender, f"{len(bad)} updates with an id or incarnation out of bounds")
        lies = [u for u in updates if u.node == sender and u.status in ("suspect", "dead")]
        if lies:
            self._log_drop(sender, "a member never suspects or buries itself")
        fat = [u for u in updates if u.meta and len(msgspec.json.encode(u.meta)) > MAX_META_BYTES]
        if fat:
            self._log_drop(sender, f"metadata over {MAX_META_BYTES} bytes")
        dropped = bad + lies + fat
        return [u for u in updates if u not in dropped] if dropped else updates

    def _refuse_metrics(self, sample: NodeMetrics) -> str:
        """Why this metrics sample must not set our free resources ('' if it may)."""
        if sample.node != self._core.me:
            return "a sample of another node on this node's subject"
        if self.secret is not None:
            try:
                verify(self.secret, sample)
            except BadSignature as e:
                return str(e)
        if sample.ts <= self._metrics_ts:
            return "not newer than the last sample taken (a replay?)"
        return ""

    def _log_drop(self, sender: str, why: str) -> None:
        assert self.ctx is not None
        self.ctx.log.warning("dropped gossip", extra={"sender": sender[:80], "reason": why})

    async def _listen(self, subject, handler) -> None:
        """Subscribe now; handle each message in order. No message can end the listening,
        and if it ends anyway the runner stops the service (its supervisor restarts it)."""
        assert self.ctx is not None
        await self.ctx.listen(subject, handler)

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


def _well_formed(update: MemberUpdate) -> bool:
    """Ids are subject tokens; incarnations are counters every reader can hold exactly."""
    ids_ok = valid_id(update.node) and (not update.by or valid_id(update.by))
    return ids_ok and 0 <= update.incarnation <= MAX_INT
