"""Growth: does a steady write load leave the management database, the Raft snapshots
and the nats-servers' memory flat?

A 3-node cluster (`colony up --nodes 3`, three voters) takes RATE writes/s,
each a `kv.put` with its own proposal id, to KEYS keys, for SECONDS. Every
SAMPLE seconds it samples, per voter, the management database (the file and
its WAL), the latest Raft snapshot (`raft.snapshot`), the rows of its change
log and idempotency records, and every nats-server's RSS. The verdict compares
the mean of the last third of the run with the mean of the first.

A day compressed in time: what the database and the streams hold is bounded by
windows (seconds of idempotency records, a count of relayed changes, a count
and bytes of stream messages), so after the first window each one only turns
over. The run scales each window down by DAY / SECONDS (to a floor), so it
turns each over about as many times as a day at the defaults would (the writes
per count-window are the same, since the rate is the real one); the report
says how many times each turned over. Raft compacts as often as it would
(`Timers`). What the run cannot show is the plateau a day's defaults would sit
at: that is the windows' size times the size of a record.

    COLONY_BENCH_GROWTH_SECONDS=120 python -m bench growth
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil

from bench._cluster import Cluster, local_cluster
from bench._report import say, table, verdict
from colony.cli.local.write import voters_of
from colony.shared.bus import connect
from colony.shared.config import ConsensusSettings, NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import KvPut

TITLE = "Growth"
SECONDS = float(os.environ.get("COLONY_BENCH_GROWTH_SECONDS", "600"))
RATE = 123.0
"""Writes a second (the figure the issue measured growth at)."""
KEYS = 20
INFLIGHT = 32
"""Writes in flight at most (each waits ~50 ms for a heartbeat to commit)."""
SAMPLE = 10.0
"""Seconds between samples."""
WARMUP = SECONDS / 6
"""Seconds before the comparison starts: the stream fills to its limit (under a minute
at the scaled limit), the idempotency window fills, caches and the Go heap grow."""
DAY = 86_400.0
FLAT = 0.10
"""The bar: the last third's mean at most this much above the first third's."""
MIB = 2**20


BEFORE = """Before retention (the same benchmark, 600 s, on commit 41bf026, where every
change and every proposal id was kept): the database (file and WAL) grew from 0.2 to
15.7 MiB, 223 bytes per write, linearly; the Raft snapshot to 9.8 MiB; 68,209 changes
and 68,213 idempotency records at the end, one of each per write; the nats-servers'
RSS from 20 to 58-62 MiB (peak 74), the change stream holding every change."""
"""Measured when retention was added: the figures this benchmark's bars are about."""


def scaled_settings() -> dict[str, str]:
    """The retention windows, each scaled down by DAY / SECONDS, as COLONY_* variables for
    the nodes (only those this version of ConsensusSettings has: the bench also measures
    a version that has none, for the figures before)."""
    scale = DAY / SECONDS
    defaults = ConsensusSettings()
    known = {f.name for f in msgspec.structs.fields(ConsensusSettings)}
    windows = {
        # at least 10 s: a proposal made half a window before the leader prunes is refused,
        # and on a busy machine a write can take a second or two to commit
        "idempotency_window": lambda v: max(v / scale, 10.0),
        "change_log_kept": lambda v: max(int(v / scale), 256),  # its least
        "change_stream_max_msgs": lambda v: max(int(v / scale), 1000),
        "change_stream_max_bytes": lambda v: max(int(v / scale), 2**20),
    }
    return {
        f"COLONY_CONSENSUS__{name.upper()}": str(scale_down(getattr(defaults, name)))
        for name, scale_down in windows.items()
        if name in known
    }


@dataclass
class Sample:
    at: float
    db: dict[str, int]
    """Per voter: bytes of management.db."""
    wal: dict[str, int]
    """Per voter: bytes of its write-ahead log (management.db-wal)."""
    snapshot: dict[str, int]
    """Per voter: bytes of raft.snapshot (0: none yet)."""
    rows: dict[str, tuple[int, int]]
    """Per voter: (changes, proposals) rows."""
    nats: dict[str, int]
    """Per node: the nats-server's RSS, bytes."""
    written: int


@dataclass
class Load:
    written: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    """From the first write to the last reply."""


def size(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths if p.exists())


def rows(db_file: Path) -> tuple[int, int]:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA busy_timeout = 1000")
            changes = db.execute("SELECT count(*) FROM changes").fetchone()[0]
            proposals = db.execute("SELECT count(*) FROM proposals").fetchone()[0]
            return changes, proposals
    except sqlite3.Error:
        return -1, -1


