"""Cold start: from an instance's placement committed to it running, with the process driver.

Real parts: a 3-server NATS cluster, three `python -m colony.consensus` voters,
and one node agent (`python -m colony.bootstrapper.agent`, process driver) on
a node of its own. This process stands in for the manager's curator: it
commits each `InstancesPlace` itself, with the manager's epoch, so what is
timed is the agent alone (no scheduling): it hears the placement on the change
stream, starts the process, and reports it `running`.

Jobs started one instance at a time, STARTS times each: a sleeping process
(`sleep 3600`), and a small HTTP server (a Python socket loop answering on its
`PORT`, run with `-S`) with a whole core, and with 0.1 core (a quarter as many
starts). Each start is timed from the moment the placement's
commit was answered here (`ProposeReply`):
- to `started_at`: the agent's own timestamp of the process started, in its
  `running` report (same machine, same clock);
- to the `running` change seen here on the stream (the report committed too);
- for the HTTP server, to the first TCP connect to its port that succeeds
  (tried every millisecond from the commit on).
Then the instance is stopped (`InstancesStop`), seen `exited`, and removed,
before the next start.

    python -m bench coldstart
    python -m bench.coldstart --quick     # 20 starts each: printed, nothing written
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import time
from dataclasses import dataclass, field

from bench._jobs import Site, site
from bench._report import ms, quantile, say, table, verdict
from colony.shared.changes import follow
from colony.shared.jobspec import JobResources, JobSpec, Task
from colony.shared.management import Management
from colony.shared.messages import (
    Change,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobRun,
    Placement,
)

TITLE = "Cold start"
STARTS = int(os.environ.get("COLONY_BENCH_STARTS", "200"))
NODE = "agent-1"
PORTS = (31000, 31999)
BAR = 0.050
"""Seconds, p50, from the placement committed to the instance running."""
SERVER = """\
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.sendall(b"HTTP/1.0 200 OK\\r\\ncontent-length: 3\\r\\n\\r\\nok\\n")
    c.close()
"""
"""The HTTP server: a socket loop, so that the time is the process's, not http.server's
imports."""
JOBS = {
    "sleeper": JobSpec(
        name="sleeper",
        task=Task(command="sleep", args=["3600"]),
        replicas=0,
        resources=JobResources(cpu=0.1, memory=32 * 2**20),
    ),
    "http": JobSpec(
        name="http",
        task=Task(command=sys.executable, args=["-S", "-c", SERVER]),
        replicas=0,
        resources=JobResources(cpu=1.0, memory=256 * 2**20),
        ports=["http"],
    ),
    "http-capped": JobSpec(
        name="http-capped",
        task=Task(command=sys.executable, args=["-S", "-c", SERVER]),
        replicas=0,
        resources=JobResources(cpu=0.1, memory=256 * 2**20),
        ports=["http"],
    ),
}
"""replicas 0: no curator runs here, this process places the instances itself. The
same server twice: with a whole core, and with 0.1 (its cgroup's cpu quota, where the
host has one, slows the interpreter's start)."""
SHARE = {"sleeper": 1.0, "http": 1.0, "http-capped": 0.25}
"""The share of STARTS each job is started."""


@dataclass
class Start:
    proposed: float
    committed: float
    started_at: float = 0.0
    running_seen: float = 0.0
    answered: float = 0.0
    """HTTP only: the first TCP connect that succeeded."""
    reason: str = ""
    """What the agent said in its `running` report (the limits it applied)."""


@dataclass
class Watch:
    """The instance changes seen on the stream, by id: (state, detail, seen at)."""

    seen: dict[str, list[tuple[str, dict, float]]] = field(default_factory=dict)
    node: dict | None = None

    async def follow(self, where: Site) -> None:
        async for change in follow(
            where.bus, after=0, kinds=["instance", "node"], secret=where.secret
        ):
            self.saw(change)

    def saw(self, change: Change) -> None:
        if change.kind == "node":
            if change.id == NODE:
                self.node = change.detail
            return
        state = change.detail.get("state", "")
        self.seen.setdefault(change.id, []).append((state, change.detail, time.time()))

    def state(self, instance: str, wanted: str) -> tuple[dict, float] | None:
        return next(((d, t) for s, d, t in self.seen.get(instance, []) if s == wanted), None)


async def wait(condition, timeout: float, what: str, every: float = 0.001):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)
    return found


