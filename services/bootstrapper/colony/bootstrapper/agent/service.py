"""The node agent: makes its node run what the manager placed on it, and says how it goes.

    register the node (NodeRegister: capacity, drivers, port range, address)
    adopt the instances recorded under the node dir (their drivers find them again)
    serve logs (subjects.agent_logs(me)) and check targets (subjects.agent_checks(me))
    loop:
        register again if the declared capacity changed (`colony capacity`)
        S = the last change's index; read the instances placed here (paged, each page
        at its own log index)
        converge every instance; follow instance changes after S, converging each one
        that names this node (or one it runs) and is newer than the copy read of it,
        until `resync` seconds pass or the stream fails: then read again
    on SIGTERM: stop every instance (shutdown grace), send the last reports, exit

Each instance desired to run here has one task (its "life"): start it through its
job's driver (`starting`, then `running`), wait for its exit or for a stop, restart it
by the job's restart policy (delay x backoff, at most `attempts` within `interval`) or
report it failed. Every transition is saved with the instance, then reported:
`Reporter` sends the latest report of every instance in one InstancesReport, again
until it is recorded. `starting` is saved before anything is spawned: a new agent
that finds an instance `starting` (its predecessor was killed during the start, maybe
before it could save the handle) has the driver end what that start left running
(`end_leftovers`) before anything starts it again, so it never runs twice.

What runs is what the node's monitor checks: the agent serves the set of its running
instances (each run with its env, ports and the spec's checks: a `CheckTarget`) and
publishes the whole set on `agent_checks_changed` whenever it changes, and every
CHECKS_EVERY seconds anyway (one small message). The monitor's verdicts come back as
instance changes: a change saying the run an instance runs now is unhealthy has it
killed and restarted under its restart policy, as a failed attempt (as if it had
exited with a failure). Health said of an earlier run is never acted on, and a run is
restarted for its health once, however often the change is seen.

A stop waits the job's `shutdown_delay` first (per instance, in its own task): the
instance left the job's endpoints when its stop was committed, and clients stop
sending to it meanwhile. The node's own shutdown does not wait.

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

from colony.bootstrapper.agent import state
from colony.bootstrapper.agent.drivers.base import Driver, Exit, InstanceSpec, StartFailed
from colony.bootstrapper.agent.drivers.process import ProcessDriver
from colony.bootstrapper.agent.drivers.sim import SimDriver
from colony.bootstrapper.agent.instances import LocalInstance, Store
from colony.shared import changes, subjects, tasks
from colony.shared.bus import BusError
from colony.shared.config import Config, DeclaredCapacity, host_capacity
from colony.shared.jobspec import JobSpec
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Change,
    CheckTarget,
    CheckTargets,
    CheckTargetsRequest,
    InstanceRecord,
    InstanceReport,
    InstancesReport,
    JobRecord,
    LogsReply,
    LogsRequest,
    NodeRegister,
    ProposeReply,
    QueryRequest,
    Resources,
)
from colony.shared.reservations import TERMINAL
from colony.shared.runner import Context, Refused
from colony.shared.signing import read_secret
from colony.shared.statedir import NodeDir

MAX_REPORTS = 4096
"""Reports in one InstancesReport, at most (the command's bound)."""
IN_FLIGHT = 4
"""InstancesReport proposals on their way at once, at most."""
STARTING_HOLD = 0.1
"""Seconds a `starting` report waits for the start to end: a quick start is reported
`running` alone (one commit, not two, from placement to running); a slow one (a
leftover to end, a slow driver) shows `starting` meanwhile."""
CHECKS_EVERY = 5.0
"""Seconds between publications of the check targets while nothing changes, at most."""
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


@dataclass
class Life:
    """An instance's task and how to stop it."""

    task: asyncio.Task[None]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    why: str = ""
    sick: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when its record says the run it runs now is unhealthy: it is killed and
    restarted (under its restart policy)."""
    sick_run: float = 0.0
    """The run (started_at) last found unhealthy: it is restarted for that only once."""
    sick_why: str = ""


class Reporter:
    """Sends the latest report of every instance, batched, until each is recorded.

    A report goes out at once, even while earlier batches are on their way (up to
    `IN_FLIGHT` of them): a start's `running` does not wait for its `starting` to be
    committed, which would double the time from a placement to its instance reported
    running. Batches committed out of order are harmless: the database takes a report
    only if its seq is newer than the one it recorded."""

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
        """The latest report of each instance, until it is recorded."""
        self.sent: dict[str, InstanceReport] = {}
        """The report of each instance on its way (it is not sent twice at once)."""
        self.wake = asyncio.Event()
        self.backoff = 0.05

    def put(self, report: InstanceReport, hold: float = 0.0) -> None:
        """Send `report` (instead of any earlier one of its instance not sent yet): at
        once, or, held, once `hold` seconds passed if no later report replaced it (it
        rides along with any batch sent before)."""
        self.pending[report.id] = report
        if hold:
            asyncio.get_running_loop().call_later(hold, self.wake.set)
        else:
            self.wake.set()

    async def run(self) -> None:
        flights: set[asyncio.Task[None]] = set()

        def landed(flight: asyncio.Task[None]) -> None:
            flights.discard(flight)
            self.wake.set()  # what came meanwhile, or what it could not send

        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while len(flights) < IN_FLIGHT:
                    batch = [r for r in self.pending.values() if self.sent.get(r.id) is not r]
                    if not batch:
                        break
                    flight = asyncio.create_task(self._fly(batch[:MAX_REPORTS]))
                    flights.add(flight)
                    flight.add_done_callback(landed)
        finally:
            for flight in flights:
                flight.cancel()

    async def _fly(self, batch: list[InstanceReport]) -> None:
        for report in batch:
            self.sent[report.id] = report
        try:
            if await self._send(batch):
                self.backoff = 0.05
            else:  # sent again once the backoff has passed
                await asyncio.sleep(self.backoff)
                self.backoff = min(self.backoff * 2, 2.0)
        finally:
            for report in batch:
                if self.sent.get(report.id) is report:
                    del self.sent[report.id]

    async def send_once(self) -> bool:
        """Send what is pending (one batch); False if it could not be recorded now."""
        return await self._send(list(self.pending.values())[:MAX_REPORTS])

    async def _send(self, batch: list[InstanceReport]) -> bool:
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
        self.capacity = DeclaredCapacity(
            NodeDir(config.node.dir).config_file, host_capacity(config.node), self.log
        )
        self.registered: Resources | None = None
        """The capacity the node's record has (None: not registered yet)."""
        self.assigned = state.Assignments(self.me)
        self.local: dict[str, LocalInstance] = {}
        self.lives: dict[str, Life] = {}
        self.closing = False
        self.down = asyncio.Event()
        """Set when the node shuts down: stops wait no shutdown delay from then on."""
        self.targets: dict[str, CheckTarget] = {}
        """What the node's monitor is to check: every instance running here, by id."""
        self.targets_changed = asyncio.Event()
        self.helpers: set[asyncio.Task[None]] = set()
        self.specs: dict[tuple[str, int], JobSpec] = {}
        self.reporter = Reporter(self.me, self._propose_report, self.log)
        reporting = asyncio.create_task(self.reporter.run())
        publishing = asyncio.create_task(self._publish_targets())
        try:
            await self._register()
            await self._adopt()
            await ctx.serve(subjects.agent_logs(self.me), self._logs)
            await ctx.serve(subjects.agent_checks(self.me), self._checks)
            while True:
                await self._session()
        except asyncio.CancelledError:
            await self._shutdown()
            raise
        finally:
            reporting.cancel()
            await tasks.cancel(publishing, *self.helpers)
            for driver in self.drivers.values():
                await driver.close()

    # --- starting up ------------------------------------------------------------------

    async def _register(self) -> None:
        """Register the node, trying until it is recorded."""
        delay = 0.1
        while not await self._register_once():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _register_once(self) -> bool:
        """Register the node if its record lacks the declared capacity (not registered
        yet, or `colony capacity` changed it since); False if it could not be now."""
        capacity = self.capacity.read()
        if capacity == self.registered:
            return True
        command = NodeRegister(
            node=self.me,
            name=self.ctx.config.node_name,
            address=self.settings.address,
            cpu=capacity.cpu,
            memory=capacity.memory,
            drivers=sorted(self.drivers),
            port_lo=self.settings.port_lo,
            port_hi=self.settings.port_hi,
        )
        try:
            reply = await self.management.propose(command)
        except ManagementError as e:
            self.log.warning("could not register the node yet", extra={"why": str(e)})
            return False
        outcome = reply.outcomes[0]
        if not outcome.ok:
            raise RuntimeError(f"the node's registration was refused: {outcome.error}")
        self.registered = capacity
        self.log.info(
            "node registered",
            extra={"cpu": capacity.cpu, "memory": capacity.memory, "drivers": command.drivers},
        )
        return True

    async def _adopt(self) -> None:
        """Find the instances an earlier agent started: what still runs is watched again
        (its life resumes once the assignments are read). One it was killed while
        starting (`starting`, no handle saved) may run without a handle: it is ended
        (its life starts it again, if it is still to run)."""
        for instance in self.store.load():
            self.local[instance.id] = instance
            driver = self.drivers.get(instance.driver)
            if instance.state == "starting" and instance.handle is None and driver is not None:
                if await driver.end_leftovers(instance.id, str(self.store.dir(instance.id))):
                    self.log.warning(
                        "ended a copy left running by a start its agent did not finish",
                        extra={"instance": instance.id},
                    )
            elif instance.handle is not None and driver is not None:
                running = driver.adopt(instance.handle)
                self.log.info(
                    "adopted" if running else "found ended",
                    extra={"instance": instance.id, "pid": instance.pid},
                )

    # --- following the assignments ----------------------------------------------------

    async def _session(self) -> None:
        """Read the assignments, then follow the changes until the next resync."""
        await self._register_once()  # `colony capacity` changed it? (if it fails: next time)
        try:
            start = await changes.last_index(self.ctx.bus, self.secret)
            listing = await self.management.query_all("instances", {"node": self.me})
        except (ManagementError, BusError) as e:
            self.log.warning("could not read the assignments; trying again", extra={"why": str(e)})
            await asyncio.sleep(1.0)
            return
        self.assigned.load(listing)
        for id in sorted({*self.assigned.records, *self.local}):
            self._converge(id)
        follower = asyncio.create_task(self._follow(start))
        try:
            await asyncio.wait({follower}, timeout=self.settings.resync)
        finally:
            await tasks.cancel(follower)

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
        try:
            changed = self.assigned.apply(change)
        except msgspec.ValidationError as e:
            self.log.warning("bad instance change", extra={"id": change.id, "why": str(e)})
            return
        if changed or change.id in self.local:  # (converging again changes nothing)
            self._converge(change.id)

    # --- making the node match ----------------------------------------------------------

    def _converge(self, id: str) -> None:
        """Start what should run here, stop what should not."""
        if self.closing:
            return  # the node shuts down: nothing starts again
        record = self.assigned.get(id)
        wanted = state.wanted(record)
        life = self.lives.get(id)
        if wanted == "run":
            assert record is not None
            instance = self.local.get(id)
            if instance is None:
                instance = self.local[id] = LocalInstance.of(record)
            instance.seq = max(instance.seq, record.seq)
            if life is None and not instance.done:
                life = self._live(instance, record)
            if life is not None:
                self._judge_health(instance, record, life)
            return
        why = (record.desired_reason if record else "") or "no longer placed on this node"
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
        if record is not None and record.state not in TERMINAL:
            # the database awaits an end (placed and stopped before it ran here, or its
            # process is gone): say it, or the manager never removes it
            if instance is None:
                instance = self.local[id] = LocalInstance.of(record)
            instance.seq = max(instance.seq, record.seq)
            if instance.state not in TERMINAL:
                self._transition(instance, "exited", reason=f"stopped: {why}")
        if wanted == "forget" and instance is not None:
            self._forget(instance)

    def _judge_health(self, instance: LocalInstance, record: InstanceRecord, life: Life) -> None:
        """Have its life restart it if its record says the run it runs now is unhealthy
        (once per run: the same verdict seen again changes nothing)."""
        why = state.unhealthy(record, instance.started_at)
        if why is None or instance.state != "running" or life.stop.is_set():
            return
        if life.sick_run == instance.started_at:
            return  # restarting it for that already
        life.sick_run, life.sick_why = instance.started_at, why
        life.sick.set()
        self.log.warning(
            "instance unhealthy; restarting it", extra={"instance": instance.id, "why": why}
        )

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
            if running:  # checked again once its spec is known (read on the side)
                self._helper(self._target_adopted(instance, life))
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
            instance.handle = None
        # saved before anything is spawned: an agent killed from here on leaves its
        # successor a record saying so (`_adopt` ends what this start left)
        self._transition(instance, "starting", pid=0, reason="", exit_code=None, finished_at=0.0)
        if driver.capabilities.runs:  # (sim runs nothing: it binds nothing)
            busy = ports_in_use(self.settings.address, sorted(set(record.ports.values())))
            if busy:
                return Exit(None, state.ports_taken(busy), time.time())
        try:
            handle = await driver.start(what)
        except StartFailed as e:
            return Exit(None, str(e), time.time())
        except OSError as e:  # the node's own trouble (a full disk): say it, plainly
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
        self._set_target(instance.id, self._target(instance, record, spec, env))
        return None

    async def _until_ended(
        self, instance: LocalInstance, driver: Driver, life: Life
    ) -> Exit | None:
        """How it ended by itself, or was killed for its health; None if it was stopped
        (and reported so)."""
        assert instance.handle is not None
        if life.sick_run != instance.started_at:
            life.sick.clear()  # (a verdict on a run that ended by itself meanwhile)
        ended = asyncio.ensure_future(driver.wait(instance.handle))
        stopping = asyncio.ensure_future(life.stop.wait())
        sick = asyncio.ensure_future(life.sick.wait())
        await asyncio.wait({ended, stopping, sick}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        sick.cancel()
        if ended.done():
            return ended.result()
        if not life.stop.is_set():  # unhealthy: killed, then restarted as a failed attempt
            ended.cancel()
            killed = await driver.stop(instance.handle, self.grace)
            return Exit(killed.code, life.sick_why, killed.at)
        await self._shutdown_delay(instance, ended)
        if ended.done():  # it ended by itself during the delay
            stopped = ended.result()
        else:
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

    async def _shutdown_delay(self, instance: LocalInstance, ended: asyncio.Future[Exit]) -> None:
        """Wait the job's shutdown delay before a stop (clients stop sending to it first:
        it left the job's endpoints when its stop was committed), unless it ends first
        or the node shuts down. A spec not read (an instance adopted and stopped at
        once: its stop was committed while no agent ran) has none."""
        spec = self.specs.get((instance.job, instance.version))
        if self.closing or spec is None or not spec.shutdown_delay:
            return
        self.log.info(
            "instance stops after its shutdown delay",
            extra={"instance": instance.id, "delay": spec.shutdown_delay},
        )
        down = asyncio.ensure_future(self.down.wait())
        await asyncio.wait(
            {ended, down}, timeout=spec.shutdown_delay, return_when=asyncio.FIRST_COMPLETED
        )
        down.cancel()

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
        """Record a new state of the instance (saved first), then report it (`starting`
        held a moment: see STARTING_HOLD)."""
        instance.state = new  # type: ignore[assignment]
        for name, value in fields.items():
            setattr(instance, name, value)
        instance.seq += 1
        self.store.save(instance)
        if new != "running":
            self._set_target(instance.id, None)  # (a new run has a new target)
        hold = STARTING_HOLD if new == "starting" else 0.0
        self.reporter.put(instance.report(time.time()), hold)
        self.log.info(
            "instance " + new,
            extra={"instance": instance.id, "pid": instance.pid, "reason": instance.reason},
        )

    async def _propose_report(self, command: InstancesReport) -> ProposeReply:
        return await self.management.propose(command)

    # --- what the node's monitor checks ------------------------------------------------

    def _target(
        self,
        instance: LocalInstance,
        record: InstanceRecord,
        spec: JobSpec,
        env: Mapping[str, str],
    ) -> CheckTarget:
        return state.check_target(
            record,
            spec,
            run=instance.started_at,
            pid=instance.pid,
            host=self.settings.address,
            env=env,
            folder=str(self.store.dir(instance.id)),
        )

    async def _target_adopted(self, instance: LocalInstance, life: Life) -> None:
        """Check an instance an earlier agent started, once its spec is known (its env
        made again as its start made it), if the same run still runs then."""
        run = instance.started_at
        spec = await self._spec(instance, life)
        record = self.assigned.get(instance.id)
        same_run = instance.state == "running" and instance.started_at == run
        if spec is None or record is None or not same_run:
            return
        env = state.instance_env(record, spec, self.me, self.settings.address, self.inherited)
        self._set_target(instance.id, self._target(instance, record, spec, env))

    def _set_target(self, id: str, target: CheckTarget | None) -> None:
        if self.targets.get(id) == target:
            return
        if target is None:
            del self.targets[id]
        else:
            self.targets[id] = target
        self.targets_changed.set()  # published at once

    def _check_targets(self) -> CheckTargets:
        return CheckTargets(node=self.me, targets=[self.targets[id] for id in sorted(self.targets)])

    async def _checks(self, request: CheckTargetsRequest) -> CheckTargets:
        return self._check_targets()

    async def _publish_targets(self) -> None:
        """Publish the check targets whenever they change, and every CHECKS_EVERY s."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.targets_changed.wait(), CHECKS_EVERY)
            self.targets_changed.clear()
            await self._publish_targets_once()

    async def _publish_targets_once(self) -> None:
        try:
            await self.ctx.bus.publish(
                subjects.agent_checks_changed(self.me), self._check_targets()
            )
        except BusError as e:  # sent again at the next change, or in CHECKS_EVERY s
            self.log.warning("check targets not published", extra={"why": str(e)})

    def _helper(self, work: Awaitable[None]) -> None:
        """Run `work` on the side (ended with the agent)."""
        task = asyncio.ensure_future(work)
        self.helpers.add(task)
        task.add_done_callback(self.helpers.discard)

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
        self.down.set()
        lives = list(self.lives.values())
        for life in lives:
            life.why = "the node is shutting down"
            life.stop.set()
        if lives:
            await asyncio.wait([life.task for life in lives], timeout=self.grace + 0.5)
        with contextlib.suppress(Exception):  # the monitor stops checking them at once
            await asyncio.wait_for(self._publish_targets_once(), timeout=0.5)
        if self.reporter.pending:
            self.management.timeout = 0.5
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.send_once(), timeout=0.5)
        self.log.info("instances stopped", extra={"count": len(lives)})
