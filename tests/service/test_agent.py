"""The node agent with three real voters and a real nats-server: it registers its node,
starts what the manager places on it (the test proposes placements with the manager's
epoch), reports it running with a live pid, restarts it when it is killed, stops it when
desired, serves its output, and, after a kill -9 of the agent, adopts the same process.
It tells its node's monitor what runs (served and published), restarts an instance the
monitor's recorded verdict says is unhealthy, and waits a job's shutdown delay before a stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest
from _voters import running

from colony.bootstrapper.agent import service as agent_service
from colony.bootstrapper.agent.drivers.base import Handle, InstanceSpec
from colony.bootstrapper.agent.drivers.process import ProcessDriver
from colony.bootstrapper.agent.service import Agent
from colony.harness.processes import poll
from colony.shared import changes, runner, subjects, tasks
from colony.shared.bus import BusError
from colony.shared.cluster import Cluster
from colony.shared.config import AgentSettings, Config, ConsensusSettings
from colony.shared.config import dumps as config_dumps
from colony.shared.jobspec import HealthCheck, JobSpec, RestartPolicy, Task
from colony.shared.management import Management
from colony.shared.messages import (
    CheckTarget,
    CheckTargets,
    CheckTargetsRequest,
    HealthReport,
    InstanceRecord,
    InstancesHealth,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobRun,
    LogsRequest,
    NodeRecord,
    Placement,
    QueryRequest,
)
from colony.shared.signing import read_secret
from colony.shared.statedir import NodeDir

VOTERS = ["v1", "v2", "v3"]
CGROUPS = Path("/sys/fs/cgroup")
NODE = "node-a"
SCRIPT = 'echo "hello from $COLONY_INSTANCE on port $PORT ($1)"; exec sleep 300'
SPEC = JobSpec(
    name="web",
    task=Task(command="sh", args=["-c", SCRIPT, "sh", "${PORT_HTTP}"]),
    ports=["http"],
    restart=RestartPolicy(attempts=3, delay=0.05, backoff=1.0),
)


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


@pytest.fixture
def config(nats_server, tmp_path):
    config = nats_server.node_config(NODE)
    config.consensus = ConsensusSettings(voters=VOTERS, secret_file=str(tmp_path / "secret"))
    config.agent = AgentSettings(
        port_lo=21000,
        port_hi=21099,
        dir=str(tmp_path / "instances"),
        stop_grace=2.0,
        cgroup=f"colony-test-{secrets.token_hex(3)}",
    )
    yield config
    # whatever a failed test left running, and the instances' cgroups
    for parent in CGROUPS.glob(f"*/{config.agent.cgroup}"):
        folders = [*(p for p in parent.iterdir() if p.is_dir()), parent]
        for pid in {int(p) for f in folders for p in (f / "cgroup.procs").read_text().split()}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for folder in folders:
            with contextlib.suppress(OSError):  # a killed process not reaped yet: left
                folder.rmdir()


class InProcess:
    """The agent service run in this process, stoppable (as SIGTERM stops it)."""

    def __init__(self, config: Config, agent: Agent | None = None) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(runner.run(agent or Agent(), config, stop=self.stop))

    async def stopped(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, runner.SHUTDOWN_GRACE)


async def manager_epoch(bus) -> int:
    return (await Cluster(bus, VOTERS).wait_manager(20)).epoch


async def instance(client: Management, id: str) -> InstanceRecord | None:
    reply = await client.query(QueryRequest(key=id, kind="instances"))
    return msgspec.convert(reply.objects[0].value, InstanceRecord) if reply.objects else None


async def registered(client: Management) -> NodeRecord | None:
    reply = await client.query(QueryRequest(key=NODE, kind="nodes"))
    return msgspec.convert(reply.objects[0].value, NodeRecord) if reply.objects else None


def placement(id: str, slot: int = 0) -> Placement:
    return Placement(
        id=id, job="web", version=1, slot=slot, node=NODE, cpu=0.1, memory=2**26,
        ports={"http": 21000 + slot}, reason="new job",
    )  # fmt: skip


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def until(client: Management, id: str, check, what: str, timeout: float = 15):
    async def seen():
        record = await instance(client, id)
        return record if record is not None and check(record) else None

    return await poll(seen, timeout, what)


async def test_placed_runs_restarts_serves_logs_and_stops_when_desired(
    voters, bus, config, tmp_path
):
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    agent = InProcess(config)
    try:
        node = await poll(lambda: registered(client), 15, "the agent to register its node")
        assert (node.port_lo, node.port_hi, node.drivers) == (21000, 21099, ["process"])
        assert (await client.propose(JobRun(spec=SPEC))).outcomes[0].ok
        placed = await client.propose(InstancesPlace([placement("web-0-aaaa")]), epoch=epoch)
        assert placed.outcomes[0].ok, placed.outcomes[0].error

        first = await until(client, "web-0-aaaa", lambda r: r.state == "running", "running")
        assert alive(first.pid) and first.restarts == 0
        env = psutil.Process(first.pid).environ()
        assert (env["COLONY_INSTANCE"], env["COLONY_NODE"], env["PORT"]) == (
            "web-0-aaaa", NODE, "21000"
        )  # fmt: skip
        said = "hello from web-0-aaaa on port 21000 (21000)\n"
        reply = await poll(
            lambda: _logs(bus, "web-0-aaaa"), 10, "the instance's output", every=0.05
        )
        assert (reply.data, reply.offset, reply.next, reply.running) == (said, 0, len(said), True)

        os.kill(first.pid, signal.SIGKILL)
        again = await until(
            client, "web-0-aaaa", lambda r: r.state == "running" and r.restarts == 1, "a restart"
        )
        assert again.pid != first.pid and alive(again.pid) and not alive(first.pid)

        stop = InstancesStop(["web-0-aaaa"], reason="scaled to 0")
        assert (await client.propose(stop, epoch=epoch)).outcomes[0].ok
        ended = await until(client, "web-0-aaaa", lambda r: r.state == "exited", "stopped")
        assert ended.reason.startswith("stopped (scaled to 0): killed by SIGTERM"), ended.reason
        assert ended.exit_code == -signal.SIGTERM and not alive(again.pid)
    finally:
        assert await agent.stopped() == 0


async def test_an_instance_whose_port_is_taken_is_not_started_and_says_why(voters, bus, config):
    """Another process (another cluster's instance, say) holds the port the instance was
    given: it is not started, its start fails with a plain reason, by its restart policy
    (then rescheduling, the manager's part) as any failed start."""
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    agent = InProcess(config)
    with socket.socket() as held:
        held.bind((config.agent.address, 0))
        held.listen()
        port = held.getsockname()[1]
        try:
            await poll(lambda: registered(client), 15, "the agent to register its node")
            assert (await client.propose(JobRun(spec=SPEC))).outcomes[0].ok
            taken = msgspec.structs.replace(placement("web-0-aaaa"), ports={"http": port})
            assert (await client.propose(InstancesPlace([taken]), epoch=epoch)).outcomes[0].ok
            failed = await until(client, "web-0-aaaa", lambda r: r.state == "failed", "failed")
            assert failed.reason.startswith(
                f"port {port} is already in use on this host (another process holds it); "
                "restarted 3 times"
            ), failed.reason
            assert failed.pid == 0  # never started
        finally:
            assert await agent.stopped() == 0


async def test_an_instance_that_fails_says_what_it_said_last(voters, bus, config):
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    crash = JobSpec(
        name="crash",
        task=Task(
            command="sh", args=["-c", "echo starting; echo 'no such file: app.toml' >&2; exit 1"]
        ),
        restart=RestartPolicy(attempts=1, delay=2.0),
    )
    agent = InProcess(config)
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        assert (await client.propose(JobRun(spec=crash))).outcomes[0].ok
        place = msgspec.structs.replace(placement("crash-0-aaaa"), job="crash", ports={})
        assert (await client.propose(InstancesPlace([place]), epoch=epoch)).outcomes[0].ok
        said = "exited with code 1: no such file: app.toml"
        waiting = await until(client, "crash-0-aaaa", lambda r: r.state == "exited", "exited")
        assert (waiting.reason, waiting.exit_code) == (f"{said}; restarting in 2 s", 1)
        failed = await until(client, "crash-0-aaaa", lambda r: r.state == "failed", "failed")
        assert failed.reason.startswith(f"{said}; restarted 1 times"), failed.reason
    finally:
        assert await agent.stopped() == 0


async def test_sigterm_stops_every_instance(voters, bus, config):
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    agent = InProcess(config)
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        await client.propose(JobRun(spec=SPEC))
        place = InstancesPlace([placement("web-0-aaaa", 0), placement("web-1-bbbb", 1)])
        assert (await client.propose(place, epoch=epoch)).outcomes[0].ok
        pids = [
            (await until(client, id, lambda r: r.state == "running", f"{id} running")).pid
            for id in ("web-0-aaaa", "web-1-bbbb")
        ]
    finally:
        assert await agent.stopped() == 0
    assert not any(alive(pid) for pid in pids)
    for id in ("web-0-aaaa", "web-1-bbbb"):
        record = await instance(client, id)
        assert record is not None and record.state == "exited", record
        assert "the node is shutting down" in record.reason


async def test_an_agent_killed_with_kill_9_adopts_the_same_process(voters, bus, config, tmp_path):
    epoch = await manager_epoch(bus)
    id = f"web-0-{secrets.token_hex(2)}"  # its processes are told apart from any other's
    client = Management(bus, VOTERS)
    config_file = tmp_path / "node.toml"
    config_file.write_text(config_dumps(config))
    first_agent = _agent_process(config_file, tmp_path / "agent-1.log")
    second_agent = None
    try:
        await poll(lambda: registered(client), 30, "the agent to register its node")
        await client.propose(JobRun(spec=SPEC))
        assert (await client.propose(InstancesPlace([placement(id)]), epoch=epoch)).outcomes[0].ok
        before = await until(client, id, lambda r: r.state == "running", "running")

        first_agent.kill()  # kill -9: the instance runs on
        first_agent.wait()
        assert alive(before.pid)
        second_agent = _agent_process(config_file, tmp_path / "agent-2.log")
        # the new agent serves once it has adopted: its logs endpoint answers
        await poll(lambda: _logs(bus, id), 30, "the new agent to serve", every=0.1)
        after = await instance(client, id)
        assert after is not None
        assert (after.state, after.pid, after.restarts) == ("running", before.pid, 0)
        # and its node's monitor is told to check the same run
        adopted = await poll(lambda: _served_targets(bus), 10, "the adopted run a target")
        assert [(t.id, t.run, t.pid) for t in adopted] == [(id, before.started_at, before.pid)]
        assert adopted[0].env["COLONY_INSTANCE"] == id

        # it watches the adopted process: its end is noticed, and it is restarted
        os.kill(before.pid, signal.SIGKILL)
        restarted = await until(
            client,
            id,
            lambda r: r.restarts == 1 and r.state == "running",
            "a restart by the new agent",
        )
        assert restarted.pid != before.pid and alive(restarted.pid)
        await poll(
            lambda: len([p for p in psutil.process_iter() if _of_instance(p, id)]) == 1,
            5,
            "exactly one process of the instance",
        )
    finally:
        for agent in (first_agent, second_agent):
            if agent is not None and agent.poll() is None:
                agent.terminate()
                agent.wait(10)
    assert not [p for p in psutil.process_iter() if _of_instance(p, id)]


async def test_an_instance_removed_while_its_agent_was_down_is_stopped_and_forgotten(
    voters, bus, config, tmp_path
):
    """As after a partition: the manager stopped and removed an instance while its node
    could not hear; its agent, back, finds the process running unassigned and stops it."""
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    id = f"web-0-{secrets.token_hex(2)}"
    config_file = tmp_path / "node.toml"
    config_file.write_text(config_dumps(config))
    agent = _agent_process(config_file, tmp_path / "agent-1.log")
    try:
        await poll(lambda: registered(client), 30, "the agent to register its node")
        await client.propose(JobRun(spec=SPEC))
        assert (await client.propose(InstancesPlace([placement(id)]), epoch=epoch)).outcomes[0].ok
        before = await until(client, id, lambda r: r.state == "running", "running")
        agent.kill()
        agent.wait()
        stop = InstancesStop([id], reason="node-a is dead")
        assert (await client.propose(stop, epoch=epoch)).outcomes[0].ok
        assert (await client.propose(InstancesRemove([id]), epoch=epoch)).outcomes[0].ok
        assert alive(before.pid)

        agent = _agent_process(config_file, tmp_path / "agent-2.log")
        await poll(lambda: not alive(before.pid), 30, "the unassigned instance stopped")
        folder = Path(config.agent.dir) / id
        await poll(lambda: not folder.exists(), 10, "the instance forgotten")
        assert await instance(client, id) is None  # nothing reported about it
    finally:
        agent.terminate()
        agent.wait(10)


class KilledWhileStarting(ProcessDriver):
    """Spawns the instance, then never hands the handle back: as an agent killed during
    the start, before it could save the handle."""

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.stuck: asyncio.Task | None = None

    async def start(self, spec: InstanceSpec) -> Handle:
        await super().start(spec)
        await self.close()  # nothing watches it any more
        self.stuck = asyncio.current_task()
        await asyncio.Event().wait()
        raise AssertionError("never")


async def test_an_agent_killed_during_a_start_leaves_one_copy_and_says_starting(
    voters, bus, config
):
    """The first agent reports `starting`, spawns the instance and is gone before the
    handle is saved; the next one ends that copy and starts the instance once."""
    config.agent.shutdown_grace = 0.1
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    id = f"web-0-{secrets.token_hex(2)}"
    killed = KilledWhileStarting(cgroup_parent=config.agent.cgroup)
    first = InProcess(config, Agent({"process": killed}))
    second = None
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        assert (await client.propose(JobRun(spec=SPEC))).outcomes[0].ok
        assert (await client.propose(InstancesPlace([placement(id)]), epoch=epoch)).outcomes[0].ok
        await until(client, id, lambda r: r.state == "starting", "starting reported")
        left = await poll(lambda: _processes_of(id) or None, 10, "the copy the start left")
        assert await first.stopped() == 0
        killed.stuck.cancel()  # (the agent is gone: nothing of it acts any more)
        assert [p.pid for p in _processes_of(id)] == [p.pid for p in left]

        second = InProcess(config)
        again = await until(client, id, lambda r: r.state == "running", "running again")
        assert [p.pid for p in _processes_of(id)] == [again.pid]
        assert not any(alive(p.pid) for p in left)
    finally:
        if second is not None:
            assert await second.stopped() == 0
        elif not first.task.done():
            await first.stopped()
    assert not _processes_of(id)


async def test_a_changed_capacity_is_registered_again_at_the_next_resync(voters, bus, config):
    """`colony capacity` edits the node's config file: the scheduler's record follows."""
    config.agent.resync = 0.2
    config.node.capacity_cpu = 2.0
    config_file = NodeDir(config.node.dir).config_file
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config_dumps(config))
    client = Management(bus, VOTERS)
    agent = InProcess(config)
    try:
        node = await poll(lambda: registered(client), 15, "the agent to register its node")
        assert node.cpu == 2.0
        config.node.capacity_cpu = 3.5
        config_file.write_text(config_dumps(config))
        await poll(
            lambda: _cpu_registered(client, 3.5), 10, "the new capacity registered", every=0.1
        )
    finally:
        assert await agent.stopped() == 0


async def _cpu_registered(client: Management, cpu: float) -> bool:
    node = await registered(client)
    return node is not None and node.cpu == cpu


async def test_cold_start_from_placement_committed_to_running(voters, bus, config, tmp_path):
    """From a placement committed (its change on the stream) to its instance reported
    running (its next change): the issue's bar is a p50 of 50 ms. The agent runs as its
    own process, as on a node; the three voters share this test's process and loop (a
    node's voter has its own), so this is slower than a cluster's figure: it is printed,
    and bounded loosely."""
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    config_file = tmp_path / "node.toml"
    config_file.write_text(config_dumps(config))
    agent = _agent_process(config_file, tmp_path / "agent.log")
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        await client.propose(JobRun(spec=SPEC))
        await _stream_ready(bus)
        secret = read_secret(config.consensus.secret_file)
        last = (await bus.stream_state(subjects.CHANGES_STREAM)).last_seq
        feed = changes.follow(bus, after=last, kinds=["instance"], secret=secret)
        took = []
        for slot in range(10):
            id = f"web-{slot}-{secrets.token_hex(2)}"
            await client.propose(InstancesPlace([placement(id, slot)]), epoch=epoch)
            committed = None
            async with asyncio.timeout(10):
                async for change in feed:
                    if change.id == id and change.detail.get("state") == "pending":
                        committed = time.perf_counter()
                    elif change.id == id and change.detail.get("state") == "running":
                        break
            assert committed is not None
            took.append(time.perf_counter() - committed)
        await feed.aclose()
        p50 = statistics.median(took) * 1000
        print(
            f"\ncold start, placement committed to running committed: "
            f"p50 {p50:.0f} ms, max {max(took) * 1000:.0f} ms"
        )
        assert p50 < 500
    finally:
        agent.terminate()
        assert agent.wait(10) == 0


async def _logs(bus, id: str):
    try:
        reply = await bus.request(subjects.agent_logs(NODE), LogsRequest(instance=id), timeout=1)
    except Exception:
        return None
    return reply if reply.data else None


async def _stream_ready(bus) -> None:
    async def exists():
        try:
            return await bus.stream_state(subjects.CHANGES_STREAM)
        except Exception:
            return None

    await poll(exists, 10, "the change stream")


def _agent_process(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "colony.bootstrapper.agent", "--config", str(config_file)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _processes_of(id: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _of_instance(p, id)]


def _of_instance(process: psutil.Process, id: str) -> bool:
    try:
        return (
            process.environ().get("COLONY_INSTANCE") == id
            and process.environ().get("COLONY_NODE") == NODE
            and process.status() != psutil.STATUS_ZOMBIE
            and process.name() == "sleep"
        )
    except psutil.Error:
        return False


# --- what the node's monitor checks, health, shutdown delay (issue 14) ----------------

CHECKED = msgspec.structs.replace(
    SPEC,
    checks=[HealthCheck(type="tcp", port="http", interval=1.0)],
    restart=RestartPolicy(attempts=3, delay=1.0, backoff=1.0),
)


@contextlib.asynccontextmanager
async def hearing(bus, subject):
    """Every message on `subject` from now on, in the list it yields (as they come)."""
    heard: list = []
    subscription = await bus.subscribe(subject)

    async def hear():
        async for message in subscription:
            heard.append(message)

    task = asyncio.create_task(hear())
    try:
        yield heard
    finally:
        await tasks.cancel(task)
        await subscription.stop()


def runs(targets: CheckTargets) -> dict[str, float]:
    return {t.id: t.run for t in targets.targets}


async def served(bus) -> CheckTargets:
    return await bus.request(subjects.agent_checks(NODE), CheckTargetsRequest(), timeout=2)


async def test_the_running_instances_are_served_and_published_for_the_monitor(
    voters, bus, config, monkeypatch
):
    """Each run of an instance is a target (its started_at the run) from the moment it is
    running until it ends: published at once at every change, and again while nothing
    changes; asked for, the same set."""
    monkeypatch.setattr(agent_service, "CHECKS_EVERY", 0.3)
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    id = "web-0-aaaa"
    async with hearing(bus, subjects.agent_checks_changed(NODE)) as heard:
        agent = InProcess(config)
        try:
            await poll(lambda: registered(client), 15, "the agent to register its node")
            assert (await client.propose(JobRun(spec=CHECKED))).outcomes[0].ok
            placed = await client.propose(InstancesPlace([placement(id)]), epoch=epoch)
            assert placed.outcomes[0].ok
            first = await until(client, id, lambda r: r.state == "running", "running")
            await poll(
                lambda: any(runs(m) == {id: first.started_at} for m in heard), 10, "published"
            )
            (target,) = (await served(bus)).targets
            assert (target.id, target.job, target.version, target.run, target.pid) == (
                id, "web", 1, first.started_at, first.pid
            )  # fmt: skip
            assert (target.host, target.ports, target.checks) == (
                config.agent.address, {"http": 21000}, CHECKED.checks
            )  # fmt: skip
            process = psutil.Process(first.pid)
            assert target.env.items() <= process.environ().items()  # as it was given
            assert {"PORT", "PORT_HTTP", "COLONY_INSTANCE", "COLONY_NODE"} <= target.env.keys()
            assert target.workdir == str(Path(config.agent.dir) / id) == process.cwd()

            # nothing changes: published again all the same
            seen = len(heard)
            await poll(lambda: len(heard) >= seen + 3, 10, "the set published again")
            assert all(runs(m) == {id: first.started_at} for m in heard[seen:])

            seen = len(heard)
            os.kill(first.pid, signal.SIGKILL)  # exits: gone; restarted a second later: a new run
            again = await until(
                client, id, lambda r: r.state == "running" and r.restarts == 1, "a restart"
            )
            await poll(
                lambda: any(runs(m) == {id: again.started_at} for m in heard[seen:]),
                10,
                "the restarted run published",
            )
            between = [runs(m) for m in heard[seen:]]
            assert {} in between[: between.index({id: again.started_at})], between
            assert again.started_at > first.started_at

            stop = InstancesStop([id], reason="scaled to 0")
            assert (await client.propose(stop, epoch=epoch)).outcomes[0].ok
            await until(client, id, lambda r: r.state == "exited", "stopped")
            await poll(lambda: heard and runs(heard[-1]) == {}, 10, "the stop published")
            assert (await served(bus)).targets == []
        finally:
            assert await agent.stopped() == 0


async def test_an_instance_its_monitor_finds_unhealthy_is_restarted_by_its_policy(
    voters, bus, config
):
    """The monitor's verdict on the run it runs now, recorded: the agent kills that run
    and restarts it as a failed attempt (its reason says which check said what), once."""
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    id = "web-0-aaaa"
    secret = read_secret(config.consensus.secret_file)
    agent = InProcess(config)
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        assert (await client.propose(JobRun(spec=CHECKED))).outcomes[0].ok
        assert (await client.propose(InstancesPlace([placement(id)]), epoch=epoch)).outcomes[0].ok
        first = await until(client, id, lambda r: r.state == "running", "running")
        seen: list = []
        start = await changes.last_index(bus, secret)
        follower = asyncio.create_task(_changes_of(bus, secret, start, id, seen))
        try:
            verdict = HealthReport(
                id=id, health="unhealthy", run=first.started_at, output="connection refused",
                check="tcp http", seq=int(time.time() * 1e6), at=time.time(),
            )  # fmt: skip
            told = await client.propose(InstancesHealth(node=NODE, reports=[verdict]))
            assert told.outcomes[0].ok and told.outcomes[0].value == "1 recorded", told.outcomes[0]
            again = await until(
                client, id, lambda r: r.state == "running" and r.restarts == 1, "a restart"
            )
            assert not alive(first.pid) and alive(again.pid)
            assert again.started_at > first.started_at and again.health == ""
            await poll(
                lambda: any(c.detail.get("restarts") == 1 for c in seen), 10, "the restart's change"
            )
            exits = [c for c in seen if c.detail.get("state") == "exited"]
            assert [(c.detail["reason"], c.detail["exit_code"]) for c in exits] == [
                ("health check tcp http failed: connection refused; restarting in 1 s", -15)
            ]

            # the new run healthy, recorded: nothing else happened meanwhile
            healthy = msgspec.structs.replace(
                verdict, health="healthy", run=again.started_at, seq=verdict.seq + 1, output=""
            )
            await client.propose(InstancesHealth(node=NODE, reports=[healthy]))
            now = await until(client, id, lambda r: r.health == "healthy", "healthy recorded")
            assert (now.restarts, now.pid, now.state) == (1, again.pid, "running")
        finally:
            await tasks.cancel(follower)
    finally:
        assert await agent.stopped() == 0


async def test_a_stop_waits_the_shutdown_delay_and_holds_up_no_other_instance(voters, bus, config):
    """Desired stop: the instance runs on for the job's shutdown_delay (it left the
    endpoints at the commit), then is stopped; meanwhile the node's other instances are
    looked after as ever. The node's own shutdown waits for no delay."""
    epoch = await manager_epoch(bus)
    client = Management(bus, VOTERS)
    delayed = msgspec.structs.replace(SPEC, shutdown_delay=3.0)
    agent = InProcess(config)
    try:
        await poll(lambda: registered(client), 15, "the agent to register its node")
        assert (await client.propose(JobRun(spec=delayed))).outcomes[0].ok
        place = InstancesPlace([placement("web-0-aaaa", 0), placement("web-1-bbbb", 1)])
        assert (await client.propose(place, epoch=epoch)).outcomes[0].ok
        stopping, other = [
            await until(client, id, lambda r: r.state == "running", f"{id} running")
            for id in ("web-0-aaaa", "web-1-bbbb")
        ]
        stop = InstancesStop(["web-0-aaaa"], reason="scaled to 1")
        assert (await client.propose(stop, epoch=epoch)).outcomes[0].ok
        committed = time.monotonic()

        os.kill(other.pid, signal.SIGKILL)  # looked after during the other's delay
        await until(
            client, "web-1-bbbb", lambda r: r.state == "running" and r.restarts == 1, "a restart"
        )
        assert alive(stopping.pid), "stopped before its shutdown delay"
        assert (await instance(client, "web-0-aaaa")).state == "running"
        ended = await until(client, "web-0-aaaa", lambda r: r.state == "exited", "stopped")
        took = time.monotonic() - committed
        assert not alive(stopping.pid)
        assert 2.8 <= took < 10, took  # (the change is seen a moment before its commit's reply)
        assert ended.reason.startswith("stopped (scaled to 1): killed by SIGTERM"), ended.reason
    finally:
        started = time.monotonic()
        assert await agent.stopped() == 0
    record = await instance(client, "web-1-bbbb")
    assert record.state == "exited" and not alive(record.pid)
    assert time.monotonic() - started < delayed.shutdown_delay  # (it did not wait)


async def _served_targets(bus) -> list[CheckTarget]:
    try:
        return (await served(bus)).targets
    except BusError:  # (not serving yet)
        return []


async def _changes_of(bus, secret, after: int, id: str, into: list) -> None:
    async for change in changes.follow(bus, after=after, kinds=["instance"], secret=secret):
        if change.id == id:
            into.append(change)
