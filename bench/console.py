"""Console: how busy a change stream the operator console absorbs, and how fast it draws.

The real `ConsoleApp` runs in this process at 120x40 under Textual's test runner, with a
driver that renders every frame to the terminal's escape sequences as a real terminal's
driver would (then discards them: the runner's own driver renders nothing), so a frame
costs what it costs in a terminal. It is fed by a `ScriptedFeed`: a synthetic cluster
(10 nodes, 40 jobs of 10 instances) loaded once, then changes pushed at a fixed rate, as
a busy cluster's change stream brings them (instances turning unhealthy and back,
restarting; now and then a job scaled), each stamped with its commit time when pushed,
and a metrics sample per node per second.

Measured per rate, on each screen:
- **stall**: how late a 5 ms ticker in the app's event loop wakes: the longest the app is
  busy in one go (applying a batch, refreshing its widgets, rendering a frame), so what a
  key press waits. The bar: p99 under 50 ms, the frame time.
- **frame render**: the time of each screen update that draws (layout, render, output).
- **commit -> drawn**: from a change's commit time to the first frame written after the
  batch holding it was applied. The bar: p99 <= 100 ms at 1,000 changes/s.
- **absorbed**: changes applied per second (a console that falls behind applies fewer
  than are pushed, and its backlog grows).

Then a soak at 1,000 changes/s, and the process's RSS after it (the history held is
bounded). Last, the console as `colony console` opens it (BusFeed, ClusterActions) on a
real 3-node `colony up` cluster, while a client commits 1,000 kv writes a second through
Raft: commit -> drawn through the change stream and the feed.

`COLONY_BENCH_CONSOLE_SECONDS=3600 python -m bench console` makes the soak an hour;
`COLONY_BENCH_CONSOLE_STEP` sets each rate's seconds; `COLONY_BENCH_CONSOLE_CLUSTER` the
real cluster's (0: skip it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
from textual.drivers.headless_driver import HeadlessDriver
from textual.pilot import Pilot
from textual.screen import Screen

from bench._cluster import local_cluster
from bench._report import say, table, verdict
from colony.cli.console import opened
from colony.cli.events import cluster_secret
from colony.cli.local.write import voters_of
from colony.cli.main import build_parser
from colony.console.app import ConsoleApp
from colony.console.feed import ScriptedFeed
from colony.console.model import Changed, Connection, ConnectionChanged, Loaded, Sampled
from colony.harness.processes import example_metrics, poll
from colony.shared import changes, jobspec
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Change,
    InstanceRecord,
    JobRecord,
    KvPut,
    NodeRecord,
    Rollout,
    to_builtins,
)
from colony.shared.statedir import StateDir

TITLE = "Console"
SIZE = (120, 40)
RATES = (1000, 2000, 5000, 10000, 20000)
"""Changes per second pushed, on the Events screen (the one every change redraws)."""
STEP = float(os.environ.get("COLONY_BENCH_CONSOLE_STEP", "3"))
"""Seconds each rate runs."""
SOAK = float(os.environ.get("COLONY_BENCH_CONSOLE_SECONDS", "10"))
"""Seconds of the soak at 1,000 changes/s, before the RSS is read."""
SOAK_RATE = 1000
CLUSTER_SECONDS = float(os.environ.get("COLONY_BENCH_CONSOLE_CLUSTER", "10"))
"""Seconds of the real-cluster phase (0: skip it)."""
CLUSTER_RATE = 1000
"""kv writes a second committed through Raft in the real-cluster phase."""
IN_FLIGHT = 20
"""Entries the real-cluster writer awaits at once."""
KEYS = {"cluster": "1", "jobs": "2", "events": "3"}
NODES, JOBS, REPLICAS = 10, 40, 10
TICK = 0.01
"""Seconds between two pushes of the stream (each pushes what is due)."""
STALL_TICK = 0.005
SETTLE = 0.5
BATCH = ConsoleApp.__init__.__kwdefaults__["batch_interval"]
"""Seconds between two batches: the app's default."""
"""Seconds a screen is left to settle after it is brought to the front, before a phase."""
FRAME_BAR = 0.050
LATENCY_BAR = 0.100
WEB = Path(__file__).parent.parent / "examples" / "web.yaml"
MIB = 2**20


# --- figures ---------------------------------------------------------------------------


