"""The curator: on the node acting as manager, it keeps the desired state matching the jobs.

Every node runs one; it stands by until its own node acts as manager — told by
`manager.acting` events about its node, and by its node's consensus status, asked
every `poll` seconds in case an event was missed — and stops acting when either says
so, or when the database refuses one of its writes for a stale epoch (its outcome's
code says FENCED).

While acting, at epoch E:

    read the change stream's last change index S (before the reads: nothing is missed)
    load the view (nodes, labels, instances, jobs; paged), then ask membership for its
    view (its changes from then on queue up and apply after its answer)
    follow the changes after S, and membership's changes (as this node sees them)
    loop:
        publish the endpoint sets that changed
        reconcile (pure, at the wall clock's `now`) -> actions -> proposals at epoch E
        (several commands each)
        apply what committed to the view (its own changes arrive later: old news), and
        publish the endpoint sets that changed with it (an instance leaves its job's set
        at the commit of its stop)
        wait for an event (or a node unknown to membership for too long, or the time
        the reconcile said something time-based changes: `Actions.wake`), gather more
        for `debounce` seconds, apply them
    every `resync` seconds, or when following fails: load it all again

It serves `curator.plan` and `endpoints` only while acting, from its first view on
(served then, unserved when it stops), so a client that finds no responder knows no
manager acts now, and asks again.

Service discovery: each job's endpoint set (`endpoints.every_job`) is published on
`endpoints_changed(job)` whenever it differs from the one this curator last published
while acting, so every set once when it starts acting (a new manager says them all
again). Each carries the epoch and the change index the view reflects; a curator that
no longer acts at its epoch publishes nothing more. ENDPOINTS_STREAM keeps the last set
of every job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from colony.curator import endpoints
from colony.curator import reconcile as rules
from colony.curator.metrics import CuratorMetrics
from colony.curator.view import View, fill, load
from colony.shared import changes, subjects, tasks
from colony.shared.bus import BusError
from colony.shared.cluster import Cluster
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    FENCED,
    Command,
    Endpoint,
    EndpointsReply,
    EndpointsRequest,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobPromote,
    JobRollback,
    ManagerActing,
    MemberChanged,
    MembersRequest,
    NodeDrained,
    NodeStatus,
    PlanReply,
    PlanRequest,
    ProposeReply,
    RolloutProgress,
    ServiceMetrics,
    ServiceMetricsRequest,
    new_id,
)
from colony.shared.runner import Context, Refused
from colony.shared.signing import read_secret

DEBOUNCE = 0.005
"""Seconds to gather more events after the first before reconciling once for all."""
RESYNC = 30.0
"""Seconds between two full reads of the view (a change the stream lost is found then)."""
POLL = 1.0
"""Seconds between two looks at the node's own consensus status."""
RETRY = 0.5
"""Seconds between two tries of a proposal no voter answered (same ids: never twice)."""
PROPOSAL_BYTES = 192 * 1024
"""A proposal's commands, encoded, at most: consensus refuses a log entry over 256 KiB,
and the entry adds each proposal's id and epoch around its command."""
PROPOSAL_COMMANDS = 512
"""Commands in one proposal at most (consensus refuses more proposals in one entry)."""
CATCH_UP = 1.0
"""Seconds a fresh view may wait for the changes made while it was read."""
RESYNC_NOW = "resync"
"""An event: read the whole view again (following the stream failed)."""
WAKE_AT_LEAST = 0.05
"""Seconds a time-based wake is at least away (a wake already due must not spin)."""
ENDPOINTS_BYTES = 256 * 2**20
"""ENDPOINTS_STREAM's bound: one set per job, most a few KiB."""
ENDPOINTS_MSGS = 1_000_000
"""...and jobs' sets kept at most (one message per job: the last)."""


class Deposed(Exception):
    """This node no longer acts as manager at the epoch it wrote with."""


