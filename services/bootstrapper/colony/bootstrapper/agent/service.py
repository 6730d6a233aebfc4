"""The node agent: makes its node run what the manager placed on it, and says how it goes.

    register the node (NodeRegister: capacity, drivers, port range, address)
    adopt the instances recorded under the node dir (their drivers find them again)
    serve logs (subjects.agent_logs(me))
    loop:
        S = the change stream's last sequence; read the instances placed here (paged)
        converge every instance; follow instance changes after S, converging each one
        that names this node (or one it runs), until `resync` seconds pass or the
        stream fails: then read again
    on SIGTERM: stop every instance (shutdown grace), send the last reports, exit

Each instance desired to run here has one task (its "life"): start it through its
job's driver, wait for its exit or for a stop, restart it by the job's restart policy
(delay x backoff, at most `attempts` within `interval`) or report it failed. Every
transition is saved with the instance, then reported: `Reporter` sends the latest
report of every instance in one InstancesReport, again until it is recorded.

Before a start, every port the instance was given is checked free at the node's
address (a bind and close each, about 20 µs): a port another process holds (another
cluster's instance, say) fails that start with a plain reason, under the restart
policy like any failed start, rather than run a workload that cannot bind it.

The start path has no waits of its own: a placement seen on the stream is started at
once (its job spec is read once per version and cached), and its first report goes
out as soon as the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil

from colony.bootstrapper.agent import state
from colony.bootstrapper.agent.drivers.base import Driver, Exit, InstanceSpec, StartFailed
from colony.bootstrapper.agent.drivers.process import ProcessDriver
from colony.bootstrapper.agent.drivers.sim import SimDriver
from colony.bootstrapper.agent.instances import LocalInstance, Store
from colony.shared import changes, subjects
from colony.shared.bus import BusError, NotFound
from colony.shared.config import Config
from colony.shared.jobspec import JobSpec
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Change,
    InstanceRecord,
    InstanceReport,
    InstancesReport,
    JobRecord,
    LogsReply,
    LogsRequest,
    NodeRegister,
    ProposeReply,
    QueryRequest,
)
from colony.shared.runner import Context, Refused
from colony.shared.signing import read_secret

MAX_REPORTS = 4096
"""Reports in one InstancesReport, at most (the command's bound)."""
TERMINAL = ("exited", "failed", "lost")
"""States in which an instance holds nothing on its node."""
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""What an instance inherits from the agent's environment (the rest it is given)."""


def ports_in_use(address: str, ports: list[int]) -> list[int]:
    """Which of `ports` a process already listens on at `address` (or at every address).

    Bound and closed as a server binds (SO_REUSEADDR: what is left of a stopped run's
    connections does not count), about 20 µs each. Only "in use" counts: any
    other error (an address not this host's) is the workload's to meet.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    busy = []
    for port in ports:
        with socket.socket(family) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address, port))
                sock.listen()
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    busy.append(port)
    return busy


def make_drivers(config: Config) -> dict[str, Driver]:
    settings = config.agent
    made: dict[str, Driver] = {}
    for name in settings.drivers:
        if name == "process":
            made[name] = ProcessDriver(
                cgroup_parent=settings.cgroup,
                log_max_bytes=settings.log_max_bytes,
                log_keep=settings.log_keep,
            )
        elif name == "sim":
            made[name] = SimDriver()
    return made


def capacity(config: Config) -> tuple[float, int]:
    """Declared cores and bytes: as configured, else this node's share of the host (the
    rule the monitor reports capacity by)."""
    node = config.node
    cpu = node.capacity_cpu or round((psutil.cpu_count() or 1) / node.local_nodes, 2)
    memory = node.capacity_memory or psutil.virtual_memory().total // node.local_nodes
    return cpu, memory


@dataclass
class Life:
    """An instance's task and how to stop it."""

    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    why: str = ""


