"""The bus against a real nats-server: typed, validating, and clear when nobody answers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from colony.harness.processes import NatsServer
from colony.harness.processes import example_metrics as sample
from colony.shared import subjects
from colony.shared.bus import (
    BusError,
    NoResponders,
    NotConnected,
    NotFound,
    Publication,
    RequestTimeout,
    StreamError,
    connect,
)
from colony.shared.config import NatsSettings
from colony.shared.messages import LatestMetricsRequest, NodeMetrics, decode, encode


async def test_subscriber_gets_typed_messages(bus):
    sub = await bus.subscribe(subjects.node_metrics(subjects.ANY))
    await bus.publish(subjects.node_metrics("n1"), sample("n1", seq=7))
    got = await sub.next(timeout=5)
    assert isinstance(got, NodeMetrics)
    assert (got.node, got.seq) == ("n1", 7)


async def test_malformed_message_is_logged_and_dropped_and_the_next_one_arrives(bus, caplog):
    sub = await bus.subscribe(subjects.node_metrics(subjects.ANY))
    on = subjects.node_metrics("n1").name
    with caplog.at_level(logging.WARNING):
        await bus.nc.publish(on, b"not json")
        await bus.nc.publish(on, b'{"node": 5}')
        await bus.publish(subjects.node_metrics("n1"), sample(seq=3))
        got = await sub.next(timeout=5)
    assert got.seq == 3
    dropped = [r for r in caplog.records if r.getMessage() == "dropped message"]
    assert len(dropped) == 2
    assert all(r.subject == on for r in dropped)


async def test_publishing_the_wrong_type_is_refused_before_sending(bus):
    with pytest.raises(TypeError, match="carries NodeMetrics"):
        await bus.publish(subjects.node_metrics("n1"), LatestMetricsRequest())


async def test_request_without_responders_says_so(bus):
    with pytest.raises(NoResponders, match=r"colony\.monitor\.latest\.ghost"):
        await bus.request(subjects.latest_metrics("ghost"), LatestMetricsRequest())


async def test_request_that_is_never_answered_times_out_clearly(bus):
    silent = await bus.nc.subscribe(subjects.latest_metrics("mute").name)  # hears, never answers
    with pytest.raises(RequestTimeout, match=r"within 0\.2 s"):
        await bus.request(subjects.latest_metrics("mute"), LatestMetricsRequest(), timeout=0.2)
    await silent.unsubscribe()


async def test_request_gets_a_typed_reply(bus):
    async def answer(msg):
        await msg.respond(encode(sample("n9")))

    await bus.nc.subscribe(subjects.latest_metrics("n9").name, cb=answer)
    reply = await bus.request(subjects.latest_metrics("n9"), LatestMetricsRequest())
    assert reply.node == "n9"


async def test_gather_collects_every_reply(bus):
    async def answer(msg):
        await msg.respond(b"here")

    for _ in range(3):
        await bus.nc.subscribe("colony.test.roll-call", cb=answer)
    replies = await bus.gather("colony.test.roll-call", wait=0.3)
    assert replies == [b"here"] * 3


async def test_connect_to_nothing_fails_fast_and_names_the_servers(tmp_path):
    dead = NatsServer.standalone(tmp_path).url  # never started
    with pytest.raises(NotConnected, match=dead.replace(".", r"\.")):
        await asyncio.wait_for(
            connect(NatsSettings(servers=[dead], connect_timeout=0.5), "t", reconnect=False), 5
        )


async def test_a_subscriber_survives_a_server_restart(tmp_path):
    server = NatsServer.standalone(tmp_path).start()
    try:
        settings = NatsSettings(servers=[server.url], ping_interval=0.5)
        client = await connect(settings, "t")
        sub = await client.subscribe(subjects.node_metrics(subjects.ANY))
        server.kill()
        server.start()

        async def publish_until_heard():
            for seq in range(1, 200):
                if client.connected:
                    await client.publish(subjects.node_metrics("n1"), sample(seq=seq))
                await asyncio.sleep(0.05)

        publisher = asyncio.create_task(publish_until_heard())
        got = await sub.next(timeout=10)
        publisher.cancel()
        assert got.node == "n1"
        await client.close()
    finally:
        server.stop()


async def test_a_subscription_is_live_at_the_server_once_subscribe_returns(bus, nats_server):
    """Another connection's publish right after subscribe returns is delivered (the
    stopped-manager test once missed an announcement published in that window)."""
    other = await connect(NatsSettings(servers=[nats_server.url]), "other")
    try:
        for seq in range(100):
            subject = subjects.node_metrics(f"n{seq}")
            sub = await bus.subscribe(subject)
            await other.publish(subject, sample(f"n{seq}", seq=seq))
            assert (await sub.next(timeout=2)).seq == seq
    finally:
        await other.close()


async def test_every_call_on_a_closed_connection_fails_with_the_bus_own_error(nats_server):
    client = await connect(NatsSettings(servers=[nats_server.url]), "closed")
    await client.close()
    metrics = subjects.node_metrics("n1")
    calls = {
        "publish": client.publish(metrics, sample()),
        "request": client.request(subjects.latest_metrics("n1"), LatestMetricsRequest()),
        "subscribe": client.subscribe(metrics),
        "gather": client.gather("colony.test.anyone", wait=0.1),
        "ensure_stream": client.ensure_stream("CLOSED", ["colony.closed.>"]),
        "stream_state": client.stream_state("CLOSED"),
        "stream_publish": client.stream_publish(metrics, sample()),
        "flush": client.flush(1),
    }
    for name, call in calls.items():
        with pytest.raises(NotConnected) as failed:
            await call
        assert "closed" in str(failed.value), name
        assert type(failed.value).__module__ == "colony.shared.bus", name


async def test_stream_calls_are_typed_and_fail_with_the_bus_own_errors(bus):
    metrics = subjects.node_metrics("n1")
    with pytest.raises(NoResponders, match="no stream stores"):
        await bus.stream_publish(metrics, sample(seq=1))  # no stream captures it yet
    with pytest.raises(NotFound, match="stream TEST_METRICS"):
        await bus.stream_state("TEST_METRICS")
    await bus.ensure_stream("TEST_METRICS", [subjects.node_metrics(subjects.ANY).name])
    first = await bus.stream_publish(metrics, sample(seq=1), msg_id="one")
    again = await bus.stream_publish(metrics, sample(seq=1), msg_id="one")
    assert (first.stream, first.seq, first.duplicate) == ("TEST_METRICS", 1, False)
    assert (again.seq, again.duplicate) == (1, True)  # the stream dropped the repeat
    batch = [Publication(metrics, sample(seq=n)) for n in range(2, 6)]
    acks = [a async for a in bus.stream_publish_all(batch)]
    assert [(a.position, a.seq) for a in acks] == [(0, 2), (1, 3), (2, 4), (3, 5)]
    state = await bus.stream_state("TEST_METRICS")
    assert (state.first_seq, state.last_seq, state.messages) == (1, 5, 5)
    stored = await bus.stored("TEST_METRICS", 3)
    assert stored.subject == metrics.name and decode(stored.data, NodeMetrics).seq == 3
    assert await bus.delete_stored("TEST_METRICS", 3)
    assert await bus.stored("TEST_METRICS", 3) is None
    assert not await bus.delete_stored("TEST_METRICS", 3)
    assert await bus.stored("TEST_METRICS", 99) is None
    assert await bus.stored("TEST_METRICS", 0) is None  # an empty stream's first_seq
    assert not await bus.delete_stored("TEST_METRICS", 99)
    assert (await bus.last_message("TEST_METRICS", metrics)).seq == 5
    with pytest.raises(StreamError) as refused:  # another stream cannot take the same subjects
        await bus.ensure_stream("TEST_OVERLAP", [metrics.name])
    assert refused.value.code == 400 and "TEST_OVERLAP" in str(refused.value)
    assert isinstance(refused.value, BusError)


async def test_a_stream_publisher_cancelled_while_acks_arrive_stops(bus):
    """A task publishing into a stream ends when cancelled, even when the cancellation
    comes as an ack does (asyncio.wait_for on Python 3.11 drops such a cancellation: a
    voter's change relay then went on publishing, and the voter could not stop)."""
    metrics = subjects.node_metrics("n9")
    await bus.ensure_stream("TEST_CANCEL", [metrics.name])
    acked = asyncio.Event()

    async def publish_forever() -> None:
        while True:
            batch = [Publication(metrics, sample("n9", seq=n)) for n in range(50)]
            async for _ack in bus.stream_publish_all(batch):
                acked.set()

    for round in range(40):
        task = asyncio.create_task(publish_forever())
        acked.clear()
        await asyncio.wait_for(acked.wait(), 10)
        for _ in range(round % 5):  # land the cancellation at different points of the acks
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, f"round {round}: the publisher went on after it was cancelled"
        assert task.cancelled()
