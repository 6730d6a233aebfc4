"""Membership under hostile input, against a real nats-server: floods of invented
members, ids that are not subject tokens, deeply nested JSON, forged metrics.

Each test ends by checking that nothing logged a traceback: bad input is dropped with
one line, and every listener keeps listening.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from test_membership import TRIO, Group, everyone_sees, group, m9, member_process, view  # noqa: F401

from colony.harness.processes import example_metrics, poll
from colony.membership.service import MembershipService
from colony.shared import runner, subjects
from colony.shared.messages import (
    Gossip,
    MembersRequest,
    MemberUpdate,
    PingReqRequest,
    Resources,
    encode,
)
from colony.shared.signing import sign

SECRET = b"a-cluster-secret-for-tests-only"


def tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


async def statuses(bus, observer: str) -> dict[str, str]:
    return await view(bus, observer)


async def test_a_flood_of_invented_members_neither_fills_the_table_nor_hides_a_failure(
    m9,  # noqa: F811
    bus,
    caplog,
):
    process = m9
    for i in range(3000):  # names nobody answers for, each announcing itself
        fake = f"fake-{i}"
        await bus.publish(
            subjects.member_announce(),
            Gossip(sender=fake, updates=[MemberUpdate(fake, "alive", 0)]),
        )
    await bus.nc.flush()
    stopped = time.monotonic()
    process.send_signal(signal.SIGSTOP)  # a real member stops answering

    async def suspected() -> bool:
        views = await asyncio.gather(view(bus, "m1"), view(bus, "m2"))
        return all(v.get("m9") in ("suspect", "dead") for v in views)

    await poll(suspected, 5, "m9 to be suspected by m1 and m2")  # 3.1 s on a clean cluster
    took = time.monotonic() - stopped
    process.send_signal(signal.SIGCONT)
    for observer in ("m1", "m2"):
        assert sorted(await view(bus, observer)) == TRIO  # no invented member got in
    assert not tracebacks(caplog)
    print(f"m9 suspected {took:.2f} s after it stopped, after 3000 invented announcements")


async def test_ids_that_are_not_subject_tokens_are_dropped_at_the_edge(group, bus, caplog):  # noqa: F811
    group.start("m1")
    group.start("m2")
    both = dict.fromkeys(["m1", "m2"], "alive")
    await poll(lambda: everyone_sees(bus, both, both), 20, "convergence")
    evil = MemberUpdate("evil.node.>", "alive", 0)
    await bus.publish(subjects.member_tell("m1"), Gossip(sender="m2", updates=[evil]))
    await bus.publish(subjects.member_news(), Gossip(sender="x", updates=[evil]))
    await bus.publish(subjects.member_announce(), Gossip(sender="evil.node.>", updates=[evil]))
    await bus.publish(
        subjects.member_news(),
        Gossip(sender="x", updates=[MemberUpdate("m2", "suspect", 0, by="a.*")]),
    )
    await bus.publish(
        subjects.member_news(), Gossip(sender="x", updates=[MemberUpdate("big", "alive", 2**60)])
    )
    answer = await bus.nc.request(
        subjects.member_ping_req("m1").name,
        encode(PingReqRequest(sender="m2", target="evil.node.>", seq=1)),
        timeout=2,
    )
    assert answer.headers["Nats-Service-Error-Code"] == "400"
    answer = await bus.nc.request(
        subjects.member_ping("m1").name, encode(Gossip(sender="a.b", updates=[evil])), timeout=2
    )
    assert answer.headers["Nats-Service-Error-Code"] == "400"
    await poll(
        lambda: sum(r.getMessage() == "dropped gossip" for r in caplog.records) >= 7,
        5,
        "every bad message to be dropped",
    )
    for observer in ("m1", "m2"):
        assert await view(bus, observer) == both
    assert not tracebacks(caplog)


DEEP = b'{"sender": "x", "updates": ' + b"[" * 3000 + b"]" * 3000 + b"}"


async def test_deeply_nested_json_on_every_subject_leaves_every_listener_listening(
    group,  # noqa: F811
    bus,
    caplog,
):
    group.start("m1")
    group.start("m2")
    both = dict.fromkeys(["m1", "m2"], "alive")
    await poll(lambda: everyone_sees(bus, both, both), 20, "convergence")
    for request in (subjects.member_ping, subjects.member_ping_req, subjects.member_sync):
        answer = await bus.nc.request(request("m1").name, DEEP, timeout=2)
        assert answer.headers["Nats-Service-Error-Code"] == "400"
    for subject in (
        subjects.member_tell("m1"),
        subjects.member_news(),
        subjects.member_announce(),
        subjects.node_metrics("m1"),
    ):
        await bus.nc.publish(subject.name, DEEP)
    await bus.nc.flush()
    reply = await bus.request(subjects.members("m1"), MembersRequest(), timeout=2)
    assert {m.node for m in reply.members} == {"m1", "m2"}
    group.start("m3")  # it joins through every listener: announce, tell, news, ping, sync
    three = dict.fromkeys(["m1", "m2", "m3"], "alive")
    await poll(lambda: everyone_sees(bus, three, three), 20, "m3 to join")
    await group.stop("m3")  # its leave travels as news
    await poll(lambda: everyone_sees(bus, ["m1", "m2"], {"m3": "left"}), 10, "m3 to leave")
    assert not tracebacks(caplog)


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "cluster.secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


async def free_of(bus, node: str) -> Resources:
    reply = await bus.request(subjects.members(node), MembersRequest(), timeout=2)
    return next(m.meta.free for m in reply.members if m.node == node)


async def test_only_metrics_signed_with_the_cluster_secret_set_free_resources(
    nats_server, bus, secret_file, caplog
):
    config = nats_server.node_config("m1")
    config.consensus.secret_file = str(secret_file)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(MembershipService(), config, stop=stop))
    try:
        genuine = sign(SECRET, example_metrics("m1", free=Resources(1.0, 2**30)))
        metrics = subjects.node_metrics("m1")
        await poll(lambda: view(bus, "m1"), 10, "m1 to answer")
        await bus.publish(metrics, genuine)
        await poll(lambda: _is(free_of(bus, "m1"), genuine.free), 5, "the signed sample")
        rich = Resources(64.0, 2**40)
        forged = [
            example_metrics("m1", free=rich),  # unsigned
            sign(b"not-the-cluster-secret", example_metrics("m1", free=rich)),
            sign(SECRET, example_metrics("m2", free=rich)),  # another node's, on m1's subject
            genuine,  # replayed
            sign(SECRET, example_metrics("m1", free=rich, ts=time.time() - 3600)),  # too old
        ]
        for sample in forged:
            await bus.publish(metrics, sample)
        await poll(
            lambda: sum(r.getMessage() == "dropped metrics" for r in caplog.records) >= 5,
            5,
            "every forged sample to be dropped",
        )
        assert await free_of(bus, "m1") == genuine.free
        later = sign(SECRET, example_metrics("m1", free=Resources(0.2, 2**29)))
        await bus.publish(metrics, later)  # the monitor's next sample still counts
        await poll(lambda: _is(free_of(bus, "m1"), later.free), 5, "the next signed sample")
        assert not tracebacks(caplog)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def _is(value, expected) -> bool:
    return await value == expected
