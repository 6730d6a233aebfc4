"""The monitor's health checks with three real voters and a real nats-server: a stand-in
agent says what runs on the node; the monitor checks it (an HTTP server the test turns
sick and well again, an instance without checks) and the instance records in the
management database get its healthy / unhealthy transitions; it serves every check's last
result, and stops checking what the agent no longer lists."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time

import msgspec
import pytest
from _voters import running

from colony.bootstrapper.agent.service import Agent
from colony.harness.processes import poll
from colony.harness.rollouts import WEBAPP, sick
from colony.monitor.service import Monitor
from colony.shared import runner, subjects
from colony.shared.bus import BusError
from colony.shared.cluster import Cluster
from colony.shared.config import AgentSettings, ConsensusSettings
from colony.shared.jobspec import HealthCheck, JobSpec, RestartPolicy, Task
from colony.shared.management import Management
from colony.shared.messages import (
    CheckStatesRequest,
    CheckTarget,
    CheckTargets,
    InstanceRecord,
    InstanceReport,
    InstancesPlace,
    InstancesReport,
    JobRun,
    NodeRegister,
    Placement,
    QueryRequest,
    encode,
)

VOTERS = ["v1", "v2", "v3"]
NODE = "node-h"
HOST = "127.0.0.1"
RUN = time.time() - 60  # started a minute ago: past any grace
HTTP = HealthCheck(
    type="http", port="web", path="/healthz", interval=0.1, timeout=0.5,
    healthy_threshold=2, unhealthy_threshold=2,
)  # fmt: skip
WEB = JobSpec(name="web", task=Task(command="sleep", args=["300"]), ports=["web"], checks=[HTTP])
PLAIN = JobSpec(name="plain", task=Task(command="sleep", args=["300"]))
LONG_TRUE = "/" + "./" * 80 + "bin/true"  # its check's name is longer than a report holds
TOOL = JobSpec(
    name="tool", task=Task(command="sleep", args=["300"]),
    checks=[HealthCheck(type="exec", command=LONG_TRUE, interval=0.1, timeout=1)],
)  # fmt: skip


class Sick:
    """An HTTP server whose /healthz the test turns from 200 to 500 and back."""

    def __init__(self) -> None:
        self.status = 200
        self.asked = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._answer, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            self.asked += 1
            writer.write(f"HTTP/1.1 {self.status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        writer.close()


class StandInAgent:
    """Answers agent_checks(NODE) with the targets the test sets, and publishes each new
    set on agent_checks_changed(NODE), as the node's agent does."""

    def __init__(self, bus) -> None:
        self.bus = bus
        self.targets = CheckTargets(node=NODE)

    async def start(self) -> None:
        async def answer(msg) -> None:
            await msg.respond(encode(self.targets))

        await self.bus.nc.subscribe(subjects.agent_checks(NODE).name, cb=answer)
        await self.bus.flush()

    async def set(self, *targets: CheckTarget) -> None:
        self.targets = CheckTargets(node=NODE, targets=list(targets))
        await self.bus.publish(subjects.agent_checks_changed(NODE), self.targets)


def placement(id: str, job: str, ports: dict[str, int]) -> Placement:
    return Placement(
        id=id, job=job, version=1, slot=0, node=NODE, cpu=0.1, memory=2**26, ports=ports,
        reason="new job",
    )  # fmt: skip


def target(id: str, spec: JobSpec, ports: dict[str, int]) -> CheckTarget:
    return CheckTarget(
        id=id, job=spec.name, version=1, run=RUN, pid=os.getpid(), host=HOST, ports=ports,
        checks=list(spec.checks),
    )  # fmt: skip


async def record(client: Management, id: str) -> InstanceRecord | None:
    reply = await client.query(QueryRequest(key=id, kind="instances"))
    return msgspec.convert(reply.objects[0].value, InstanceRecord) if reply.objects else None


async def until(client: Management, id: str, check, what: str, timeout: float = 15):
    async def seen():
        found = await record(client, id)
        return found if found is not None and check(found) else None

    return await poll(seen, timeout, what)


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