def sample(cluster: Cluster, started: float, load: Load) -> Sample:
    db, wal, snapshot, counts, nats = {}, {}, {}, {}, {}
    for node in cluster.state.nodes():
        folder = node.path / "consensus"
        base = folder / "management.db"
        if base.exists():
            db[node.name] = size(base)
            wal[node.name] = size(base.with_name("management.db-wal"))
            snapshot[node.name] = size(folder / "raft.snapshot")
            counts[node.name] = rows(base)
        record = node.record("nats")
        if record is not None:
            with contextlib.suppress(psutil.Error):
                nats[node.name] = psutil.Process(record.pid).memory_info().rss
    return Sample(time.monotonic() - started, db, wal, snapshot, counts, nats, load.written)


async def write(cluster: Cluster, load: Load, until: float) -> None:
    """RATE writes a second, paced from the start (not from each reply), at most
    INFLIGHT at once; a write that fails is counted, never retried with a new id."""
    node = cluster.state.nodes()[0]
    bus = await connect(NatsSettings(servers=[node.nats_url()]), "bench-growth")
    management = Management(bus, voters_of(cluster.state), timeout=10)
    slots = asyncio.Semaphore(INFLIGHT)
    tasks: set[asyncio.Task] = set()

    async def one(i: int) -> None:
        try:
            await management.propose(KvPut(f"key-{i % KEYS}", f"value-{i}"))
            load.written += 1
        except ManagementError as e:
            load.errors.append(str(e))
        finally:
            slots.release()

    began = time.monotonic()
    try:
        for i in itertools.count():
            at = began + i / RATE
            if at >= until or time.monotonic() >= until:  # behind schedule: stop on time
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await slots.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        await bus.close()


async def measure(cluster: Cluster) -> tuple[list[Sample], Load]:
    load = Load()
    started = time.monotonic()
    until = started + SECONDS
    samples = [sample(cluster, started, load)]
    writer = asyncio.create_task(write(cluster, load, until))
    while time.monotonic() < until:
        await asyncio.sleep(min(SAMPLE, max(until - time.monotonic(), 0)))
        samples.append(sample(cluster, started, load))
        last = samples[-1]
        say(
            f"{last.at:5.0f} s: {last.written:,} writes, db {mib(top(last.db))} MiB, "
            f"wal {mib(top(last.wal))} MiB, "
            f"snapshot {mib(top(last.snapshot))} MiB, "
            f"rows {(top(last.rows, 0), top(last.rows, 1))}, "
            f"nats {mib(top(last.nats))} MiB, {len(load.errors)} errors"
        )
    await writer
    load.seconds = time.monotonic() - started
    return samples, load


def top(values: dict, column: int | None = None) -> int:
    """The largest value over the voters or nodes (0 for none)."""
    return max((v if column is None else v[column] for v in values.values()), default=0)


def mib(value: float) -> str:
    return f"{value / MIB:.1f}"


@dataclass
class Figure:
    name: str
    first: float
    last: float
    peak: float

    @property
    def growth(self) -> float:
        return (self.last - self.first) / self.first if self.first else 0.0

    @property
    def flat(self) -> bool:
        return self.growth <= FLAT


def figure(name: str, samples: list[Sample], value, since_first: bool = False) -> Figure:
    """Mean of the first and of the last third of the run after its warm-up (with
    `since_first`, after the first non-zero sample too: Raft's first snapshot), and the
    peak."""
    values = [value(s) for s in samples if s.at >= WARMUP]
    if since_first:
        values = values[next((i for i, v in enumerate(values) if v), len(values)) :] or [0]
    third = max(len(values) // 3, 1)
    return Figure(
        name, statistics.mean(values[:third]), statistics.mean(values[-third:]), max(values)
    )


def run() -> str:
    overrides = scaled_settings()
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)  # the nodes' services read them (colony up passes them on)
    try:
        with local_cluster(3) as cluster:
            say(f"cluster up in {cluster.up_seconds:.1f} s; settings {overrides or 'defaults'}")
            samples, load = asyncio.run(measure(cluster))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return report(samples, load, overrides, cluster.left_running)