class Reporter:
    """Sends the latest report of every instance, batched, until each is recorded."""

    def __init__(
        self,
        node: str,
        propose: Callable[[InstancesReport], Awaitable[ProposeReply]],
        log: logging.Logger,
    ) -> None:
        self.node = node
        self.propose = propose
        self.log = log
        self.pending: dict[str, InstanceReport] = {}
        self.wake = asyncio.Event()

    def put(self, report: InstanceReport) -> None:
        self.pending[report.id] = report
        self.wake.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                if await self.send_once():
                    backoff = 0.05
                    continue
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def send_once(self) -> bool:
        """Send what is pending (one batch); False if it could not be recorded now."""
        batch = list(self.pending.values())[:MAX_REPORTS]
        try:
            reply = await self.propose(InstancesReport(node=self.node, reports=batch))
        except ManagementError as e:
            self.log.warning("reports not recorded; sending again", extra={"why": str(e)})
            return False
        for report in batch:
            if self.pending.get(report.id) is report:
                del self.pending[report.id]
        outcome = reply.outcomes[0]
        if not outcome.ok or outcome.error:
            self.log.warning("reports refused", extra={"why": outcome.error})
        return True


class Agent:
    name = "agent"
    description = "The node agent: runs the instances placed on its node and reports them"

    def __init__(self, drivers: Mapping[str, Driver] | None = None) -> None:
        self.given = dict(drivers) if drivers is not None else None

    async def run(self, ctx: Context) -> None:
        self.ctx = ctx
        self.log = ctx.log
        config = ctx.config
        self.me = config.node.id
        self.settings = config.agent
        self.grace = self.settings.stop_grace
        self.store = Store(Path(self.settings.dir or Path(config.node.dir) / "instances"))
        self.drivers = self.given if self.given is not None else make_drivers(config)
        self.management = Management(ctx.bus, config.consensus.voters)
        secret_file = config.consensus.secret_file
        self.secret = read_secret(secret_file) if secret_file else None
        self.inherited = {k: v for k, v in os.environ.items() if k in INHERITED}
        self.inherited.setdefault("PATH", os.defpath)
        self.assigned: dict[str, InstanceRecord] = {}
        self.read_at = 0
        """The log index the assignments were read at: older changes are already in."""
        self.local: dict[str, LocalInstance] = {}
        self.lives: dict[str, Life] = {}
        self.closing = False
        self.specs: dict[tuple[str, int], JobSpec] = {}
        self.reporter = Reporter(self.me, self._propose_report, self.log)
        reporting = asyncio.create_task(self.reporter.run())
        try:
            await self._register()
            self._adopt()
            await ctx.serve(subjects.agent_logs(self.me), self._logs)
            while True:
                await self._session()
        except asyncio.CancelledError:
            await self._shutdown()
            raise
        finally:
            reporting.cancel()
            for driver in self.drivers.values():
                await driver.close()

    # --- starting up ------------------------------------------------------------------

    async def _register(self) -> None:
        cpu, memory = capacity(self.ctx.config)
        command = NodeRegister(
            node=self.me,
            name=self.ctx.config.node_name,
            address=self.settings.address,
            cpu=cpu,
            memory=memory,
            drivers=sorted(self.drivers),
            port_lo=self.settings.port_lo,
            port_hi=self.settings.port_hi,
        )
        delay = 0.1
        while True:
            try:
                reply = await self.management.propose(command)
            except ManagementError as e:
                self.log.warning("could not register the node yet", extra={"why": str(e)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            outcome = reply.outcomes[0]
            if outcome.ok:
                self.log.info(
                    "node registered",
                    extra={"cpu": cpu, "memory": memory, "drivers": command.drivers},
                )
                return
            raise RuntimeError(f"the node's registration was refused: {outcome.error}")

    def _adopt(self) -> None:
        """Find the instances an earlier agent started: what still runs is watched again
        (its life resumes once the assignments are read)."""
        for instance in self.store.load():
            self.local[instance.id] = instance
            driver = self.drivers.get(instance.driver)
            if instance.handle is not None and driver is not None:
                running = driver.adopt(instance.handle)
                self.log.info(
                    "adopted" if running else "found ended",
                    extra={"instance": instance.id, "pid": instance.pid},
                )

    # --- following the assignments ----------------------------------------------------

    async def _session(self) -> None:
        """Read the assignments, then follow the changes until the next resync."""
        try:
            start = await self._last_change()
            assigned, index = await self._read_assignments()
        except (ManagementError, BusError) as e:
            self.log.warning("could not read the assignments; trying again", extra={"why": str(e)})
            await asyncio.sleep(1.0)
            return
        self.assigned, self.read_at = assigned, index
        for id in sorted({*self.assigned, *self.local}):
            self._converge(id)
        follower = asyncio.create_task(self._follow(start))
        try:
            await asyncio.wait({follower}, timeout=self.settings.resync)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    async def _last_change(self) -> int:
        try:
            return (await self.ctx.bus.stream_state(subjects.CHANGES_STREAM)).last_seq
        except NotFound:
            return 0

    async def _read_assignments(self) -> tuple[dict[str, InstanceRecord], int]:
        """The instances placed on this node (every page) and the log index read at."""
        found: dict[str, InstanceRecord] = {}
        after, index = "", 0
        while True:
            reply = await self.management.query(
                QueryRequest(key="", kind="instances", where={"node": self.me}, after=after)
            )
            index = max(index, reply.index)
            for stored in reply.objects:
                found[stored.id] = msgspec.convert(stored.value, InstanceRecord)
            if not reply.more or not reply.objects:
                return found, index
            after = reply.objects[-1].id

    async def _follow(self, after: int) -> None:
        try:
            async for change in changes.follow(
                self.ctx.bus, after=after, kinds=["instance"], secret=self.secret, logger=self.log
            ):
                self._on_change(change)
        except BusError as e:  # no stream yet, a lost server: read everything again soon
            self.log.warning("following the changes failed", extra={"why": str(e)})
            await asyncio.sleep(1.0)

    def _on_change(self, change: Change) -> None:
        if change.log_index <= self.read_at:
            return  # already in the assignments read
        id = change.id
        mine = change.detail.get("node") == self.me
        if not mine and id not in self.assigned and id not in self.local:
            return  # another node's
        if change.version == 0 or not mine:
            self.assigned.pop(id, None)  # removed, or placed elsewhere
        else:
            try:
                self.assigned[id] = msgspec.convert(change.detail, InstanceRecord)
            except msgspec.ValidationError as e:
                self.log.warning("bad instance change", extra={"id": id, "why": str(e)})
                return
        self._converge(id)

    # --- making the node match ----------------------------------------------------------

    def _converge(self, id: str) -> None:
        """Start what should run here, stop what should not."""
        if self.closing:
            return  # the node shuts down: nothing starts again
        record = self.assigned.get(id)
        wanted = state.wanted(record, self.me)
        life = self.lives.get(id)
        if wanted == "run":
            assert record is not None
            instance = self.local.get(id)
            if instance is None:
                instance = self.local[id] = LocalInstance.of(record)
            instance.seq = max(instance.seq, record.seq)
            if life is None and not instance.done:
                self._live(instance, record)
            return
        why = (record.desired_reason if record and record.node == self.me else "") or (
            "placed on another node" if record else "no longer placed on this node"
        )
        if life is not None:
            if not life.stop.is_set():
                life.why = why
                life.stop.set()
            return  # once it has stopped, converged again
        instance = self.local.get(id)
        if instance is not None and self._runs(instance):
            # still running with nothing watching over it (adopted after a restart): its
            # life stops it at once, reports it, and converges again
            life = self._live(instance, record)
            life.why = why
            life.stop.set()
            return
        if record is not None and record.node == self.me and record.state not in TERMINAL:
            # the database awaits an end (placed and stopped before it ran here, or its
            # process is gone): say it, or the manager never removes it
            if instance is None:
                instance = self.local[id] = LocalInstance.of(record)
            instance.seq = max(instance.seq, record.seq)
            if instance.state not in TERMINAL:
                self._transition(instance, "exited", reason=f"stopped: {why}")
        if wanted == "forget" and instance is not None:
            self._forget(instance)

    def _live(self, instance: LocalInstance, record: InstanceRecord | None) -> Life:
        task = asyncio.create_task(self._life(instance, record), name=f"instance {instance.id}")
        life = self.lives[instance.id] = Life(task)
        task.add_done_callback(lambda _: self._lived(instance.id, life))
        return life

    def _runs(self, instance: LocalInstance) -> bool:
        driver = self.drivers.get(instance.driver)
        handle = instance.handle
        return bool(handle and driver and driver.inspect(handle).state == "running")

    def _lived(self, id: str, life: Life) -> None:
        if self.lives.get(id) is life:
            del self.lives[id]
        instance = self.local.get(id)
        error = None if life.task.cancelled() else life.task.exception()
        if error is not None:
            self.log.error("instance task failed", extra={"instance": id}, exc_info=error)
            if instance is not None and not self.closing:
                # a bug, not the workload's doing: fail it (a replacement may go elsewhere)
                # rather than start it again and again
                instance.done = True
                why = f"the node agent failed running it: {type(error).__name__}: {error}"
                self._transition(instance, "failed", reason=why)
        driver = self.drivers.get(instance.driver) if instance else None
        handle = instance.handle if instance else None
        if handle and driver and driver.inspect(handle).state != "running":
            driver.forget(handle)  # its cgroups and process record go now
        if id in self.local:
            self._converge(id)  # assignments changed meanwhile, or it is to be forgotten

    def _forget(self, instance: LocalInstance) -> None:
        driver = self.drivers.get(instance.driver)
        if instance.handle is not None and driver is not None:
            driver.forget(instance.handle)
        self.local.pop(instance.id, None)
        self.store.remove(instance.id)

    async def _life(self, instance: LocalInstance, record: InstanceRecord | None) -> None:
        """Run the instance until it is to stop or has failed for good."""
        life = self.lives[instance.id]
        driver = self.drivers.get(instance.driver)
        running, ended = False, None
        if instance.handle is not None and driver is not None:  # started by an earlier agent
            found = driver.inspect(instance.handle)
            running = found.state == "running"
            missed = record is not None and (record.state, record.pid) != ("running", instance.pid)
            if running and missed and not life.stop.is_set():
                self._transition(instance, "running")  # the database missed it
            elif not running and instance.state == "running":  # it ended meanwhile
                ended = found.exit or Exit(None, "ended while no agent watched it", time.time())
        while True:
            if ended is None and not running:
                spec = None if life.stop.is_set() else await self._spec(instance, life)
                if spec is None:
                    return  # to stop before it started (converging says so)
                driver = self.drivers.get(spec.driver)
                instance.driver = spec.driver
                if driver is None:
                    offered = ", ".join(sorted(self.drivers)) or "none"
                    instance.done = True
                    self._transition(
                        instance,
                        "failed",
                        reason=f"driver {spec.driver} is not "
                        f"offered by this node (it offers {offered})",
                    )
                    return
                ended = await self._start(instance, spec, driver)
            if ended is None:  # it runs: until it ends or is stopped
                assert driver is not None
                ended = await self._until_ended(instance, driver, life)
                if ended is None:
                    return
            running = False
            if not await self._restart_after(instance, ended, life):
                return
            ended = None

    async def _restart_after(self, instance: LocalInstance, ended: Exit, life: Life) -> bool:
        """Report how it ended and wait to restart it by its job's policy: True once it is
        to start again; False if it failed for good or is to stop."""
        spec = await self._spec(instance, life)
        if spec is None:
            return False
        delay = state.restart_delay(spec.restart, instance.restarted, time.time())
        if delay is None:
            instance.done = True
            self._transition(
                instance,
                "failed",
                reason=state.gave_up(spec.restart, ended.reason),
                exit_code=ended.code,
            )
            return False
        after = "exited" if instance.handle is not None else "pending"  # pending: never ran
        self._transition(
            instance,
            after,
            reason=f"{ended.reason}; restarting in {delay:g} s",
            exit_code=ended.code,
            finished_at=ended.at,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(life.stop.wait(), timeout=delay)
        if life.stop.is_set():
            self._transition(instance, "exited", reason=f"stopped: {life.why}")
            return False
        instance.restarts += 1
        instance.restarted = [*instance.restarted, time.time()][-1000:]
        return True

    async def _start(self, instance: LocalInstance, spec: JobSpec, driver: Driver) -> Exit | None:
        """Start it; None once it runs, or how it failed to start."""
        record = self.assigned.get(instance.id)
        if record is None:
            return Exit(None, "no longer placed here")
        env = state.instance_env(record, spec, self.me, self.settings.address, self.inherited)
        what = InstanceSpec(
            id=instance.id,
            command=spec.task.command,
            args=state.substitute(spec.task.args, env),
            env=env,
            workdir=spec.task.workdir,
            dir=str(self.store.dir(instance.id)),
            cpu=record.cpu,
            memory=record.memory,
        )
        if instance.handle is not None:  # what its previous run left (cgroups, records)
            driver.forget(instance.handle)
        if driver.capabilities.runs:  # (sim runs nothing: it binds nothing)
            busy = ports_in_use(self.settings.address, sorted(set(record.ports.values())))
            if busy:
                instance.handle = None
                return Exit(None, state.ports_taken(busy), time.time())
        try:
            handle = await driver.start(what)
        except StartFailed as e:
            instance.handle = None
            return Exit(None, str(e), time.time())
        except OSError as e:  # the node's own trouble (a full disk): say it, plainly
            instance.handle = None
            return Exit(None, f"could not start: {e}", time.time())
        instance.handle = handle
        self._transition(
            instance,
            "running",
            pid=handle.pid,
            started_at=handle.started_at,
            reason=handle.limits,
            exit_code=None,
            finished_at=0.0,
        )
        return None

    async def _until_ended(
        self, instance: LocalInstance, driver: Driver, life: Life
    ) -> Exit | None:
        """How it ended by itself; None if it was stopped (and reported so)."""
        assert instance.handle is not None
        ended = asyncio.ensure_future(driver.wait(instance.handle))
        stopping = asyncio.ensure_future(life.stop.wait())
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if ended.done():
            return ended.result()
        ended.cancel()
        stopped = await driver.stop(instance.handle, self.grace)
        self._transition(
            instance,
            "exited",
            reason=f"stopped ({life.why}): {stopped.reason}",
            exit_code=stopped.code,
            finished_at=stopped.at,
        )
        return None

    async def _spec(self, instance: LocalInstance, life: Life) -> JobSpec | None:
        """The spec of the job version the instance was placed at (None: stopped first)."""
        key = (instance.job, instance.version)
        delay = 0.1
        while key not in self.specs:
            try:
                spec = await self._read_spec(*key)
            except ManagementError as e:
                spec, why = None, str(e)
            else:
                why = f"job {instance.job} version {instance.version} is not recorded"
            if spec is not None:
                self.specs[key] = spec
                break
            self.log.warning("job spec unknown yet", extra={"instance": instance.id, "why": why})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(life.stop.wait(), timeout=delay)
            if life.stop.is_set():
                return None
            delay = min(delay * 2, 5.0)
        return self.specs[key]

    async def _read_spec(self, job: str, version: int) -> JobSpec | None:
        # a version's spec never changes: this voter's copy will do if it has it yet
        for stale in (True, False):
            reply = await self.management.query(
                QueryRequest(key=job, kind="jobs", where={"version": str(version)}, stale=stale)
            )
            for stored in reply.objects:
                return msgspec.convert(stored.value, JobRecord).spec
        return None

    # --- reporting ----------------------------------------------------------------------

    def _transition(self, instance: LocalInstance, new: str, **fields) -> None:
        """Record a new state of the instance (saved first), then report it."""
        instance.state = new  # type: ignore[assignment]
        for name, value in fields.items():
            setattr(instance, name, value)
        instance.seq += 1
        self.store.save(instance)
        self.reporter.put(instance.report(time.time()))
        self.log.info(
            "instance " + new,
            extra={"instance": instance.id, "pid": instance.pid, "reason": instance.reason},
        )

    async def _propose_report(self, command: InstancesReport) -> ProposeReply:
        return await self.management.propose(command)

    # --- logs ---------------------------------------------------------------------------

    async def _logs(self, request: LogsRequest) -> LogsReply:
        instance = self.local.get(request.instance)
        if instance is None:
            raise Refused(404, f"instance {request.instance} is not on node {self.me}")
        driver = self.drivers.get(instance.driver)
        if instance.handle is None or driver is None:
            return LogsReply(instance=instance.id, data="", offset=0, next=0, running=False)
        chunk = driver.logs(instance.handle, request.stream, request.offset, request.max_bytes)
        return LogsReply(
            instance=instance.id,
            data=chunk.data.decode("utf-8", "replace"),
            offset=chunk.offset,
            next=chunk.next,
            running=instance.state == "running",
        )

    # --- shutting down ------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """The node stops: stop every instance (quickly), then send the last reports."""
        self.grace = self.settings.shutdown_grace
        self.closing = True
        lives = list(self.lives.values())
        for life in lives:
            life.why = "the node is shutting down"
            life.stop.set()
        if lives:
            await asyncio.wait([life.task for life in lives], timeout=self.grace + 0.5)
        if self.reporter.pending:
            self.management.timeout = 0.5
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.send_once(), timeout=0.5)
        self.log.info("instances stopped", extra={"count": len(lives)})