async def running_instances(client: Management, bus, ports: dict[str, int]) -> None:
    """The node registered, the two jobs' instances placed on it and reported running
    (what the agent and the manager would have done)."""
    epoch = (await Cluster(bus, VOTERS).wait_manager(20)).epoch
    register = NodeRegister(
        node=NODE, name=NODE, address=HOST, cpu=4, memory=2**32, drivers=["process"],
        port_lo=21000, port_hi=21099,
    )  # fmt: skip
    for command in (register, JobRun(spec=WEB), JobRun(spec=PLAIN), JobRun(spec=TOOL)):
        assert (await client.propose(command)).outcomes[0].ok
    places = InstancesPlace(
        [
            placement("web-0-aaaa", "web", ports),
            placement("plain-0-bbbb", "plain", {}),
            placement("tool-0-cccc", "tool", {}),
        ]
    )
    placed = await client.propose(places, epoch=epoch)
    assert placed.outcomes[0].ok, placed.outcomes[0].error
    reports = [
        InstanceReport(id=id, state="running", seq=2, pid=os.getpid(), started_at=RUN, at=RUN)
        for id in ("web-0-aaaa", "plain-0-bbbb", "tool-0-cccc")
    ]
    reported = await client.propose(InstancesReport(node=NODE, reports=reports))
    assert reported.outcomes[0].ok, reported.outcomes[0].error


async def test_health_transitions_are_recorded_and_checks_served(
    nats_server, voters, bus, tmp_path
):
    client = Management(bus, VOTERS)
    sick = Sick()
    ports = {"web": await sick.start()}
    await running_instances(client, bus, ports)
    agent = StandInAgent(bus)
    await agent.start()
    agent.targets = CheckTargets(
        node=NODE, targets=[target("web-0-aaaa", WEB, ports), target("plain-0-bbbb", PLAIN, {})]
    )

    config = nats_server.node_config(NODE)
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(voters.secret))
    stop = asyncio.Event()
    monitor = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    try:
        plain = await until(
            client, "plain-0-bbbb", lambda r: r.health == "healthy", "no checks: healthy"
        )
        assert (plain.health_run, plain.health_check, plain.healthy_since > 0) == (RUN, "", True)
        web = await until(client, "web-0-aaaa", lambda r: r.health == "healthy", "web healthy")
        assert (web.health_run, web.health_check) == (RUN, "http web")
        assert web.health_output == "HTTP/1.1 200 Whatever"

        states = await bus.request(
            subjects.monitor_checks(NODE), CheckStatesRequest(instances=["web-0-aaaa"])
        )
        [state] = states.checks
        assert (state.instance, state.check, state.ok, state.health) == (
            "web-0-aaaa",
            "http web",
            True,
            "healthy",
        )
        assert state.passes >= 2 and state.at > 0

        sick.status = 500
        web = await until(client, "web-0-aaaa", lambda r: r.health == "unhealthy", "web unhealthy")
        assert web.health_output == "HTTP/1.1 500 Whatever (expected 200)", web.health_output
        assert web.healthy_since == 0 and web.health_check == "http web"

        sick.status = 200
        await until(client, "web-0-aaaa", lambda r: r.health == "healthy", "web healthy again")

        # the agent no longer lists web-0: its checks stop (nothing asks the server any more)
        await agent.set(target("plain-0-bbbb", PLAIN, {}))

        async def forgotten():
            states = await bus.request(subjects.monitor_checks(NODE), CheckStatesRequest())
            return states if not states.checks else None

        await poll(forgotten, 10, "web-0's checks to be dropped")
        asked = sick.asked
        await asyncio.sleep(0.5)  # five intervals: a check still running would have asked
        assert sick.asked == asked
        assert not monitor.done()  # the metrics side runs on
    finally:
        stop.set()
        assert await asyncio.wait_for(monitor, runner.SHUTDOWN_GRACE) == 0
        sick.server.close()


async def test_checks_start_once_the_agent_answers(nats_server, voters, bus):
    """The monitor starts before its agent: it asks until the agent answers, and meanwhile
    its metrics go out as ever."""
    client = Management(bus, VOTERS)
    await running_instances(client, bus, {"web": 1})
    config = nats_server.node_config(NODE)
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(voters.secret))
    samples = await bus.subscribe(subjects.node_metrics(NODE))
    stop = asyncio.Event()
    monitor = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    try:
        await samples.next(timeout=10)
        agent = StandInAgent(bus)
        agent.targets = CheckTargets(
            node=NODE,
            targets=[target("plain-0-bbbb", PLAIN, {}), target("tool-0-cccc", TOOL, {})],
        )
        await agent.start()
        await until(client, "plain-0-bbbb", lambda r: r.health == "healthy", "healthy once asked")
        tool = await until(client, "tool-0-cccc", lambda r: r.health == "healthy", "exec passes")
        assert tool.health_check == f"exec {LONG_TRUE}"[:128] and tool.health_output == "exit 0"
    finally:
        stop.set()
        assert await asyncio.wait_for(monitor, runner.SHUTDOWN_GRACE) == 0