class Histogram:
    """Durations in 0.5 ms bins (up to 30 s): quantiles of millions of samples in fixed
    memory (the soak may last an hour)."""

    BIN = 0.0005

    def __init__(self) -> None:
        self.counts = [0] * 60_000
        self.n = 0
        self.top = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[min(len(self.counts) - 1, int(seconds / self.BIN))] += 1
        self.n += 1
        self.top = max(self.top, seconds)

    def quantile(self, q: float) -> float:
        if not self.n:
            return 0.0
        wanted, seen = q * self.n, 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return (i + 1) * self.BIN
        return self.top


@dataclass
class Phase:
    screen: str
    rate: int
    seconds: float
    pushed: int = 0
    applied: int = 0
    frames: int = 0
    failed: int = 0
    rss: float = 0.0
    events_held: int = 0
    stall: Histogram = field(default_factory=Histogram)
    render: Histogram = field(default_factory=Histogram)
    render_cpu: Histogram = field(default_factory=Histogram)
    """The CPU time the app's thread spent in each screen update (less than the wall
    time when the process waited for a core, or its other threads held the GIL)."""
    latency: Histogram = field(default_factory=Histogram)
    commit: Histogram = field(default_factory=Histogram)
    """From a write asked to its commit (the real cluster's writer)."""
    fed: Histogram = field(default_factory=Histogram)
    """From a live change's commit time to the feed handing it to the app."""
    alone: tuple[float, float, int] = (0.0, 0.0, 0)
    """The real cluster's change stream as a bare follower in a process of its own saw
    it: p50, p99 (seconds from commit) and changes seen."""

    @property
    def absorbed(self) -> float:
        return self.applied / self.seconds

    @property
    def ok(self) -> bool:
        return self.stall.quantile(0.99) < FRAME_BAR and self.absorbed >= 0.95 * self.rate


class FrameDriver(HeadlessDriver):
    """The test runner's driver, but not headless: Textual renders each frame to escape
    sequences and writes them here, where `on_write` sees them and they end."""

    on_write: Callable[[str], None] = staticmethod(lambda data: None)

    @property
    def is_headless(self) -> bool:
        return False

    def write(self, data: str) -> None:
        FrameDriver.on_write(data)


