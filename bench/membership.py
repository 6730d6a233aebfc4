"""Membership: how fast a join and a failure reach every member, at what cost, and
how often a healthy member is wrongly suspected.

N members run as real MembershipService instances spread over WORKERS
processes, all on one nats-server on loopback. One extra member runs alone
in its own process, so it can be started (join) and killed with -9 (failure).
Times are taken from the change events every member publishes
(`colony.changes.member.<node>`): a join is known by all when N observers
have reported it alive, a failure when N observers have reported it dead.
The soak runs SOAK_SIZE members for SOAK_SECONDS with one core kept busy by
another process and counts every suspicion and death: nobody was killed, so
each one is a false positive.

    COLONY_BENCH_SIZES=50 COLONY_BENCH_SOAK=60 python -m bench membership
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from colony.harness.processes import NatsServer, poll
from colony.shared import subjects
from colony.shared.bus import BusError, connect
from colony.shared.config import NatsSettings, dumps
from colony.shared.messages import MembersRequest

TITLE = "Membership"
SIZES = tuple(int(n) for n in os.environ.get("COLONY_BENCH_SIZES", "10,50,200").split(","))
WORKERS = 4
TRIALS = 10
COUNT_WINDOW = 10.0
SOAK_SIZE = 50
SOAK_SECONDS = float(os.environ.get("COLONY_BENCH_SOAK", "300"))
BUSY = [sys.executable, "-m", "colony.harness.busy"]
"""Keeps a core busy during the soak."""


def start_workers(url: str, size: int) -> list[subprocess.Popen[bytes]]:
    share = [size // WORKERS + (i < size % WORKERS) for i in range(WORKERS)]
    return [
        subprocess.Popen([sys.executable, "-m", "bench._members", url, f"w{w}", str(n)])
        for w, n in enumerate(share)
        if n
    ]


async def observers(
    bus, node: str, status: str, expected: int, timeout: float, ready: asyncio.Event
) -> float:
    """When (monotonic) `expected` distinct members have reported `node` as `status`.

    Sets `ready` once the server has the subscription: from then on no report
    can be missed, so the caller may start (or kill) the member.
    """
    seen: set[str] = set()
    sub = await bus.subscribe(subjects.member_changes(node))
    await bus.nc.flush()
    ready.set()
    try:
        async with asyncio.timeout(timeout):
            async for event in sub:
                if event.status == status and event.observer != node:
                    seen.add(event.observer)
                    if len(seen) >= expected:
                        return time.monotonic()
    except TimeoutError:
        return float("nan")
    finally:
        await sub.stop()
    return float("nan")


async def formed(bus, size: int, settled: bool = True) -> bool:
    """True once a member of each worker sees all `size` members alive (and, if
    `settled`, is at full health).

    Health too: a group started all at once works hard while its members check
    each other, and those still slowed down by it (Lifeguard) would probe less
    than a settled group does; the figures are those of a settled group.
    """
    for worker in range(min(WORKERS, size)):
        try:
            view = await bus.request(subjects.members(f"w{worker}-0"), MembersRequest(), 1.0)
        except BusError:
            return False
        if sum(m.status == "alive" for m in view.members) < size or (settled and view.health):
            return False
    return True


FANNED_OUT = {subjects.member_news().name, subjects.member_announce().name}
ANSWERED = {
    s("x").name.rsplit(".", 1)[0]
    for s in (subjects.member_ping, subjects.member_ping_req, subjects.member_sync)
}


async def message_rate(bus, size: int, seconds: float = COUNT_WINDOW) -> float:
    """Protocol messages per member per second, sent plus received.

    A request is two messages (its reply goes to an inbox, not seen here),
    each sent by one member and received by one; a broadcast is sent once
    and received by every other member.
    """
    events = 0

    async def tally(msg) -> None:
        nonlocal events
        if msg.subject in FANNED_OUT:
            events += size
        elif msg.subject.rsplit(".", 1)[0] in ANSWERED:
            events += 4
        else:
            events += 2

    sub = await bus.nc.subscribe(subjects.member_traffic(), cb=tally)
    await asyncio.sleep(seconds)  # a counting window, not a wait for a condition
    await sub.unsubscribe()
    return events / size / seconds


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
            settings.log.level = "warning"  # its 200 "member changed" lines are not figures
            config.write_text(dumps(settings))
            ready = asyncio.Event()
            joined = asyncio.create_task(observers(bus, name, "alive", size, 60, ready))
            await ready.wait()
            argv = [sys.executable, "-m", "colony.membership", "--config", str(config)]
            launched = time.monotonic()
            victim = subprocess.Popen(argv)  # noqa: ASYNC220 (starting it does not block)
            joins.append(await joined - launched)
            ready = asyncio.Event()
            died = asyncio.create_task(observers(bus, name, "dead", size, 60, ready))
            await ready.wait()
            killed = time.monotonic()
            victim.kill()
            victim.wait()
            failures.append(await died - killed)
            print(
                f"N={size} trial {trial + 1}: join {joins[-1]:.2f} s, failure {failures[-1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await bus.close()
        stop_workers(workers)
        server.stop()
    return {"join": joins, "failure": failures, "rate": rate}


async def soak(workdir: Path) -> dict[str, float]:
    """SOAK_SIZE members for SOAK_SECONDS beside a process that keeps one core busy."""
    server = NatsServer.standalone(workdir / "nats-soak").start()
    workers = start_workers(server.url, SOAK_SIZE)
    bus = await connect(NatsSettings(servers=[server.url]), "bench")
    busy = subprocess.Popen(BUSY)  # noqa: ASYNC220
    verdicts = {"suspect": 0, "dead": 0}
    suspected: set[str] = set()

    async def tally(msg) -> None:
        event = msgspec.json.decode(msg.data)
        if event["status"] in verdicts:
            verdicts[event["status"]] += 1
            suspected.add(event["node"])

    try:
        await poll(lambda: formed(bus, SOAK_SIZE), 120, f"{SOAK_SIZE} members to form")
        sub = await bus.nc.subscribe(subjects.member_changes(subjects.ANY).name, cb=tally)
        rate = await message_rate(bus, SOAK_SIZE, SOAK_SECONDS)
        await sub.unsubscribe()
        alive = await formed(bus, SOAK_SIZE, settled=False)
    finally:
        busy.kill()
        busy.wait()
        await bus.close()
        stop_workers(workers)
        server.stop()
    return {**verdicts, "members": len(suspected), "rate": rate, "alive": alive}


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()


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
        print(f"soak: {SOAK_SIZE} members for {SOAK_SECONDS:g} s", file=sys.stderr, flush=True)
        soaked = asyncio.run(soak(Path(tmp)))
    table = "\n".join(rows)
    soak_row = (
        f"| {soaked['suspect']} | {soaked['members']} | {soaked['dead']} "
        f"| {soaked['rate']:.1f} | {'yes' if soaked['alive'] else 'no'} |"
    )
    cores = os.cpu_count()
    return f"""N members in {WORKERS} worker processes (N/{WORKERS} each, one event loop
per process), plus the measured member alone in its own process; one
nats-server; loopback; the machine's {cores} cores shared by all of it; default
`Timing` (period 0.5 s). {TRIALS} trials per N: the member is started (join:
from launching its process, Python's start included, until all N have
reported it alive), then killed with -9 (failure: from the kill until all N
have reported it dead). Messages are counted on the membership subjects over
{COUNT_WINDOW:g} s, sent plus received, replies and fan-out included.

| N | join p50 | join p99 | failure p50 | failure p99 | msgs/s per member |
|---|---|---|---|---|---|
{table}

Soak: {SOAK_SIZE} members for {SOAK_SECONDS:g} s, placed as above, with one of the
{cores} cores kept busy by a spinning process; nobody is killed, so every
verdict is a false positive.

| suspicions (refuted) | members suspected | false deaths | msgs/s per member | all alive after |
|---|---|---|---|---|
{soak_row}

Anchor: HashiCorp memberlist's LAN defaults (1 s probe interval, suspicion
4 · log10(N) s growing to 6 times that) confirm a failure in 8-48 s at N = 100.
Bar: every member learns of a failure within 5 s at N = 200, with at most
10 messages/s per member, and no false death in the soak. (p99 of {TRIALS}
trials is their maximum.)
"""