async def test_reports_decided_without_a_quorum_are_recorded_once_it_is_back(
    nats_server, voters, bus
):
    """Two voters of three down: the monitor decides, cannot get its report committed, and
    sends it again (the same proposal) until the voters are back."""
    client = Management(bus, VOTERS)
    await running_instances(client, bus, {"web": 1})
    agent = StandInAgent(bus)
    agent.targets = CheckTargets(node=NODE, targets=[target("plain-0-bbbb", PLAIN, {})])
    await agent.start()
    for lost in VOTERS[1:]:
        await voters.stop(lost)
    config = nats_server.node_config(NODE)
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(voters.secret))
    stop = asyncio.Event()
    monitor = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    try:

        async def serving():
            with contextlib.suppress(BusError):
                return await bus.request(subjects.monitor_checks(NODE), CheckStatesRequest())

        await poll(serving, 10, "the monitor to serve its checks")
        await asyncio.sleep(1.0)  # it decides at once (no checks); the proposal cannot commit
        alone = Management(bus, VOTERS[:1])
        reply = await alone.query(QueryRequest(key="plain-0-bbbb", kind="instances", stale=True))
        assert reply.objects[0].value["health"] == ""
        for lost in VOTERS[1:]:
            voters.start(lost)
        plain = await until(client, "plain-0-bbbb", lambda r: r.health == "healthy", "healthy", 40)
        assert plain.health_run == RUN
    finally:
        stop.set()
        assert await asyncio.wait_for(monitor, runner.SHUTDOWN_GRACE) == 0


async def test_with_the_real_agent_an_unhealthy_instance_is_restarted_and_heals(
    nats_server, voters, bus, tmp_path
):
    """The node's agent and monitor together: the agent lists its running instance, the
    monitor finds it healthy, then (its /health turned to 500) unhealthy, and the agent
    restarts it; the new run is checked afresh and found healthy."""
    port_lo = random.randrange(30000, 39900, 100)
    control = tmp_path / "control"
    spec = JobSpec(
        name="app",
        task=Task(
            command=sys.executable, args=[str(WEBAPP), "${PORT}"], env={"CONTROL": str(control)}
        ),
        ports=["http"],
        checks=[
            HealthCheck(
                type="http", name="health", port="http", path="/health", interval=0.2,
                timeout=0.2, healthy_threshold=1, unhealthy_threshold=2, grace=2,
            )  # the grace: the interpreter's start (until it listens) fails no check
        ],
        restart=RestartPolicy(attempts=10, delay=0.1, backoff=1.0),
    )  # fmt: skip
    config = nats_server.node_config(NODE)
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(voters.secret))
    config.agent = AgentSettings(
        port_lo=port_lo, port_hi=port_lo + 99, dir=str(tmp_path / "instances"), stop_grace=2.0,
        cgroup="colony-test-monitor",
    )  # fmt: skip
    client = Management(bus, VOTERS)
    epoch = (await Cluster(bus, VOTERS).wait_manager(20)).epoch
    stop = asyncio.Event()
    agent = asyncio.create_task(runner.run(Agent(), config, stop=stop))
    monitor = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    try:

        async def registered():
            reply = await client.query(QueryRequest(key=NODE, kind="nodes"))
            return reply.objects or None

        await poll(registered, 15, "the agent to register its node")
        assert (await client.propose(JobRun(spec=spec))).outcomes[0].ok
        app = Placement(
            id="app-0-aaaa", job="app", version=1, slot=0, node=NODE, cpu=0.5,
            memory=2**26, ports={"http": port_lo}, reason="new job",
        )  # fmt: skip
        placed = await client.propose(InstancesPlace([app]), epoch=epoch)
        assert placed.outcomes[0].ok, placed.outcomes[0].error

        def healthy_run(r: InstanceRecord) -> bool:
            return r.state == "running" and r.health == "healthy" and r.health_run == r.started_at

        first = await until(client, app.id, healthy_run, "the instance healthy", 20)
        assert (first.health_check, first.health_output) == ("health", "HTTP/1.0 200 OK")

        sick(control, app.id)
        await until(
            client, app.id, lambda r: r.started_at > first.started_at and r.restarts >= 1,
            "a restart", 20,
        )  # fmt: skip
        sick(control, app.id, "ok")  # within the new run's grace
        again = await until(client, app.id, healthy_run, "the new run healthy", 20)
        assert again.health_run > first.health_run and again.healthy_since > 0
    finally:
        stop.set()
        for task in (monitor, agent):
            assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0
