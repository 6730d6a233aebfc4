"""The monitor against a real nats-server: samples, latest, Prometheus, bad input."""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from colony.monitor.service import Monitor
from colony.shared import runner, subjects
from colony.shared.config import Config
from colony.shared.messages import LatestMetricsRequest
from colony.shared.signing import BadSignature, verify
from colony.shared.statedir import NodeDir, ProcessRecord

CAPACITY_CPU = 1.5
CAPACITY_MEMORY = 3 * 2**30


def monitor_config(nats_server) -> Config:
    config = nats_server.node_config("node-m")
    return msgspec.structs.replace(
        config,
        node=msgspec.structs.replace(
            config.node, capacity_cpu=CAPACITY_CPU, capacity_memory=CAPACITY_MEMORY
        ),
        monitor=msgspec.structs.replace(config.monitor, interval=0.1),
    )


@pytest.fixture
async def monitor(nats_server, bus):
    config = monitor_config(nats_server)
    # The node's "own processes" are whatever its run/ folder records: record this test.
    NodeDir(config.node.dir).write_record(ProcessRecord.of("tester", os.getpid(), ["pytest"]))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    sub = await bus.subscribe(subjects.node_metrics("node-m"))
    yield sub
    stop.set()
    assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def test_samples_advance_and_describe_the_node(monitor):
    first = await monitor.next(timeout=10)
    second = await monitor.next(timeout=10)
    assert second.seq == first.seq + 1
    assert second.ts > first.ts
    assert second.node == "node-m"
    assert second.host.memory_total > 0 and 0 <= second.host.cpu_percent <= 100
    assert [p.name for p in second.processes] == ["tester"]
    assert second.processes[0].pid == os.getpid()
    assert second.capacity.cpu == CAPACITY_CPU
    assert second.capacity.memory == CAPACITY_MEMORY
    assert second.used.memory == second.processes[0].rss > 0
    assert second.free.memory == CAPACITY_MEMORY - second.used.memory
    assert second.free.cpu == pytest.approx(CAPACITY_CPU - second.used.cpu)


async def test_latest_request_returns_the_newest_sample(monitor, bus):
    heard = await monitor.next(timeout=10)
    latest = await bus.request(subjects.latest_metrics("node-m"), LatestMetricsRequest())
    assert latest.seq >= heard.seq


async def test_garbage_on_its_subjects_is_dropped_and_it_keeps_publishing(monitor, bus):
    before = await monitor.next(timeout=10)
    await bus.nc.publish(subjects.node_metrics("node-m").name, b"\x00garbage")
    reply = await bus.nc.request(subjects.latest_metrics("node-m").name, b"[1,2", timeout=2)
    assert reply.headers["Nats-Service-Error-Code"] == "400"
    after = await monitor.next(timeout=10)
    assert after.seq > before.seq


async def test_prometheus_endpoint_parses_and_matches_the_sample(monitor):
    sample = await monitor.next(timeout=10)
    text = await asyncio.to_thread(fetch, sample.metrics_url)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {name: family.samples[0].value for name, family in families.items()}
    assert value["colony_node_capacity_cpu_cores"] == CAPACITY_CPU
    assert value["colony_node_capacity_memory_bytes"] == CAPACITY_MEMORY
    assert value["colony_sample_seq"] >= sample.seq
    processes = {s.labels["process"] for s in families["colony_process_resident_bytes"].samples}
    assert processes == {"tester"}
    assert all(s.labels["node"] == "node-m" for f in families.values() for s in f.samples)
    with pytest.raises(urllib.error.HTTPError, match="404"):
        await asyncio.to_thread(fetch, sample.metrics_url.replace("/metrics", "/nope"))


async def test_samples_are_signed_with_the_cluster_secret(nats_server, bus, tmp_path):
    secret = b"a-cluster-secret-for-tests-only"
    (tmp_path / "cluster.secret").write_bytes(secret)
    config = monitor_config(nats_server)
    config.consensus.secret_file = str(tmp_path / "cluster.secret")
    sub = await bus.subscribe(subjects.node_metrics("node-m"))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(Monitor(), config, stop=stop))
    try:
        published = await sub.next(timeout=10)
        assert verify(secret, published) == published  # membership believes only these
        with pytest.raises(BadSignature):
            verify(b"another-cluster-secret", published)
        latest = await bus.request(subjects.latest_metrics("node-m"), LatestMetricsRequest())
        assert verify(secret, latest) == latest
    finally:
        stop.set()
        assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def test_without_a_cluster_secret_samples_go_unsigned(monitor):
    assert (await monitor.next(timeout=10)).mac == ""


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.read().decode()