class CuratorService:
    name = "curator"
    description = "The manager's reconcile loop: places, replaces and stops job instances"

    def __init__(
        self,
        *,
        debounce: float = DEBOUNCE,
        resync: float = RESYNC,
        poll: float = POLL,
        token: Callable[[], str] = rules.token,
    ) -> None:
        self.debounce, self.resync, self.poll, self.token = debounce, resync, poll, token
        self.deciding = 0.0
        """Seconds the last reconcile took to decide."""
        self.epoch = 0
        """The epoch this node acts as manager at (0: standing by)."""
        self.fenced = 0
        """The highest epoch a write was refused at: never acted at again."""
        self.lease_changed = asyncio.Event()
        self.view: View | None = None
        """The view while acting (None: standing by, or still loading it)."""
        self.queue: asyncio.Queue[Any] | None = None
        """The events of the current turn of acting."""
        self.metrics = CuratorMetrics()
        self.management: Management | None = None
        self.planning = False
        """Whether it serves `curator.plan` and `endpoints` (while acting, from its first
        view on)."""
        self.absent_since: dict[str, float] = {}
        """Recorded nodes membership does not know -> since when (monotonic), while acting."""
        self.published: dict[str, tuple[str, list[Endpoint]]] = {}
        """Job -> its endpoint set (port name, endpoints) as last published while acting."""
        self.index = 0
        """The change index the view reflects (as far as the stream brought it)."""
        self.stream_ready = False
        """Whether ENDPOINTS_STREAM was made (or brought to its configuration) while acting."""
        self.replicas = 1
        """ENDPOINTS_STREAM's replicas: as many as the change stream's."""

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        self.me = ctx.config.node.id
        self.log = ctx.log
        secret_file = ctx.config.consensus.secret_file
        self.secret = read_secret(secret_file) if secret_file else None
        await ctx.listen(subjects.manager_acting(), self._on_acting)
        await ctx.listen(subjects.member_changes(subjects.ANY), self._on_member)
        await ctx.serve(subjects.service_metrics(self.me, self.name), self._on_metrics)
        poller = asyncio.create_task(self._poll_status())
        try:
            while True:
                while not self.epoch:
                    self.lease_changed.clear()
                    await self.lease_changed.wait()
                await self._act(self.epoch)
        finally:
            await tasks.cancel(poller)

    # --- knowing whether to act -----------------------------------------------------------

    async def _on_acting(self, event: ManagerActing) -> None:
        if event.node == self.me:
            if event.acting:
                self._set_epoch(event.epoch, "its node acts as manager")
            elif event.epoch >= self.epoch:
                self._set_epoch(0, f"its node stopped acting as manager: {event.reason}")
        elif event.acting and self.epoch and event.epoch > self.epoch:
            self._set_epoch(0, f"node {event.node} acts as manager at epoch {event.epoch}")

    async def _poll_status(self) -> None:
        cluster = Cluster(self.ctx.bus, ask=max(self.poll, 0.5))
        while True:
            status = await cluster.status(self.me)  # None if it does not answer
            lease = status.manager if status else None
            if status and lease and lease.epoch >= self.epoch:  # an older answer says nothing
                if status.acting and lease.holder == self.me:
                    self._set_epoch(lease.epoch, "its node's consensus says it acts as manager")
                else:
                    self._set_epoch(0, "its node's consensus says it does not act as manager")
            await asyncio.sleep(self.poll)

    def _set_epoch(self, epoch: int, why: str) -> None:
        if epoch == self.epoch or (epoch and epoch <= self.fenced):
            return
        self.log.info(
            "acting as manager" if epoch else "standing by",
            extra={"epoch": epoch or self.epoch, "why": why},
        )
        self.epoch = self.metrics.epoch = epoch
        self.lease_changed.set()

    # --- acting ---------------------------------------------------------------------------

    async def _act(self, epoch: int) -> None:
        """Act at `epoch` until this node no longer does."""
        voters = await self._voters()
        self.management = Management(self.ctx.bus, voters)
        self.absent_since, self.published, self.stream_ready, self.index = {}, {}, False, 0
        self.replicas = self.ctx.config.consensus.change_stream_replicas or min(3, len(voters))
        session = asyncio.create_task(self._session(epoch), name=f"curator epoch {epoch}")
        ended = asyncio.create_task(self._until_not_acting(epoch))
        try:
            await asyncio.wait({session, ended}, return_when=asyncio.FIRST_COMPLETED)
            if session.done() and not session.cancelled():
                error = session.exception()
                if isinstance(error, Deposed):
                    self.fenced = max(self.fenced, epoch)
                    self._set_epoch(0, str(error))
                elif error is not None:  # a bug: start over from a fresh read
                    self.log.error("acting failed; starting over", exc_info=error)
                    await asyncio.sleep(1.0)
        finally:
            await tasks.cancel(session, ended)
            if self.planning:
                for served in (subjects.curator_plan(), subjects.endpoints()):
                    with contextlib.suppress(Exception):
                        await self.ctx.unserve(served)
                self.planning = False
            self.view = self.queue = None
            self.metrics.objects = {}

    async def _until_not_acting(self, epoch: int) -> None:
        while self.epoch == epoch:
            self.lease_changed.clear()
            await self.lease_changed.wait()

    async def _session(self, epoch: int) -> None:
        """Turns of: a full read, then following changes until the next resync."""
        while True:
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self.queue = queue  # membership's changes from now on
            try:
                start = await changes.last_index(self.ctx.bus, self.secret)
                view = await load(self.management)
                # Membership's changes so far are in its answer; those from now on queue
                # up, and apply after it.
                while not queue.empty():
                    queue.get_nowait()
                members = await self._members()
            except (ManagementError, BusError) as e:
                self.log.warning("could not read the view; trying again", extra={"why": str(e)})
                await asyncio.sleep(1.0)
                continue
            view.members, view.answered = members or {}, members is not None
            self.view = view
            if not self.planning:  # from its first view on (asked before, none answers)
                await self.ctx.serve(subjects.curator_plan(), self._on_plan)
                await self.ctx.serve(subjects.endpoints(), self._on_endpoints)
                self.planning = True
            if not self.stream_ready:
                self.stream_ready = await self._endpoints_stream()
            self.log.info(
                "view loaded", extra={"epoch": epoch, "after_change": start, **_sizes(view)}
            )
            try:
                target = await changes.last_index(self.ctx.bus, self.secret)
            except BusError:
                target = start  # catching up is an optimisation: go on without it
            follower = asyncio.create_task(self._follow(start, queue))
            try:
                await self._loop(epoch, view, queue, start, target)
            finally:
                await tasks.cancel(follower)

    async def _loop(
        self, epoch: int, view: View, queue: asyncio.Queue[Any], start: int, target: int
    ) -> None:
        """Reconcile whenever the view changed, until the next resync. Not before the
        changes made during the reads (up to change `target`) are in: a kind read early
        (nodes) would look older than one read late (jobs)."""
        resync_at = time.monotonic() + self.resync
        caught_up_by = time.monotonic() + CATCH_UP
        last, changed, timer = start, True, None
        while True:
            ready = last >= target or time.monotonic() >= caught_up_by
            dead_at = self._absences(view)
            if changed and ready:
                self.index = max(self.index, last)
                await self._publish(epoch, view)
                timer = await self._reconcile(epoch, view)
                changed = False
            due = [resync_at, dead_at or resync_at, timer or resync_at]
            wake = min(due) if ready else caught_up_by
            events = await self._gather(queue, wake)
            if events is None:
                if time.monotonic() >= resync_at:
                    return
                changed = True  # caught up by the clock, a node's absence ran out, or
                # a time-based rule is due
            if RESYNC_NOW in (events or ()):
                return
            for event in events or ():
                if isinstance(event, MemberChanged):
                    changed |= view.members.get(event.node) != event.status
                    view.members[event.node] = event.status
                else:
                    last = max(last, event.index)
                    changed |= view.apply(event)
            if view.missing():
                try:
                    await fill(view, self.management)
                except (ManagementError, BusError) as e:
                    self.log.warning("could not read a job's spec", extra={"why": str(e)})
                    return

    async def _gather(self, queue: asyncio.Queue[Any], deadline: float) -> list[Any] | None:
        """The next events: the first one, then whatever arrives within `debounce` (or as
        long as the last reconcile took to decide, if longer: under a stream of events a
        large view is reconciled at most half the time); None once `deadline` passed
        without any."""
        try:
            first = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            return None
        await asyncio.sleep(max(self.debounce, self.deciding))
        events = [first]
        while not queue.empty():
            events.append(queue.get_nowait())
        return events

    async def _follow(self, after: int, queue: asyncio.Queue[Any]) -> None:
        try:
            # every kind: the view takes its own kinds, and the loop sees how far it got
            async for change in changes.follow(
                self.ctx.bus, after=after, secret=self.secret, logger=self.log
            ):
                queue.put_nowait(change)
        except BusError as e:
            self.log.warning("following the changes failed", extra={"why": str(e)})
            await asyncio.sleep(1.0)
        queue.put_nowait(RESYNC_NOW)

    async def _on_member(self, event: MemberChanged) -> None:
        if event.observer == self.me and self.queue is not None:
            self.queue.put_nowait(event)

    async def _members(self) -> dict[str, str] | None:
        """Membership's statuses as this node sees them (None if it does not answer: the
        recorded statuses stand until it does)."""
        try:
            reply = await self.ctx.bus.request(subjects.members(self.me), MembersRequest())
        except BusError as e:
            self.log.warning("membership did not answer", extra={"why": str(e)})
            return None
        return {m.node: m.status for m in reply.members}

    def _absences(self, view: View) -> float | None:
        """Tell the view for how long each recorded node has been unknown to membership
        (once it answered); return when the next of them is to be taken for dead
        (monotonic; None: none is)."""
        if not view.answered:
            view.absent = {}
            return None
        now = time.monotonic()
        since = self.absent_since
        since = self.absent_since = {
            node: since.get(node, now) for node in view.nodes.keys() - view.members.keys()
        }
        view.absent = {node: now - at for node, at in since.items()}
        pending = [
            at + rules.DEAD_AFTER
            for node, at in since.items()
            if now - at < rules.DEAD_AFTER and view.nodes[node].status not in rules.GONE
        ]
        return min(pending, default=None)

    async def _voters(self) -> list[str]:
        """Who takes proposals: the configured voters, else those answering discovery
        (this node among them: it acts, so it votes)."""
        configured = self.ctx.config.consensus.voters
        return configured or sorted({*await Cluster(self.ctx.bus).nodes(), self.me})

    # --- deciding and committing ------------------------------------------------------------

    async def _reconcile(self, epoch: int, view: View) -> float | None:
        """Reconcile and commit what it decided; return when to reconcile again even if
        nothing happens (monotonic; None: no time-based rule waits)."""
        started = time.perf_counter()
        view.now = now = time.time()  # the clock entries are stamped with (Change.ts)
        actions = rules.reconcile(view, self.token)
        self.deciding = time.perf_counter() - started
        self.metrics.reconcile.observe(self.deciding)
        self.metrics.objects = _sizes(view)
        wake = actions.wake  # when a time-based rule decides otherwise next
        timer = time.monotonic() + max(wake - now, WAKE_AT_LEAST) if wake else None
        if not actions:
            return timer
        for batch in _proposals(actions.commands()):
            reply = await self._propose(epoch, batch)
            if reply is None:
                return timer
            for command, outcome in zip(batch, reply.outcomes, strict=False):
                if outcome.ok:
                    view.committed(command, reply.index, time.time())
                    self._log_committed(command)
                elif outcome.code == FENCED:
                    raise Deposed(f"the database refused a write: {outcome.error}")
                else:
                    self.log.warning(
                        "write refused",
                        extra={"command": _tag(command), "why": outcome.error, "epoch": epoch},
                    )
            await self._publish(epoch, view)  # e.g. stopped instances leave their sets
        return timer

    async def _propose(self, epoch: int, batch: list[Command]) -> ProposeReply | None:
        """Commit `batch`, trying again with the same ids while no voter answers: a try that
        did commit is answered with its first outcome, never applied twice."""
        ids = [new_id() for _ in batch]
        while True:
            try:
                return await self.management.propose(*batch, ids=ids, epoch=epoch)
            except ManagementError as e:
                if not e.retryable:
                    self.log.error("proposal refused as invalid", extra={"why": str(e)})
                    return None
                self.log.warning("proposal not answered; trying again", extra={"why": str(e)})
            if self.epoch != epoch:
                raise Deposed(f"no longer acting at epoch {epoch}")
            await asyncio.sleep(RETRY)

    def _log_committed(self, command: Command) -> None:
        log, count = self.log.info, self.metrics.committed.inc
        match command:
            case NodeStatus(node=node, status=status, reason=reason):
                count("node_status")
                log("node status", extra={"node": node, "status": status, "reason": reason})
            case InstancesStop(ids=ids, reason=reason):
                count("stop", len(ids))
                log("stop", extra={"instances": ids, "reason": reason})
            case InstancesPlace(placements=placements):
                count("place", len(placements))
                for p in placements:
                    extra = {"instance": p.id, "node": p.node, "slot": p.slot, "reason": p.reason}
                    log("place", extra={**extra, "replaces": p.replaces} if p.replaces else extra)
            case JobBlocked(job=job, reason=reason):
                count("job_blocked")
                log("job blocked" if reason else "job unblocked", extra={"job": job, "why": reason})
            case InstancesRemove(ids=ids):
                count("remove", len(ids))
                log("remove", extra={"instances": ids})
            case RolloutProgress(job=job, version=version, status=status, reason=reason):
                count("rollout")
                said = {"job": job, "version": version, "batch": command.batch}
                counts = {"placed": command.placed, "healthy": command.healthy}
                if status == "running":
                    log("rollout progress", extra={**said, **counts})
                else:
                    log(f"rollout {status}", extra={**said, **counts, "why": reason})
            case JobPromote(job=job, reason=reason):
                count("promote")
                log("promoted", extra={"job": job, "why": reason})
            case JobRollback(job=job, version=version, cause=cause):
                count("rollback")
                log("rolled back", extra={"job": job, "to_version": version, "why": cause})
            case NodeDrained(node=node):
                count("node_drained")
                log("node drained", extra={"node": node})

    # --- requests -------------------------------------------------------------------------

    async def _on_plan(self, request: PlanRequest) -> PlanReply:
        """What submitting a job would do (served only while acting)."""
        view, epoch = self.view, self.epoch
        if view is None or not epoch:
            raise Refused(503, "the manager is still reading its view: ask again")
        view.now = time.time()  # as a reconcile now would see it
        reply = rules.plan(view, request.spec, epoch, self.token)
        return msgspec.structs.replace(reply, cause=request.cause)

    async def _on_endpoints(self, request: EndpointsRequest) -> EndpointsReply:
        """Where a job's healthy instances answer (served only while acting)."""
        view, epoch = self.view, self.epoch
        if view is None or not epoch:
            raise Refused(503, "the manager is still reading its view: ask again")
        try:
            port, found = endpoints.job_endpoints(view, request.job, request.port)
        except endpoints.UnknownJob as e:
            raise Refused(404, str(e)) from None
        except endpoints.UnknownPort as e:
            raise Refused(400, str(e)) from None
        return EndpointsReply(
            job=request.job, port=port, endpoints=found, epoch=epoch, index=self.index
        )

    # --- service discovery ------------------------------------------------------------------

    async def _endpoints_stream(self) -> bool:
        """Make ENDPOINTS_STREAM (the last set of every job); False if JetStream refused
        (the sets are still published: watchers miss only the last one; tried again at
        the next full read)."""
        try:
            await self.ctx.bus.ensure_stream(
                subjects.ENDPOINTS_STREAM,
                [subjects.endpoints_changed(subjects.ANY).name],
                replicas=self.replicas,
                max_msgs_per_subject=1,
                max_msgs=ENDPOINTS_MSGS,
                max_bytes=ENDPOINTS_BYTES,
            )
        except BusError as e:
            self.log.warning(
                "could not make the endpoints stream",
                extra={"stream": subjects.ENDPOINTS_STREAM, "why": str(e)},
            )
            return False
        return True

    async def _publish(self, epoch: int, view: View) -> None:
        """Publish every job's endpoint set that differs from the one last published (a
        job gone from the view: an empty set, once). Nothing once no longer acting at
        `epoch`: a deposed manager's word would be stale."""
        sets = endpoints.every_job(view)
        for job in self.published.keys() - sets.keys():
            sets[job] = (self.published.pop(job)[0], [])
        for job, (port, found) in sorted(sets.items()):
            if self.epoch != epoch:
                return
            if self.published.get(job) == (port, found):
                continue
            if job in view.jobs:
                self.published[job] = (port, found)
            said = EndpointsReply(
                job=job, port=port, endpoints=found, epoch=epoch, index=self.index
            )
            try:
                await self.ctx.bus.publish(subjects.endpoints_changed(job), said)
            except BusError as e:  # e.g. a set too large for one message: ask `endpoints`
                self.log.warning(
                    "could not publish a job's endpoints", extra={"job": job, "why": str(e)}
                )

    async def _on_metrics(self, _request: ServiceMetricsRequest) -> ServiceMetrics:
        return ServiceMetrics(node=self.me, service=self.name, families=self.metrics.families())