class Probe:
    """What the bench hooks into the running app: the model's batches, the frames, the
    screen updates, and a ticker measuring stalls; the figures go to `phase`."""

    def __init__(self, app: ConsoleApp) -> None:
        self.app = app
        self.phase = Phase("startup", 0, 1.0)
        self.applied: list[float] = []
        """Commit times of the live changes applied since the last frame."""
        model = app.model
        apply = model.apply

        def applying(items):
            items = list(items)
            areas = apply(items)
            live = [i.change.ts for i in items if isinstance(i, Changed) and i.live]
            self.applied += live
            self.phase.applied += len(live)
            return areas

        model.apply = applying
        FrameDriver.on_write = self.frame
        probe = self

        class Fed(deque):
            """The app's buffer, noting when the feed hands it each live change."""

            def append(self, item) -> None:
                if isinstance(item, Changed) and item.live:
                    probe.phase.fed.add(time.time() - item.change.ts)
                super().append(item)

        app._buffer = Fed()

    def frame(self, data: str) -> None:
        now = time.time()
        self.phase.frames += 1
        for committed in self.applied:
            self.phase.latency.add(now - committed)
        self.applied = []

    async def stalls(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(STALL_TICK)
            self.phase.stall.add(time.perf_counter() - started - STALL_TICK)


@contextlib.contextmanager
def timed_updates(probe: Probe) -> Iterator[None]:
    """Each screen update (layout, widgets' render, the frame written) into the phase's
    render figures."""
    update = Screen._on_timer_update

    def timed(screen: Screen) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        update(screen)
        probe.phase.render.add(time.perf_counter() - started)
        probe.phase.render_cpu.add(time.thread_time() - cpu)

    Screen._on_timer_update = timed
    try:
        yield
    finally:
        Screen._on_timer_update = update


# --- the synthetic cluster -------------------------------------------------------------


def cluster(now: float) -> tuple[Loaded, list[InstanceRecord], list[JobRecord]]:
    spec = jobspec.load(WEB).spec
    nodes = [
        NodeRecord(
            node=f"n{i:02d}",
            name=f"node-{i}",
            address="127.0.0.1",
            cpu=8.0,
            memory=16 * 2**30,
            status="alive",
            registered=now,
        )
        for i in range(1, NODES + 1)
    ]
    jobs, instances = [], []
    for j in range(JOBS):
        name = f"job-{j:02d}"
        spec_j = msgspec.structs.replace(spec, name=name, replicas=REPLICAS)
        rollout = Rollout(version=1, status="succeeded", promoted=True, started=now, ended=now)
        jobs.append(
            JobRecord(name=name, version=1, spec=spec_j, replicas=REPLICAS, rollout=rollout)
        )
        for slot in range(REPLICAS):
            instances.append(
                InstanceRecord(
                    id=f"{name}-{slot}-{j:04x}",
                    job=name,
                    version=1,
                    slot=slot,
                    node=nodes[(j + slot) % NODES].node,
                    cpu=0.1,
                    memory=64 * MIB,
                    ports={"http": 20000 + j * REPLICAS + slot},
                    state="running",
                    pid=1000 + j * REPLICAS + slot,
                    started_at=now,
                    health="healthy",
                    healthy_since=now,
                )
            )
    return Loaded(index=1, nodes=nodes, jobs=jobs, instances=instances), instances, jobs


class Stream:
    """The busy cluster's changes, made as they are pushed (their commit time: now)."""

    def __init__(self, instances: list[InstanceRecord], jobs: list[JobRecord]) -> None:
        self.index = 1
        self.versions: dict[str, int] = {}
        self.instances = itertools.cycle(instances)
        self.jobs = itertools.cycle(jobs)
        self.turn = 0
        self.size = len(instances)

    def next(self, now: float) -> Change:
        self.index += 1
        self.turn += 1
        if self.turn % 50 == 0:  # a job scaled (its change leaves the spec out)
            job = next(self.jobs)
            kind, id = "job", job.name
            replicas = REPLICAS + self.turn // 50 % 2
            detail = to_builtins(msgspec.structs.replace(job, replicas=replicas, changed=now))
            detail.pop("spec")
        else:  # an instance turning unhealthy, restarting, healthy again
            i = next(self.instances)
            kind, id = "instance", i.id
            sick = self.turn % 3 == 1
            record = msgspec.structs.replace(
                i,
                health="unhealthy" if sick else "healthy",
                health_output="503 Service Unavailable" if sick else "",
                restarts=self.turn // self.size,
                changed=now,
            )
            detail = to_builtins(record)
        version = self.versions[id] = self.versions.get(id, 1) + 1
        return Change(
            index=self.index, kind=kind, id=id, version=version, log_index=self.index,
            detail=detail, ts=now,
        )  # fmt: skip


# --- the run ---------------------------------------------------------------------------


class NoActions:
    """The bench acts on nothing."""

    def __getattr__(self, name: str):
        raise AttributeError(name)


async def push(feed: ScriptedFeed, probe: Probe, stream: Stream, rate: int, seconds: float):
    """Push `rate` changes a second for `seconds` (each tick what is due), and a metrics
    sample of each node every second."""
    started = time.monotonic()
    pushed, sampled = 0, 0
    while (elapsed := time.monotonic() - started) < seconds:
        now = time.time()
        due = int(rate * elapsed) - pushed
        items: list = [Changed(stream.next(now)) for _ in range(due)]
        if int(elapsed) >= sampled:
            sampled += 1
            items += [
                Sampled(example_metrics(f"n{i:02d}", sampled, name=f"node-{i}"))
                for i in range(1, NODES + 1)
            ]
        feed.push(*items)
        pushed += due
        probe.phase.pushed += due
        await asyncio.sleep(TICK)


@contextlib.asynccontextmanager
async def probed(app: ConsoleApp) -> AsyncIterator[tuple[Pilot, Probe]]:
    """`app` running at SIZE, every frame rendered, the probe hooked in."""
    app.driver_class = FrameDriver
    probe = Probe(app)  # (before the app starts: the feed is handed its buffer then)
    async with app.run_test(size=SIZE, headless=False) as pilot:
        ticker = asyncio.create_task(probe.stalls())
        try:
            with timed_updates(probe):
                yield pilot, probe
        finally:
            ticker.cancel()


async def measured(
    pilot: Pilot, probe: Probe, screen: str, rate: int, seconds: float, load: Awaitable[None]
) -> Phase:
    """A phase: `screen` in front, then `load` (changes at `rate` for `seconds`)."""
    await pilot.press(KEYS[screen.split()[0]])
    await pilot.pause()
    await asyncio.sleep(SETTLE)  # (a screen's first draw, its layout, is not the steady state)
    probe.phase = phase = Phase(screen, rate, seconds)
    await load
    phase.rss = psutil.Process().memory_info().rss / MIB
    say(
        f"{screen} at {rate}/s: absorbed {phase.absorbed:.0f}/s, stall p99 "
        f"{phase.stall.quantile(0.99) * 1000:.1f} ms, commit->drawn p99 "
        f"{phase.latency.quantile(0.99) * 1000:.1f} ms, {phase.frames} frames, "
        f"RSS {phase.rss:.0f} MiB"
    )
    return phase


async def scripted() -> list[Phase]:
    """Every rate on the Events screen, 1,000/s on the others, then the soak."""
    loaded, instances, jobs = cluster(time.time())
    connected = ConnectionChanged(Connection("connected", "nats://127.0.0.1:4222", "node-1"))
    feed = ScriptedFeed([connected, loaded])
    app = ConsoleApp(feed, NoActions())
    stream = Stream(instances, jobs)
    plan = [("events", rate, STEP) for rate in RATES]
    plan += [("jobs", 1000, STEP), ("cluster", 1000, STEP), ("events (soak)", SOAK_RATE, SOAK)]
    phases = []
    async with probed(app) as (pilot, probe):
        await poll(lambda: app.model.index >= stream.index, 30, "the cluster loaded")
        for screen, rate, seconds in plan:
            load = push(feed, probe, stream, rate, seconds)
            phases.append(await measured(pilot, probe, screen, rate, seconds, load))
            # the backlog applied before the next phase
            await poll(lambda: app.model.index >= stream.index, 60, "the backlog applied", 0.05)
        phases[-1].events_held = len(app.model.events)
    return phases


async def on_cluster() -> Phase:
    """The console as `colony console` opens it (BusFeed, ClusterActions) on a real local
    cluster, while a client commits `CLUSTER_RATE` kv writes a second through Raft."""
    with local_cluster(3) as running:
        args = build_parser().parse_args(["console", "--state-dir", str(running.state.path)])
        async with opened(args) as (feed, actions):
            app = ConsoleApp(feed, actions)
            async with probed(app) as (pilot, probe):
                await poll(
                    lambda: app.model.connection.state == "connected" and app.model.index,
                    60,
                    "the console connected and the cluster read",
                )
                servers = [url for n in running.state.nodes() if (url := n.nats_url())]
                bus = await connect(NatsSettings(servers=servers), "bench-console-writer")
                try:
                    writer = Management(bus, voters_of(running.state))
                    rate, seconds = CLUSTER_RATE, CLUSTER_SECONDS
                    async with following_alone(running.state.path) as alone:
                        load = write(writer, probe, rate, seconds)
                        phase = await measured(
                            pilot, probe, "events (cluster)", rate, seconds, load
                        )
                        await quiet(app)
                finally:
                    await bus.close()
                phase.alone = alone.get()
    return phase


@contextlib.asynccontextmanager
async def following_alone(state: Path) -> AsyncIterator[Alone]:
    """A bare follower of the change stream in a process of its own, for the block: how
    late the stream itself brings each change (the console's feed can be no earlier)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import bench.console as b; b.follow_alone()", str(state),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    alone = Alone()
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), 60)
        if ready.strip() != b"ready":
            raise RuntimeError("the bare follower did not start")
        yield alone
        process.stdin.write(b"stop\n")
        await process.stdin.drain()
        said = await asyncio.wait_for(process.stdout.readline(), 30)
        p50, p99, n = said.split()
        alone.quantiles = (float(p50), float(p99), int(n))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@dataclass
class Alone:
    quantiles: tuple[float, float, int] = (0.0, 0.0, 0)
    """p50, p99 (seconds) and count of the bare follower's lags."""

    def get(self) -> tuple[float, float, int]:
        return self.quantiles


def follow_alone() -> None:
    """(In a process of its own: `following_alone`.) Follow the change stream of the
    cluster whose state dir is argv[1] until told to stop (a line on stdin); say how late
    each change came after its commit (p50, p99, count on stdout)."""

    async def main() -> None:
        found = StateDir(Path(sys.argv[1]))
        servers = [url for n in found.nodes() if (url := n.nats_url())]
        bus = await connect(NatsSettings(servers=servers), "bench-console-follower")
        lags = Histogram()

        async def read() -> None:
            async for change in changes.follow(bus, after=None, secret=cluster_secret(found)):
                lags.add(time.time() - change.ts)

        reading = asyncio.create_task(read())
        try:
            await asyncio.sleep(0.5)  # (subscribed by then: its first read is asked)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # "stop"
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await bus.close()
        print(lags.quantile(0.5), lags.quantile(0.99), lags.n, flush=True)

    asyncio.run(main())


async def write(client: Management, probe: Probe, rate: int, seconds: float) -> None:
    """Commit `rate` kv writes a second for `seconds`: what is due every tick, in one
    entry (at most IN_FLIGHT entries awaited at once; what is due waits for a slot)."""
    started, sent = time.monotonic(), 0
    flying: set[asyncio.Task] = set()

    async def commit(count: int) -> None:
        puts = [KvPut(f"console-bench-{(sent + k) % 1000}", str(sent + k)) for k in range(count)]
        asked = time.time()
        try:
            await client.propose(*puts)
            probe.phase.commit.add(time.time() - asked)
        except ManagementError as e:
            probe.phase.failed += count
            say(f"a write failed: {e}")

    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * elapsed) - sent
        if due and len(flying) < IN_FLIGHT:
            task = asyncio.create_task(commit(due))
            flying.add(task)
            task.add_done_callback(flying.discard)
            sent += due
            probe.phase.pushed += due
        await asyncio.sleep(TICK)
    if flying:
        await asyncio.wait(flying)