async def connects(port: int, timeout: float) -> float:
    """When a TCP connect to the port first succeeds (tried every millisecond)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing answered on port {port} within {timeout:g} s"
                ) from None
            await asyncio.sleep(0.001)
            continue
        answered = time.time()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return answered


async def one(client: Management, watch: Watch, epoch: int, job: str, n: int) -> Start:
    instance = f"{job}-{n}-{secrets.token_hex(2)}"
    spec = JOBS[job]
    ports = {"http": PORTS[0] + n % (PORTS[1] - PORTS[0])} if spec.ports else {}
    placement = Placement(
        id=instance,
        job=job,
        version=1,
        slot=n,
        node=NODE,
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        ports=ports,
        reason="bench/coldstart",
    )
    proposed = time.time()
    reply = await client.propose(InstancesPlace(placements=[placement]), epoch=epoch)
    start = Start(proposed, time.time())
    if not reply.outcomes[0].ok:
        raise RuntimeError(f"placing {instance} refused: {reply.outcomes[0].error}")
    if ports:
        start.answered = await connects(ports["http"], 10)
    detail, start.running_seen = await wait(
        lambda: watch.state(instance, "running") or watch.state(instance, "failed"),
        10,
        f"{instance} running",
    )
    if detail["state"] != "running":
        raise RuntimeError(f"{instance} failed: {detail.get('reason')}")
    start.started_at = detail.get("started_at", 0.0)
    start.reason = detail.get("reason", "")
    await client.propose(InstancesStop(ids=[instance], reason="measured"), epoch=epoch)
    await wait(lambda: watch.state(instance, "exited"), 15, f"{instance} exited", every=0.01)
    await client.propose(InstancesRemove(ids=[instance]), epoch=epoch)
    return start


async def measure() -> tuple[dict[str, list[Start]], dict]:
    async with site("colony-bench-coldstart-") as where:
        chief = await where.manager()
        others = [v for v in where.voters.ids if v != chief.node]
        watch = Watch()
        following = asyncio.create_task(watch.follow(where))
        try:
            where.start(
                "colony.bootstrapper.agent",
                NODE,
                {
                    "node": {"capacity_cpu": 2.0, "capacity_memory": 4 * 2**30},
                    "agent": {"port_lo": PORTS[0], "port_hi": PORTS[1], "drivers": ["process"]},
                },
            )

            def registered():
                where.check_running()
                return watch.node

            await wait(registered, 60, f"the agent to register {NODE}", every=0.05)
            for spec in JOBS.values():
                await where.management.propose(JobRun(spec=spec))
            # the leader first: it answers once the entry is committed and applied there
            # (a follower would answer once it heard of the commit, a heartbeat later)
            client = Management(where.bus, [chief.node, *others], timeout=30)
            starts: dict[str, list[Start]] = {}
            for job in JOBS:
                count = max(1, round(STARTS * SHARE[job]))
                for n in range(count):
                    starts.setdefault(job, []).append(await one(client, watch, chief.epoch, job, n))
                    if (n + 1) % 50 == 0:
                        say(f"{job}: {n + 1} of {count}")
            return starts, {"manager": chief.node, "epoch": chief.epoch}
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)


def report(starts: dict[str, list[Start]], context: dict) -> str:
    rows = []
    p50s = []

    def row(job: str, what: str, values: list[float]) -> None:
        rows.append(
            [job, what, ms(quantile(values, 0.5)), ms(quantile(values, 0.99)), ms(max(values))]
        )

    for job, runs in starts.items():
        row(job, "propose to commit answered", [s.committed - s.proposed for s in runs])
        to_started = [s.started_at - s.committed for s in runs]
        p50s.append(quantile(to_started, 0.5))
        row(job, "**commit to `started_at`** (the agent's report)", to_started)
        if any(s.answered for s in runs):
            row(job, "commit to its port answering", [s.answered - s.committed for s in runs])
        row(
            job,
            "commit to `running` seen on the stream",
            [s.running_seen - s.committed for s in runs],
        )
    jobs = table(
        ["job", "starts", "command", "cpu, memory", "the agent said (first start)"],
        [
            [
                job,
                str(len(runs)),
                f"`{os.path.basename(JOBS[job].task.command)} {JOBS[job].task.args[0]}`",
                f"{JOBS[job].resources.cpu:g}, {JOBS[job].resources.memory / 2**20:g} MiB",
                runs[0].reason or "-",
            ]
            for job, runs in starts.items()
        ],
    )
    worst = max(p50s)
    return f"""Three `python -m colony.consensus` voters on a 3-server NATS cluster and one
node agent (`python -m colony.bootstrapper.agent`, process driver, its own node
{NODE}). This process stands in for the manager's curator: it commits each
`InstancesPlace` itself with the manager's epoch ({context["manager"]}, epoch
{context["epoch"]}), sent to the Raft leader, so nothing is scheduled and the agent
alone is timed. One instance at a time, each stopped (and seen `exited`) and
removed before the next. `http` runs a Python socket loop answering HTTP on `$PORT`
(`python -S -c ...`), with a whole core and capped at 0.1 core:

{jobs}

Every figure is from the moment this process got the placement's commit answer
from the leader (`ProposeReply`, once the entry is committed and applied there);
`started_at` is the agent's timestamp in its `running` report (one machine, one
clock), taken once the workload's process exists (its pid came back from the
driver's wrapper); the port is tried every millisecond from the commit on; the
`running` change is the agent's report, committed and relayed, as seen here.

{table(["job", "from", "p50 ms", "p99 ms", "max ms"], rows)}

Bar: p50 from the placement committed to running (`started_at`) at most
{BAR * 1000:.0f} ms: {ms(worst)} ms at worst, {verdict(worst <= BAR)}."""


def run() -> str:
    starts, context = asyncio.run(measure())
    return report(starts, context)


def main() -> None:
    """A small run, printed: 20 starts of each job."""
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="20 starts of each job")
    if parser.parse_args().quick:
        global STARTS
        STARTS = 20
    print(run())


if __name__ == "__main__":
    main()