def _proposals(commands: list[Command]) -> list[list[Command]]:
    """`commands` in order, cut into proposals of at most PROPOSAL_COMMANDS commands and
    PROPOSAL_BYTES each (a command too large alone is split first), never between
    commands that must commit together (`_follows`)."""
    groups: list[list[Command]] = []
    for command in (part for whole in commands for part in _fitting(whole)):
        if groups and _follows(groups[-1][-1], command):
            groups[-1].append(command)
        else:
            groups.append([command])
    batches: list[list[Command]] = []
    size = 0
    for group in groups:
        length = sum(len(msgspec.json.encode(command)) for command in group)
        full = batches and len(batches[-1]) + len(group) > PROPOSAL_COMMANDS
        if not batches or full or size + length > PROPOSAL_BYTES:
            batches.append([])
            size = 0
        batches[-1] += group
        size += length
    return batches


def _follows(previous: Command, command: Command) -> bool:
    """Whether `command` must commit with `previous`: a failed rollout's revert and its
    rollback go with the failure."""
    return (
        isinstance(previous, RolloutProgress)
        and isinstance(command, RolloutProgress | JobRollback)
        and command.job == previous.job
    )


_SPLITTABLE = {InstancesPlace: "placements", InstancesStop: "ids", InstancesRemove: "ids"}
"""The commands carrying a list that may be cut in parts (each part applies on its own)."""


def _fitting(command: Command) -> list[Command]:
    """`command`, or its parts if it encodes to more than PROPOSAL_BYTES (halved until
    each part fits)."""
    field = _SPLITTABLE.get(type(command))
    items = getattr(command, field) if field else []
    if len(items) < 2 or len(msgspec.json.encode(command)) <= PROPOSAL_BYTES:
        return [command]
    half = len(items) // 2
    return [
        part
        for chunk in (items[:half], items[half:])
        for part in _fitting(msgspec.structs.replace(command, **{field: chunk}))
    ]


def _tag(command: Command) -> str:
    return str(type(command).__struct_config__.tag)


def _sizes(view: View) -> dict[str, int]:
    return {
        "nodes": len(view.nodes),
        "jobs": len(view.jobs),
        "instances": len(view.instances),
    }
