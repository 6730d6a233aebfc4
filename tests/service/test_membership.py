"""Membership members against a real nats-server: join, converge, leave, crash."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys

import pytest

from colony.harness.processes import poll
from colony.membership.service import MembershipService
from colony.shared import runner, subjects
from colony.shared.config import dumps
from colony.shared.messages import Gossip, MembersRequest, MemberUpdate, NodeMeta


async def view(bus, node: str) -> dict[str, str]:
    try:
        reply = await bus.request(subjects.members(node), MembersRequest(), timeout=1)
    except Exception:
        return {}
    return {m.node: m.status for m in reply.members}


class Group:
    """Members running in this process, each with its own node id and stop switch."""

    def __init__(self, nats_server) -> None:
        self.server = nats_server
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}

    def start(self, node: str) -> None:
        self.stops[node] = asyncio.Event()
        config = self.server.node_config(node)
        self.tasks[node] = asyncio.create_task(
            runner.run(MembershipService(), config, stop=self.stops[node])
        )

    async def stop(self, node: str) -> None:
        self.stops[node].set()
        assert await asyncio.wait_for(self.tasks.pop(node), runner.SHUTDOWN_GRACE) == 0

    async def stop_all(self) -> None:
        for node in list(self.tasks):
            await self.stop(node)


@pytest.fixture
async def group(nats_server):
    members = Group(nats_server)
    yield members
    await members.stop_all()


async def everyone_sees(bus, observers, expected: dict[str, str]) -> bool:
    views = await asyncio.gather(*(view(bus, n) for n in observers))
    return all(all(v.get(k) == s for k, s in expected.items()) for v in views)


async def test_members_find_each_other_from_just_a_nats_url(group, bus):
    for node in ("m1", "m2", "m3"):
        group.start(node)
    alive = dict.fromkeys(["m1", "m2", "m3"], "alive")
    await poll(lambda: everyone_sees(bus, alive, alive), 20, "all three to see all alive")


async def test_a_member_that_stops_is_left_everywhere(group, bus):
    for node in ("m1", "m2", "m3"):
        group.start(node)
    alive = dict.fromkeys(["m1", "m2", "m3"], "alive")
    await poll(lambda: everyone_sees(bus, alive, alive), 20, "convergence")
    changes = await bus.subscribe(subjects.member_changes("m3"))
    await group.stop("m3")
    await poll(lambda: everyone_sees(bus, ["m1", "m2"], {"m3": "left"}), 10, "m3 left")
    event = await changes.next(timeout=5)
    assert (event.node, event.status) == ("m3", "left")


async def incarnation(bus, observer: str, node: str) -> int:
    reply = await bus.request(subjects.members(observer), MembersRequest(), timeout=1)
    return next(m.incarnation for m in reply.members if m.node == node)


@pytest.fixture
def member_process(nats_server, tmp_path):
    """Start a member as its own process (so it can be killed or stopped for real)."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(node: str) -> subprocess.Popen[bytes]:
        config = tmp_path / f"{node}.toml"
        config.write_text(dumps(nats_server.node_config(node)))
        argv = [sys.executable, "-m", "colony.membership", "--config", str(config)]
        processes.append(subprocess.Popen(argv))
        return processes[-1]

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait()


TRIO = ["m1", "m2", "m9"]


@pytest.fixture
async def m9(group, bus, member_process):
    """m1 and m2 in this process, m9 in its own: returned once all three see all alive."""
    group.start("m1")
    group.start("m2")
    process = member_process("m9")
    everyone = dict.fromkeys(TRIO, "alive")
    await poll(lambda: everyone_sees(bus, TRIO, everyone), 30, "all three to see all alive")
    return process


async def test_a_killed_member_is_declared_dead_and_rejoins_with_a_higher_incarnation(
    m9, bus, member_process
):
    process = m9
    process.send_signal(signal.SIGKILL)
    process.wait()
    await poll(lambda: everyone_sees(bus, ["m1", "m2"], {"m9": "dead"}), 20, "m9 dead")
    died_at = await incarnation(bus, "m1", "m9")
    member_process("m9")  # the same node, back with no memory of its past life
    everyone = dict.fromkeys(TRIO, "alive")
    await poll(lambda: everyone_sees(bus, TRIO, everyone), 30, "m9 alive again")
    assert await incarnation(bus, "m1", "m9") > died_at
    assert await incarnation(bus, "m2", "m9") > died_at


async def test_a_member_stopped_for_2_s_is_suspected_but_refutes_and_never_dies(m9, bus):
    process = m9
    changes = await bus.subscribe(subjects.member_changes("m9"))
    before = await incarnation(bus, "m1", "m9")
    process.send_signal(signal.SIGSTOP)  # its loop blocked: it neither answers nor ticks
    await asyncio.sleep(2)  # the fault itself lasts 2 s; nothing is awaited here
    process.send_signal(signal.SIGCONT)

    async def refuted() -> bool:
        views_alive = await everyone_sees(bus, ["m1", "m2"], {"m9": "alive"})
        now = [await incarnation(bus, n, "m9") for n in ("m1", "m2")]
        return views_alive and min(now) > before

    await poll(refuted, 20, "m9 to refute the suspicion")
    # Any death verdict would have been at the incarnation it just outbid, so
    # the events seen so far are all there will be about this episode.
    seen = []
    with contextlib.suppress(TimeoutError):
        while True:
            event = await changes.next(timeout=0.5)
            seen.append((event.observer, event.status))
    statuses = {status for _, status in seen}
    assert "suspect" in statuses, seen
    assert "dead" not in statuses, seen


async def test_lies_and_floods_are_dropped_and_the_view_is_unchanged(group, bus, caplog):
    group.start("m1")
    group.start("m2")
    both = dict.fromkeys(["m1", "m2"], "alive")
    await poll(lambda: everyone_sees(bus, both, both), 20, "convergence")
    lie = Gossip(sender="m2", updates=[MemberUpdate("m2", "dead", 99)])
    flood = Gossip(sender="x", updates=[MemberUpdate(f"n{i}", "alive", 0) for i in range(2000)])
    fat_meta = NodeMeta(labels={"junk": "x" * 5000})
    fat = Gossip(sender="fat", updates=[MemberUpdate("fat", "alive", 0, fat_meta)])
    for bad in (lie, flood, fat):
        await bus.publish(subjects.member_tell("m1"), bad)
    await bus.nc.publish(subjects.member_tell("m1").name, b"garbage")
    await bus.nc.flush()
    await poll(
        lambda: sum(r.getMessage() == "dropped gossip" for r in caplog.records) >= 3,
        5,
        "all three to be dropped",
    )
    assert await view(bus, "m1") == both
