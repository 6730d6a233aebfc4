"""The supervisor in-process, with real child processes: restarts, records, stop."""

from __future__ import annotations

import asyncio
import logging
import sys

from colony.bootstrapper.state import RestartPolicy
from colony.bootstrapper.supervisor import Child, Supervisor
from colony.harness.processes import NatsServer, poll
from colony.shared import natsd
from colony.shared.statedir import NATS, SUPERVISOR, NodeDir

CRASH = Child("crashy", [sys.executable, "-c", "raise SystemExit(3)"])
SLEEPER = Child("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])


def supervisor(tmp_path, *services: Child) -> Supervisor:
    server = NatsServer.standalone(tmp_path / "nats")  # only its config: the supervisor runs it
    server.workdir.mkdir(parents=True)
    server.conf_file.write_text(server.config.render())
    nats = Child(NATS, [natsd.binary(), "-c", str(server.conf_file)])
    fast = RestartPolicy(initial=0.01, maximum=0.05)
    node = NodeDir(tmp_path / "node")
    return Supervisor(node, server.node_config(), fast, run=[nats, *services])


async def test_a_child_that_dies_at_once_is_restarted_again_and_again_with_the_reason(
    tmp_path, caplog
):
    sup = supervisor(tmp_path, CRASH, SLEEPER)
    task = asyncio.create_task(sup.run())
    with caplog.at_level(logging.WARNING, logger="colony.bootstrapper"):

        def restarts():
            return [r for r in caplog.records if getattr(r, "child", "") == "crashy"]

        await poll(lambda: len(restarts()) >= 3, 15, "crashy restarted 3 times")
    assert {r.why for r in restarts()} == {"exited with code 3"}
    assert sup.node_dir.record("sleeper").alive()
    sup.stopping.set()
    await asyncio.wait_for(task, 15)


async def test_stop_ends_every_child_and_removes_the_records(tmp_path):
    sup = supervisor(tmp_path, SLEEPER)
    task = asyncio.create_task(sup.run())
    records = await poll(
        lambda: len(sup.node_dir.records()) == 3 and sup.node_dir.records(), 15, "3 records"
    )
    assert sorted(r.name for r in records) == [NATS, "sleeper", SUPERVISOR]
    sup.stopping.set()
    await asyncio.wait_for(task, 15)
    assert [r for r in records if r.name != SUPERVISOR and r.group_alive()] == []
    assert sup.node_dir.records() == []


async def test_a_killed_child_is_restarted_with_a_new_record(tmp_path):
    sup = supervisor(tmp_path, SLEEPER)
    task = asyncio.create_task(sup.run())
    first = await poll(lambda: sup.node_dir.record("sleeper"), 15, "sleeper recorded")
    sup.processes["sleeper"].kill()
    second = await poll(
        lambda: (r := sup.node_dir.record("sleeper")) and r.pid != first.pid and r,
        15,
        "sleeper restarted",
    )
    assert second.alive() and not first.alive()
    sup.stopping.set()
    await asyncio.wait_for(task, 15)