def windows(overrides: dict[str, str], load: Load) -> str:
    """A table of each scaled window: its default, the run's, and how often each turns
    over in the run and in a day at the defaults ({RATE} writes/s, a change each)."""
    defaults = ConsensusSettings()
    rows = []
    for variable, value in overrides.items():
        name = variable.removeprefix("COLONY_CONSENSUS__").lower()
        default = getattr(defaults, name)
        if name == "idempotency_window":  # seconds
            run, day = load.seconds / float(value), DAY / default
        elif name == "change_stream_max_bytes":  # bytes: turns over with the message sizes
            run = day = None
        else:  # a count of changes
            run, day = load.written / float(value), RATE * DAY / default
        rows.append([
            f"`consensus.{name}`", f"{default:,}", f"{float(value):,.0f}",
            "-" if run is None else f"{run:,.0f}", "-" if day is None else f"{day:,.0f}",
        ])  # fmt: skip
    columns = ["setting", "default", "in the run", "turned over in the run", "in a day"]
    return "\n\n" + table(columns, rows)


def report(samples: list[Sample], load: Load, overrides: dict[str, str], left) -> str:
    figures = [
        figure("management database (largest voter), MiB", samples, lambda s: top(s.db)),
        figure("its write-ahead log (largest), MiB", samples, lambda s: top(s.wal)),
        figure(
            "Raft snapshot (largest voter), MiB",
            samples,
            lambda s: top(s.snapshot),
            since_first=True,
        ),
        figure("nats-server RSS (largest), MiB", samples, lambda s: top(s.nats)),
        figure("nats-servers' RSS (sum), MiB", samples, lambda s: sum(s.nats.values())),
    ]
    counts = [
        figure("change log rows", samples, lambda s: top(s.rows, 0)),
        figure("idempotency records", samples, lambda s: top(s.rows, 1)),
    ]
    summary = table(
        ["figure", "first third", "last third", "peak", "growth", f"flat (≤ {FLAT:.0%})"],
        [
            [f.name, mib(f.first), mib(f.last), mib(f.peak), f"{f.growth:+.0%}", verdict(f.flat)]
            for f in figures
        ]
        + [
            [f.name, f"{f.first:,.0f}", f"{f.last:,.0f}", f"{f.peak:,.0f}", f"{f.growth:+.0%}",
             verdict(f.flat)]
            for f in counts
        ],
    )  # fmt: skip
    step = max(len(samples) // 12, 1)
    series = table(
        [
            "s",
            "writes",
            "db MiB",
            "WAL MiB",
            "snapshot MiB",
            "changes",
            "proposals",
            "nats RSS MiB",
        ],
        [
            [
                f"{s.at:.0f}",
                f"{s.written:,}",
                " / ".join(mib(v) for v in s.db.values()),
                " / ".join(mib(v) for v in s.wal.values()),
                " / ".join(mib(v) for v in s.snapshot.values()),
                f"{top(s.rows, 0):,}",
                f"{top(s.rows, 1):,}",
                " / ".join(mib(v) for v in s.nats.values()),
            ]
            for s in [*samples[::step], *samples[-1:]][: len(samples)]
        ],
    )
    per_write = (top(samples[-1].db) + top(samples[-1].wal)) / max(load.written, 1)
    failures = "; ".join(sorted(set(load.errors))[:3])
    failures = f" Failures (distinct, up to 3): {failures}." if failures else ""
    settings = windows(overrides, load) if overrides else " none: this version has none."
    return f"""A 3-node cluster (`colony up --nodes 3`, 3 voters) on loopback, {RATE:g}
writes/s ({INFLIGHT} in flight at most), each a `kv.put` to one of {KEYS} keys with its
own proposal id, for {SECONDS:g} s: {load.written:,} writes ({len(load.errors)} failed), \
{load.written / max(load.seconds, 1):.0f}/s achieved.
Sampled every {SAMPLE:g} s: each voter's management database (file and WAL), its
latest Raft snapshot, its change-log and idempotency rows, and each nats-server's
RSS. Flat: after a warm-up of {WARMUP:g} s, the mean of the last third at most
{FLAT:.0%} above the first third's (for the snapshot, of the samples since Raft's
first one).

A day compressed in time: the retention windows are scaled down by
{DAY / SECONDS:g} (a day / the run), to a floor, so the run turns each over about
as many times as a day at the defaults would. Retention settings:{settings}

{summary}

At the end the largest database (file and WAL) held {per_write:,.0f} bytes per write
made.{failures}

{BEFORE}

Samples (per voter or node: node-1 / node-2 / node-3):

{series}

Left running after `colony down`: {", ".join(left) or "nothing"}."""


if __name__ == "__main__":
    print(run())
