"""JetStream helpers against a real 3-server cluster (shared by the module, reset per test)."""

from __future__ import annotations

import pytest

from colony.harness.processes import example_metrics as sample
from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import BusError, NoResponders
from colony.shared.messages import encode

STREAM = subjects.METRICS_STREAM


async def ensure_metrics_stream(bus, **options):
    """Create (or update) the stream and wait until it has a leader: a new R3 stream
    answers publishes only once its replicas have elected one."""
    await bus.ensure_stream(
        STREAM, [subjects.node_metrics(subjects.ANY).name], replicas=3, **options
    )

    async def has_leader() -> bool:
        try:
            return (await bus.stream_placement(STREAM)).leader is not None
        except BusError:
            return False

    await poll(has_leader, 10, f"stream {STREAM} to elect a leader")


async def test_last_message_per_subject_is_kept(cluster_bus):
    await ensure_metrics_stream(cluster_bus, max_msgs_per_subject=1, memory=True)
    for seq in (1, 2, 3):
        await cluster_bus.js.publish(subjects.node_metrics("a").name, encode(sample("a", seq)))
    await cluster_bus.js.publish(subjects.node_metrics("b").name, encode(sample("b", 1)))
    last = await cluster_bus.last_message(STREAM, subjects.node_metrics("a"))
    assert last is not None and last.seq == 3
    assert await cluster_bus.stream_subjects(STREAM) == [
        subjects.node_metrics("a").name,
        subjects.node_metrics("b").name,
    ]


async def test_ensure_stream_is_idempotent_and_updates(cluster_bus):
    await ensure_metrics_stream(cluster_bus, max_msgs_per_subject=1)
    await ensure_metrics_stream(cluster_bus, max_msgs_per_subject=1)
    await ensure_metrics_stream(cluster_bus, max_msgs_per_subject=5)
    info = await cluster_bus.js.stream_info(STREAM)
    assert info.config.max_msgs_per_subject == 5
    assert info.config.num_replicas == 3


async def test_missing_subject_reads_as_nothing_and_missing_stream_says_so(cluster_bus):
    with pytest.raises(NoResponders, match=STREAM):
        await cluster_bus.last_message(STREAM, subjects.node_metrics("a"))
    assert await cluster_bus.stream_subjects(STREAM) == []
    await ensure_metrics_stream(cluster_bus)

    async def reads_nothing() -> bool:
        try:
            return await cluster_bus.last_message(STREAM, subjects.node_metrics("zz")) is None
        except NoResponders:  # a new stream's replicas may still be electing a leader
            return False

    await poll(reads_nothing, 10, "the new stream to answer that it holds nothing on zz")
