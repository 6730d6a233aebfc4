"""The monitor's pure core: declared capacity, what the node uses, the sample ring."""

import pytest

from colony.monitor.state import Samples, declared_capacity, used_by
from colony.shared.config import NodeSettings
from colony.shared.messages import HostMetrics, ProcessUsage, Resources

GIB = 2**30
HOST = HostMetrics(
    cpu_count=8,
    cpu_percent=25.0,
    load=(1.0, 0.5, 0.25),
    memory_total=16 * GIB,
    memory_available=8 * GIB,
    disk_path="/",
    disk_total=100 * GIB,
    disk_free=40 * GIB,
    process_count=300,
)
PROCESSES = [ProcessUsage("nats", 10, 100 * 2**20, 50.0), ProcessUsage("monitor", 11, 2**20, 150.0)]


def test_capacity_defaults_to_the_whole_host_for_one_node():
    assert declared_capacity(NodeSettings(), 8, 16 * GIB) == Resources(8.0, 16 * GIB)


def test_capacity_defaults_to_a_share_of_the_host():
    capacity = declared_capacity(NodeSettings(local_nodes=3), 8, 16 * GIB)
    assert capacity == Resources(2.67, 16 * GIB // 3)


def test_configured_capacity_wins():
    node = NodeSettings(capacity_cpu=1.5, capacity_memory=GIB, local_nodes=3)
    assert declared_capacity(node, 8, 16 * GIB) == Resources(1.5, GIB)


def test_used_by_sums_cores_and_memory():
    assert used_by(PROCESSES) == Resources(2.0, 101 * 2**20)
    assert used_by([]) == Resources(0.0, 0)


def add(samples: Samples, now: float, node: NodeSettings | None = None):
    return samples.add(
        node=node or NodeSettings(id="n1", name="node-1"),
        now=now,
        interval=1.0,
        node_started=100.0,
        host=HOST,
        processes=PROCESSES,
        capacity=Resources(4.0, 4 * GIB),
        nats_url="nats://127.0.0.1:4222",
        metrics_url="http://127.0.0.1:9222/metrics",
    )


def test_a_sample_from_the_readings():
    samples = Samples(size=5)
    assert samples.latest is None
    sample = add(samples, now=200.0)
    assert samples.latest == sample
    assert (sample.node, sample.name, sample.seq, sample.ts) == ("n1", "node-1", 1, 200.0)
    assert sample.host == HOST
    assert sample.used == Resources(2.0, 101 * 2**20)
    assert sample.free == Resources(2.0, 4 * GIB - 101 * 2**20)
    assert sample.free == sample.capacity - sample.used


def test_name_falls_back_to_the_node_id():
    assert add(Samples(1), 1.0, NodeSettings(id="n9")).name == "n9"


@pytest.mark.parametrize("size", [1, 3])
def test_ring_is_bounded_and_seq_keeps_counting(size):
    samples = Samples(size)
    for now in range(1, 8):
        add(samples, float(now))
    assert [s.seq for s in samples.ring] == list(range(8 - size, 8))
    assert samples.latest.seq == 7
    assert samples.latest.ts == 7.0
