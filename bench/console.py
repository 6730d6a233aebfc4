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
bounded). `COLONY_BENCH_CONSOLE_SECONDS=3600 python -m bench console` makes the soak an
hour; `COLONY_BENCH_CONSOLE_STEP` sets each rate's seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
from textual.drivers.headless_driver import HeadlessDriver
from textual.screen import Screen

from bench._report import say, table, verdict
from colony.console.app import ConsoleApp
from colony.console.feed import ScriptedFeed
from colony.console.model import Changed, Connection, ConnectionChanged, Loaded, Sampled
from colony.harness.processes import example_metrics, poll
from colony.shared import jobspec
from colony.shared.messages import (
    Change,
    InstanceRecord,
    JobRecord,
    NodeRecord,
    Rollout,
    to_builtins,
)

TITLE = "Console"
SIZE = (120, 40)
RATES = (1000, 2000, 5000, 10000, 20000)
"""Changes per second pushed, on the Events screen (the one every change redraws)."""
STEP = float(os.environ.get("COLONY_BENCH_CONSOLE_STEP", "3"))
"""Seconds each rate runs."""
SOAK = float(os.environ.get("COLONY_BENCH_CONSOLE_SECONDS", "10"))
"""Seconds of the soak at 1,000 changes/s, before the RSS is read."""
SOAK_RATE = 1000
NODES, JOBS, REPLICAS = 10, 40, 10
TICK = 0.01
"""Seconds between two pushes of the stream (each pushes what is due)."""
STALL_TICK = 0.005
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
    backlog: int = 0
    rss: float = 0.0
    events_held: int = 0
    stall: Histogram = field(default_factory=Histogram)
    render: Histogram = field(default_factory=Histogram)
    latency: Histogram = field(default_factory=Histogram)

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
        self.committed: dict[int, float] = {}
        """Commit time of each change pushed and not yet drawn."""
        self.applied: list[int] = []
        """Indexes applied since the last frame."""
        model = app.model
        apply = model.apply

        def applying(items):
            items = list(items)
            areas = apply(items)
            self.applied += [i.change.index for i in items if isinstance(i, Changed)]
            self.phase.applied += sum(isinstance(i, Changed) for i in items)
            return areas

        model.apply = applying
        FrameDriver.on_write = self.frame

    def frame(self, data: str) -> None:
        now = time.time()
        self.phase.frames += 1
        for index in self.applied:
            committed = self.committed.pop(index, None)
            if committed is not None:
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
        started = time.perf_counter()
        update(screen)
        probe.phase.render.add(time.perf_counter() - started)

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
        changes = [stream.next(now) for _ in range(due)]
        for change in changes:
            probe.committed[change.index] = change.ts
        items: list = [Changed(c) for c in changes]
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


async def measure() -> list[Phase]:
    now = time.time()
    loaded, instances, jobs = cluster(now)
    connected = ConnectionChanged(Connection("connected", "nats://127.0.0.1:4222", "node-1"))
    feed = ScriptedFeed([connected, loaded])
    app = ConsoleApp(feed, NoActions())
    app.driver_class = FrameDriver
    stream = Stream(instances, jobs)
    phases = []
    async with app.run_test(size=SIZE, headless=False) as pilot:
        probe = Probe(app)
        ticker = asyncio.create_task(probe.stalls())
        with timed_updates(probe):
            await pilot.pause()
            plan = [("events", "3", rate, STEP) for rate in RATES]
            plan += [("jobs", "2", 1000, STEP), ("cluster", "1", 1000, STEP)]
            plan.append(("events (soak)", "3", SOAK_RATE, SOAK))
            for screen, key, rate, seconds in plan:
                await pilot.press(key)
                await pilot.pause()
                probe.phase = phase = Phase(screen, rate, seconds)
                probe.committed.clear()
                await push(feed, probe, stream, rate, seconds)
                phase.backlog = stream.index - app.model.index
                phase.rss = psutil.Process().memory_info().rss / MIB
                phases.append(phase)
                say(
                    f"{screen} at {rate}/s: absorbed {phase.absorbed:.0f}/s, stall p99 "
                    f"{phase.stall.quantile(0.99) * 1000:.1f} ms, commit->drawn p99 "
                    f"{phase.latency.quantile(0.99) * 1000:.1f} ms, {phase.frames} frames, "
                    f"backlog {phase.backlog}, RSS {phase.rss:.0f} MiB"
                )
                await drain(app, stream)
            ticker.cancel()
        phases[-1].events_held = len(app.model.events)
    return phases


async def drain(app: ConsoleApp, stream: Stream, timeout: float = 60.0) -> None:
    """Until the app has applied every change pushed (before the next phase starts)."""
    await poll(lambda: app.model.index >= stream.index, timeout, "the backlog applied", 0.05)


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
            ms(p.render.quantile(0.99)),
            ms(p.latency.quantile(0.5)),
            ms(p.latency.quantile(0.99)),
            f"{p.frames / p.seconds:.0f}",
            f"{p.rss:.0f}",
            verdict(p.ok),
        ]
        for p in phases
    ]
    columns = [
        "screen", "pushed /s", "absorbed /s", "stall p50 ms", "stall p99 ms", "stall max ms",
        "frame render p99 ms", "commit→drawn p50 ms", "commit→drawn p99 ms", "frames /s",
        "RSS MiB", "stall p99 < 50 ms",
    ]  # fmt: skip
    events = [p for p in phases if p.screen == "events"]
    best = max((p.rate for p in events if p.ok), default=0)
    at_1000 = next(p for p in events if p.rate == 1000)
    soak = phases[-1]
    latency_ok = at_1000.latency.quantile(0.99) <= LATENCY_BAR
    return "\n\n".join(
        [
            f"`ConsoleApp` at {SIZE[0]}x{SIZE[1]} fed by a `ScriptedFeed`: a synthetic cluster "
            f"of {NODES} nodes and {JOBS} jobs of {REPLICAS} instances, then changes pushed "
            f"at each rate for {STEP:g} s (instances turning unhealthy and back, restarting; "
            "one change in 50 a job scaled), each stamped with its commit time when pushed, "
            "plus a metrics sample per node per second. Every frame is rendered to escape "
            "sequences as in a terminal (then discarded). *Stall*: how late a 5 ms ticker in "
            "the app's loop wakes (what a key press waits: the frame time); *frame render*: "
            "one screen update (layout, render, output); *commit→drawn*: from the change's "
            "commit time to the first frame written after the batch holding it was applied.",
            table(columns, rows),
            f"Absorbed with the stall p99 under {FRAME_BAR * 1000:.0f} ms: "
            f"**{best:,} changes/s** (the highest rate tried that kept it and applied at "
            f"least 95% of what was pushed). Commit→drawn p99 at 1,000 changes/s: "
            f"**{at_1000.latency.quantile(0.99) * 1000:.0f} ms** (bar ≤ "
            f"{LATENCY_BAR * 1000:.0f} ms: {verdict(latency_ok)}). After the "
            f"{soak.seconds:g} s soak at {SOAK_RATE:,} changes/s: RSS "
            f"**{soak.rss:.0f} MiB**, {soak.events_held:,} events held (the "
            "history is bounded). `COLONY_BENCH_CONSOLE_SECONDS=3600` makes the soak an hour.",
        ]
    )


def run() -> str:
    return report(asyncio.run(measure()))