async def quiet(app: ConsoleApp, still: float = 1.0) -> None:
    """Until the console has applied nothing new for `still` seconds (the stream drained)."""
    seen = {"index": -1, "at": 0.0}

    def settled() -> bool:
        now = time.monotonic()
        if app.model.index != seen["index"]:
            seen.update(index=app.model.index, at=now)
        return now - seen["at"] >= still

    await poll(settled, 60, "the change stream drained", 0.1)


def report(phases: list[Phase]) -> str:
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    rows = [
        [
            p.screen,
            f"{p.rate:,}",
            f"{p.absorbed:,.0f}",
            ms(p.stall.quantile(0.5)),
            ms(p.stall.quantile(0.99)),
            ms(p.stall.top),
            ms(p.render.quantile(0.5)),
            ms(p.render.quantile(0.99)),
            ms(p.render_cpu.quantile(0.99)),
            ms(p.latency.quantile(0.5)),
            ms(p.latency.quantile(0.99)),
            f"{p.frames / p.seconds:.0f}",
            f"{p.rss:.0f}",
            verdict(p.ok),
        ]
        for p in phases
    ]
    columns = [
        "screen", "changes /s", "applied /s", "stall p50 ms", "stall p99 ms", "stall max ms",
        "frame render p50 ms", "frame render p99 ms", "frame CPU p99 ms", "commit→drawn p50 ms",
        "commit→drawn p99 ms", "frames /s", "RSS MiB", "stall p99 < 50 ms",
    ]  # fmt: skip
    events = [p for p in phases if p.screen == "events"]
    best = max((p.rate for p in events if p.ok), default=0)
    at_1000 = next(p for p in events if p.rate == 1000)
    soak = next(p for p in phases if p.screen == "events (soak)")
    latency_ok = at_1000.latency.quantile(0.99) <= LATENCY_BAR
    said = [
        f"`ConsoleApp` at {SIZE[0]}x{SIZE[1]} fed by a `ScriptedFeed`: a synthetic cluster "
        f"of {NODES} nodes and {JOBS} jobs of {REPLICAS} instances, then changes pushed at "
        f"each rate for {STEP:g} s (instances turning unhealthy and back, restarting; one "
        "change in 50 a job scaled), each stamped with its commit time when pushed, plus a "
        "metrics sample per node per second. Every frame is rendered to escape sequences as "
        "in a terminal (then discarded). *Stall*: how late a 5 ms ticker in the app's loop "
        "wakes (what a key press waits: the frame time); *frame render*: one screen update "
        "(layout, render, output), wall time; *frame CPU*: the CPU time the app's thread "
        "spent in it (the difference: waiting for a core on a shared machine); "
        "*commit→drawn*: from the change's commit time to the first frame written after "
        "the batch holding it was applied; *applied*: the changes the console applied a "
        "second (fewer than pushed: it fell behind).",
    ]
    cluster = next((p for p in phases if p.screen == "events (cluster)"), None)
    if cluster:
        said.append(
            f"*events (cluster)*: the console as `colony console` opens it (`BusFeed`, "
            f"`ClusterActions`) on a real 3-node `colony up` cluster, while a client commits "
            f"{CLUSTER_RATE:,} kv writes a second through Raft for {cluster.seconds:g} s "
            f"(what is due every {TICK * 1000:.0f} ms in one entry; "
            f"{cluster.pushed:,} written, {cluster.failed:,} failed; a write took "
            f"{cluster.commit.quantile(0.5) * 1000:.0f} ms p50, "
            f"{cluster.commit.quantile(0.99) * 1000:.0f} ms p99 from asked to committed): "
            "commit→drawn here is from the entry's time (the change's `ts`: when the Raft "
            "leader made the entry, so the replication and commit count too) through the "
            "change stream, the feed and the batch to the frame. Where that time goes: a bare "
            "follower of the change stream, in a process of its own, got the changes "
            f"{ms(cluster.alone[0])} ms p50, {ms(cluster.alone[1])} ms p99 after their commit "
            f"({cluster.alone[2]:,} seen): the stream's own lag on this machine with the "
            "cluster's three nodes on its two cores; the console's feed (its own thread and "
            f"event loop) handed them to the app {ms(cluster.fed.quantile(0.5))} ms p50, "
            f"{ms(cluster.fed.quantile(0.99))} ms p99 after their commit; the rest, from "
            "handed to drawn, is the batch and the frame. The kv writer runs in the console's "
            "process, and the feed's thread takes turns with the app's on the interpreter's "
            f"lock: a frame took {ms(cluster.render_cpu.quantile(0.99))} ms p99 of the app "
            f"thread's CPU but {ms(cluster.render.quantile(0.99))} ms p99 of wall time."
        )
    said += [
        table(columns, rows),
        absorbed(events, best) + " Commit→drawn p99 at 1,000 changes/s: "
        f"**{at_1000.latency.quantile(0.99) * 1000:.0f} ms** (bar ≤ "
        f"{LATENCY_BAR * 1000:.0f} ms: {verdict(latency_ok)})"
        + (
            f"; through a real cluster: **{cluster.latency.quantile(0.99) * 1000:.0f} ms**"
            if cluster
            else ""
        )
        + f". After the {soak.seconds:g} s soak at {SOAK_RATE:,} changes/s: RSS "
        f"**{soak.rss:.0f} MiB**, {soak.events_held:,} events held (the history is bounded). "
        "`COLONY_BENCH_CONSOLE_SECONDS=3600` makes the soak an hour; "
        "`COLONY_BENCH_CONSOLE_CLUSTER=0` skips the real cluster.",
        f"Where commit→drawn goes at 1,000 changes/s (events): a batch every "
        f"{BATCH * 1000:.0f} ms (a change waits half that on average), then the frame: "
        f"{at_1000.render.quantile(0.5) * 1000:.0f} ms p50 of wall time, "
        f"{at_1000.render.quantile(0.99) * 1000:.0f} ms p99, of which the app's thread "
        f"ran {at_1000.render_cpu.quantile(0.99) * 1000:.0f} ms p99: the rest of the tail "
        "is the process waiting for a core. The machine was shared: load average "
        f"{LOAD['before']:.1f} when the run began, {LOAD['after']:.1f} when it ended, "
        f"on {os.cpu_count()} cores.",
    ]
    return "\n\n".join(said)


