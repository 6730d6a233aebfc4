"""Membership: how fast a join and a failure reach every member, and at what cost.

N members run as real MembershipService instances spread over WORKERS
processes, all on one nats-server on loopback. One extra member runs alone
in its own process, so it can be started (join) and killed with -9 (failure).
Times are taken from the change events every member publishes
(`colony.changes.member.<node>`): a join is known by all when N observers
have reported it alive, a failure when N observers have reported it dead.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from colony.shared import subjects
from colony.shared.bus import BusError, connect
from colony.shared.config import NatsSettings, dumps
from colony.shared.messages import MembersRequest
from colony.shared.testing import NatsServer, poll

TITLE = "Membership"
SIZES = (10, 50, 200)
WORKERS = 4
TRIALS = 5
COUNT_WINDOW = 10.0


def start_workers(url: str, size: int) -> list[subprocess.Popen[bytes]]:
    share = [size // WORKERS + (i < size % WORKERS) for i in range(WORKERS)]
    return [
        subprocess.Popen([sys.executable, "-m", "bench._members", url, f"w{w}", str(n)])
        for w, n in enumerate(share)
        if n
    ]


async def observers(bus, node: str, status: str, expected: int, timeout: float) -> float:
    """Seconds until `expected` distinct members have reported `node` as `status`."""
    seen: set[str] = set()
    sub = await bus.subscribe(subjects.member_changes(node))
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            async for event in sub:
                if event.status == status and event.observer != node:
                    seen.add(event.observer)
                    if len(seen) >= expected:
                        return time.monotonic() - started
    except TimeoutError:
        return float("nan")
    finally:
        await sub.stop()
    return float("nan")


async def formed(bus, size: int) -> bool:
    """True once a member of each worker sees all `size` members alive."""
    for worker in range(min(WORKERS, size)):
        try:
            view = await bus.request(subjects.members(f"w{worker}-0"), MembersRequest(), 1.0)
        except BusError:
            return False
        if sum(m.status == "alive" for m in view.members) < size:
            return False
    return True


async def message_rate(bus, size: int) -> float:
    """Protocol messages per member per second, sent plus received (requests and replies)."""
    count = 0

    async def tally(_msg) -> None:
        nonlocal count
        count += 1

    sub = await bus.nc.subscribe("colony.membership.>", cb=tally)
    await asyncio.sleep(COUNT_WINDOW)  # a counting window, not a wait for a condition
    await sub.unsubscribe()
    # every request has a reply (not seen here: it goes to an inbox); each message
    # is sent by one member and received by another
    return count * 2 * 2 / size / COUNT_WINDOW


async def measure(size: int, workdir: Path) -> dict[str, list[float] | float]:
    server = NatsServer.standalone(workdir / f"nats-{size}").start()
    workers = start_workers(server.url, size)
    bus = await connect(NatsSettings(servers=[server.url]), "bench")
    joins, failures = [], []
    try:
        await poll(lambda: formed(bus, size), 120, f"{size} members to know each other")
        rate = await message_rate(bus, size)
        for trial in range(TRIALS):
            name = f"victim-{trial}"
            config = workdir / f"{name}.toml"
            settings = server.node_config(name)
            config.write_text(dumps(settings))
            joined = asyncio.create_task(observers(bus, name, "alive", size, 60))
            argv = [sys.executable, "-m", "colony.membership", "--config", str(config)]
            victim = subprocess.Popen(argv)  # noqa: ASYNC220 (starting it does not block)
            joins.append(await joined)
            died = asyncio.create_task(observers(bus, name, "dead", size, 60))
            await asyncio.sleep(0.2)
            victim.kill()
            victim.wait()
            failures.append(await died)
            print(
                f"N={size} trial {trial + 1}: join {joins[-1]:.2f} s, failure {failures[-1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await bus.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        server.stop()
    return {"join": joins, "failure": failures, "rate": rate}


def p(values: list[float], q: float) -> str:
    ok = sorted(v for v in values if v == v)
    if len(ok) < len(values):
        return f"{len(values) - len(ok)} of {len(values)} not reached"
    return f"{ok[min(len(ok) - 1, round(q * (len(ok) - 1)))]:.2f} s"


def run() -> str:
    rows = []
    with tempfile.TemporaryDirectory(prefix="colony-bench-members-") as tmp:
        for size in SIZES:
            result = asyncio.run(measure(size, Path(tmp)))
            joins, failures = result["join"], result["failure"]
            rows.append(
                f"| {size} | {p(joins, 0.5)} | {p(joins, 0.99)} | {p(failures, 0.5)} "
                f"| {p(failures, 0.99)} | {result['rate']:.1f} |"
            )
    table = "\n".join(rows)
    return f"""N members in {WORKERS} worker processes (N/{WORKERS} each, one event loop
per process), plus the measured member alone in its own process; one
nats-server; loopback; default `Timing` (period 0.5 s). {TRIALS} trials per
N: the member is started (join: until all N have reported it alive), then
killed with -9 (failure: until all N have reported it dead). Messages are
counted on the membership subjects over {COUNT_WINDOW:g} s, replies included.

| N | join p50 | join p99 | failure p50 | failure p99 | msgs/s per member |
|---|---|---|---|---|---|
{table}

Anchor: HashiCorp memberlist's defaults confirm a failure in 8-48 s at
N = 100. Bar: every member learns of a failure within 5 s at N = 200, with
at most 10 messages/s per member. (p99 of {TRIALS} trials is their maximum.)
"""
