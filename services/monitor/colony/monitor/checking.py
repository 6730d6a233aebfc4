"""Health checking on one node: what runs here, checked every interval, health proposed.

    ask the agent what runs here (agent_checks(me)), again until it answers
    follow agent_checks_changed(me): each message is the whole set; a new instance or
        a new run starts being checked (its health starts over), a gone one stops
    each check of each run: its own task, every `interval` (spread: not all at once),
        the probe bounded by its `timeout` (checks.py), the result to the run's
        RunHealth (health.py); a decision becomes a HealthReport
    the reports go out in InstancesHealth batches, each retried with its proposal ids
        until committed
    serve monitor_checks(me): every check's last result

It runs in tasks of its own beside the metrics sampling, which it never holds up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

from colony.monitor.checks import probe
from colony.monitor.health import Decision, RunHealth, changed_runs
from colony.shared import subjects, tasks
from colony.shared.bus import BusError
from colony.shared.clock import Clock
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    CheckStates,
    CheckStatesRequest,
    CheckTarget,
    CheckTargets,
    CheckTargetsRequest,
    HealthReport,
    InstancesHealth,
    new_id,
)
from colony.shared.runner import Context

MAX_REPORTS = 4096
"""Reports in one InstancesHealth, at most (the command's bound)."""
ASK_TIMEOUT = 2.0
"""Seconds the agent may take to say what runs here before it is asked again."""
MAX_CHECK_NAME = 128
"""Characters of a check's name a HealthReport holds (its bound)."""
NEW_RUN_SPREAD = 0.5
"""Seconds at most a new run's first check waits (checks of runs found at start are
spread over their whole interval)."""


@dataclass
class Checked:
    """One run being checked: its health and its checks' tasks."""

    target: CheckTarget
    health: RunHealth
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Checker:
    def __init__(self, ctx: Context, management: Management) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.clock: Clock = ctx.clock
        self.node = ctx.config.node.id
        self.management = management
        self.checked: dict[str, Checked] = {}
        self.outbox = Outbox(self.node, management, self.log)
        self.started = False
        """Whether a set of targets was taken yet (its runs' checks spread widest)."""
        self._sending: asyncio.Task[None] | None = None
        self._taking = asyncio.Lock()
        """One set taken at a time (the agent's answer and a change may meet)."""

    async def run(self) -> None:
        """Check until cancelled."""
        self._sending = asyncio.create_task(self.outbox.run())
        try:
            await self.ctx.serve(subjects.monitor_checks(self.node), self.states)
            await self.ctx.listen(subjects.agent_checks_changed(self.node), self.take)
            await self.take(await self._ask())
            await asyncio.Future()  # the checks run in their own tasks
        finally:
            await tasks.cancel(self._sending, *(t for c in self.checked.values() for t in c.tasks))

    async def _ask(self) -> CheckTargets:
        """What runs here, from the agent, asking until it answers."""
        delay = 0.1
        while True:
            try:
                return await self.ctx.bus.request(
                    subjects.agent_checks(self.node), CheckTargetsRequest(), timeout=ASK_TIMEOUT
                )
            except BusError as e:
                self.log.info("the agent did not say what runs here yet", extra={"why": str(e)})
            await self.clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def take(self, targets: CheckTargets) -> None:
        """Check exactly the runs of `targets` (the whole set of what runs here)."""
        async with self._taking:
            await self._take(targets)

    async def _take(self, targets: CheckTargets) -> None:
        first, self.started = not self.started, True
        runs = {id: c.health.run for id, c in self.checked.items()}
        start, stop = changed_runs(runs, targets.targets)
        await tasks.cancel(*(t for id in stop for t in self.checked.pop(id).tasks))
        for target in start:
            checked = self.checked[target.id] = Checked(target, RunHealth.of(target))
            self._decided(checked, checked.health.start())
            for index, check in enumerate(target.checks):
                spread = check.interval if first else min(check.interval, NEW_RUN_SPREAD)
                task = asyncio.create_task(self._every(checked, index, random.uniform(0, spread)))
                checked.tasks.append(task)
        if start or stop:
            self.log.info(
                "checking", extra={"runs": len(self.checked), "new": len(start), "gone": len(stop)}
            )

    async def _every(self, checked: Checked, index: int, phase: float) -> None:
        """Run check `index` of `checked` every interval, from `phase` seconds on."""
        check = checked.target.checks[index]
        next_at = self.clock.monotonic() + phase
        while True:
            await self.clock.sleep(max(0.0, next_at - self.clock.monotonic()))
            ok, output = await probe(check, checked.target)
            self._decided(checked, checked.health.record(index, ok, output, self.clock.time()))
            # a probe longer than the interval delays the next, never piles them up
            next_at = max(next_at + check.interval, self.clock.monotonic())

    def _decided(self, checked: Checked, decision: Decision | None) -> None:
        if decision is None:
            return
        target = checked.target
        self.outbox.put(
            HealthReport(
                id=target.id,
                health=decision.health,
                run=target.run,
                output=decision.output,
                check=decision.check[:MAX_CHECK_NAME],  # an exec's command may be longer
                seq=self.outbox.seq(),
                at=self.clock.time(),
            )
        )
        self.log.info(
            "instance " + decision.health,
            extra={"instance": target.id, "check": decision.check, "output": decision.output},
        )

    async def states(self, request: CheckStatesRequest) -> CheckStates:
        wanted = set(request.instances)
        return CheckStates(
            node=self.node,
            checks=[
                state
                for id, checked in sorted(self.checked.items())
                if not wanted or id in wanted
                for state in checked.health.states()
            ],
        )


class Outbox:
    """Health reports on their way: sent in batches, each batch proposed again with the
    same ids until it is committed (so it is applied once however often it is sent).
    Reports that come while a batch is on its way go in the next one; a later report of
    an instance replaces an earlier one not sent yet (only the newest counts)."""

    def __init__(self, node: str, management: Management, log: logging.Logger) -> None:
        self.node = node
        self.management = management
        self.log = log
        self.pending: dict[str, HealthReport] = {}
        self.wake = asyncio.Event()
        self._last_seq = 0

    def seq(self) -> int:
        """This node's clock in µs, now: never the same twice (a later decision's is higher)."""
        self._last_seq = max(time.time_ns() // 1000, self._last_seq + 1)
        return self._last_seq

    def put(self, report: HealthReport) -> None:
        self.pending[report.id] = report
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch = list(self.pending.values())[:MAX_REPORTS]
                for report in batch:
                    del self.pending[report.id]
                await self._send(InstancesHealth(node=self.node, reports=batch))

    async def _send(self, command: InstancesHealth) -> None:
        ids = [new_id()]
        delay = 0.05
        while True:
            try:
                reply = await self.management.propose(command, ids=ids)
            except ManagementError as e:
                if not e.retryable:
                    self.log.error("health reports refused", extra={"why": str(e)})
                    return
                self.log.warning("health reports not recorded; again", extra={"why": str(e)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            outcome = reply.outcomes[0]
            if not outcome.ok or outcome.error:
                self.log.warning("health reports refused", extra={"why": outcome.error})
            return
