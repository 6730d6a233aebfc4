"""The service runner: discovery, endpoints that survive bad input, config errors, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from colony.harness.processes import NatsServer, example_metrics, poll, wait_for
from colony.shared import runner, subjects
from colony.shared.bus import NoResponders, RemoteError, RequestTimeout, connect
from colony.shared.cluster import Cluster
from colony.shared.config import dumps
from colony.shared.messages import LatestMetricsRequest


class Echo:
    """A tiny service: answers latest-metrics requests for node 'echo'; 'boom' makes it fail."""

    name = "echo"
    description = "test service"

    async def run(self, ctx: runner.Context) -> None:
        async def answer(request: LatestMetricsRequest):
            if request.cause == "boom":
                raise ValueError("asked to fail")
            return example_metrics("echo")

        await ctx.serve(subjects.latest_metrics("echo"), answer)
        await asyncio.Event().wait()


@pytest.fixture
async def echo(nats_server, bus):
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(Echo(), nats_server.node_config("node-e"), stop=stop))
    await wait_for_async(lambda: ask(bus), timeout=10)  # answering: it is up
    yield task
    stop.set()
    assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def ask(bus, **fields):
    return await bus.request(
        subjects.latest_metrics("echo"), LatestMetricsRequest(**fields), timeout=2
    )


async def test_service_is_discoverable_with_its_node(echo, bus):
    [found] = await Cluster(bus).services("echo")
    assert (found.service, found.node) == ("echo", "node-e")
    assert found.endpoints == (subjects.latest_metrics("echo").name,)


async def test_bad_request_gets_a_400_and_the_service_keeps_serving(echo, bus):
    on = subjects.latest_metrics("echo").name
    for payload, reason in ((b"{", "malformed"), (b'{"v": "x"}', "got `str` - at `$.v`")):
        raw = await bus.nc.request(on, payload, timeout=2)
        assert raw.headers["Nats-Service-Error-Code"] == "400"
        assert reason in raw.headers["Nats-Service-Error"]
    assert (await ask(bus)).node == "echo"


async def test_failing_handler_gets_a_500_and_the_service_keeps_serving(echo, bus):
    with pytest.raises(RemoteError, match="asked to fail") as failure:
        await ask(bus, cause="boom")
    assert failure.value.code == 500
    assert (await ask(bus)).node == "echo"


async def test_service_waits_for_a_server_that_starts_later(tmp_path, caplog):
    server = NatsServer.standalone(tmp_path)  # not started yet
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(Echo(), server.node_config("late"), stop=stop))
    await poll(
        lambda: any(r.getMessage() == "waiting for nats" for r in caplog.records),
        10,
        "the service to say it waits for nats",
    )
    assert not task.done()
    server.start()
    try:
        bus = await connect(server.node_config().nats, "t")
        reply = await wait_for_async(lambda: ask(bus), timeout=10)
        assert reply.node == "echo"
        await bus.close()
        stop.set()
        assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0
    finally:
        server.stop()


async def test_stop_while_waiting_for_nats_returns_promptly(tmp_path, caplog):
    stop = asyncio.Event()
    dead = NatsServer.standalone(tmp_path).node_config("nobody")
    task = asyncio.create_task(runner.run(Echo(), dead, stop=stop))
    await poll(
        lambda: any(r.getMessage() == "waiting for nats" for r in caplog.records),
        10,
        "the service to be waiting for nats",
    )
    stop.set()
    assert await asyncio.wait_for(task, 2) == 0


async def wait_for_async(attempt, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# --- as a real process -------------------------------------------------------------


def write_config(nats_server, tmp_path):
    config = nats_server.node_config("node-p")
    config = msgspec.structs.replace(
        config, monitor=msgspec.structs.replace(config.monitor, interval=0.2)
    )
    path = tmp_path / "node.toml"
    path.write_text(dumps(config))
    return path


def test_sigterm_stops_a_service_process_within_the_grace_period(nats_server, tmp_path):
    config = write_config(nats_server, tmp_path)
    log = tmp_path / "monitor.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "colony.monitor", "--config", str(config)], stderr=out
        )
    try:
        wait_for(lambda: '"msg": "started"' in log.read_text(), 15, "the monitor to start")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=runner.SHUTDOWN_GRACE + 1) == 0
        assert time.monotonic() - started < runner.SHUTDOWN_GRACE
    finally:
        if process.poll() is None:
            process.kill()


def test_invalid_config_value_exits_2_naming_key_value_and_rule(nats_server, tmp_path):
    config = write_config(nats_server, tmp_path)
    env = {**os.environ, "COLONY_MONITOR__INTERVAL": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "colony.monitor", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "monitor.interval = 'soon'" in result.stderr
    assert "COLONY_MONITOR__INTERVAL" in result.stderr
    assert "expected `float`" in result.stderr


class Listener:
    """Listens to node 'l1's metrics: seq 13 makes the handler raise, seq 99 hangs up its
    connection (so its subscription ends under it)."""

    name = "listener"
    description = "test service"

    def __init__(self) -> None:
        self.heard: list[int] = []

    async def run(self, ctx: runner.Context) -> None:
        async def handle(metrics) -> None:
            if metrics.seq == 13:
                raise ValueError("unlucky")
            if metrics.seq == 99:
                await ctx.bus.nc.close()
            self.heard.append(metrics.seq)

        await ctx.listen(subjects.node_metrics("l1"), handle)
        await asyncio.Event().wait()


async def test_a_listener_survives_bad_input_and_a_failing_handler(nats_server, bus, caplog):
    service, stop = Listener(), asyncio.Event()
    task = asyncio.create_task(runner.run(service, nats_server.node_config("l1"), stop=stop))
    on = subjects.node_metrics("l1")
    await poll(lambda: _answers(bus, "listener"), 10, "the service to start")
    await bus.nc.publish(on.name, b"[" * 3000 + b"]" * 3000)  # too deep: dropped
    await bus.nc.publish(on.name, b"not json")
    for seq in (1, 13, 2):
        await bus.publish(on, example_metrics("l1", seq=seq))
    await poll(lambda: _async(service.heard == [1, 2]), 5, "the listener to go on after 13")
    assert any(r.getMessage() == "message handler failed" for r in caplog.records)
    assert not task.done()
    stop.set()
    assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def test_a_service_whose_listener_stops_exits_with_a_failure(nats_server, bus, caplog):
    task = asyncio.create_task(runner.run(Listener(), nats_server.node_config("l1")))
    await poll(lambda: _answers(bus, "listener"), 10, "the service to start")
    await bus.publish(subjects.node_metrics("l1"), example_metrics("l1", seq=99))
    assert (
        await asyncio.wait_for(task, runner.SHUTDOWN_GRACE * 2) == 1
    )  # restarted by its supervisor
    failed = [r for r in caplog.records if r.getMessage() == "service failed"]
    assert failed and failed[0].reason.startswith(
        f"the listener on {subjects.node_metrics('l1').name} stopped"
    )


async def _answers(bus, service: str) -> bool:
    return bool(await Cluster(bus).services(service, window=0.1))


async def _async(value):
    return value


class Idle:
    """A service that serves nothing by itself: the test serves and unserves through it."""

    name = "idle"
    description = "test service"

    def __init__(self) -> None:
        self.ctx: runner.Context | None = None
        self.ready = asyncio.Event()

    async def run(self, ctx: runner.Context) -> None:
        self.ctx = ctx
        self.ready.set()
        await asyncio.Event().wait()


async def test_an_endpoint_unserved_finds_no_responder_and_can_be_served_again(nats_server, bus):
    service, stop = Idle(), asyncio.Event()
    task = asyncio.create_task(runner.run(service, nats_server.node_config("node-i"), stop=stop))
    await asyncio.wait_for(service.ready.wait(), 10)
    ctx, subject = service.ctx, subjects.latest_metrics("idle")
    assert ctx is not None

    async def answer(_request: LatestMetricsRequest):
        return example_metrics("idle")

    # The server may take a moment to route another client's requests to a subscription
    # just made or ended: a few tries.
    async def answered() -> bool:
        try:
            return (await bus.request(subject, LatestMetricsRequest(), timeout=2)).node == "idle"
        except NoResponders:
            return False

    async def unanswered() -> bool:
        try:
            await bus.request(subject, LatestMetricsRequest(), timeout=0.5)
        except NoResponders:
            return True
        except RequestTimeout:
            pass
        return False

    await ctx.serve(subject, answer)
    await ctx.serve(subjects.latest_metrics("other"), answer)
    await poll(answered, 5, "an answer")
    await ctx.unserve(subject)
    await poll(unanswered, 5, "no responder")
    await ctx.serve(subject, answer)
    await poll(answered, 5, "an answer again")
    [found] = await Cluster(bus).services("idle")
    assert sorted(found.endpoints) == sorted([subject.name, subjects.latest_metrics("other").name])
    stop.set()
    assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0