def absorbed(events: list[Phase], best: int) -> str:
    """The headline: the highest rate absorbed within the frame time, or why none was."""
    bar = f"{FRAME_BAR * 1000:.0f} ms"
    if best:
        return (
            f"Absorbed with the stall p99 under {bar}: **{best:,} changes/s** (the highest "
            "rate tried that kept it and applied at least 95% of what was pushed)."
        )
    applied = max((p.rate for p in events if p.absorbed >= 0.95 * p.rate), default=0)
    stalls = [p.stall.quantile(0.99) * 1000 for p in events]
    renders = [p.render.quantile(0.99) * 1000 for p in events]
    return (
        f"No rate tried kept the stall p99 under {bar}: it was {min(stalls):.0f}-"
        f"{max(stalls):.0f} ms (one frame's render alone: {min(renders):.0f}-"
        f"{max(renders):.0f} ms p99 at {SIZE[0]}x{SIZE[1]}); the console "
        f"applied what was pushed up to **{applied:,} changes/s**."
    )


LOAD = {"before": 0.0, "after": 0.0}
"""The machine's 1-minute load average at the start and the end of the run."""


def run() -> str:
    LOAD["before"] = os.getloadavg()[0]
    phases = asyncio.run(scripted())
    if CLUSTER_SECONDS:
        phases.append(asyncio.run(on_cluster()))
    LOAD["after"] = os.getloadavg()[0]
    return report(phases)
