"""Snapshots: save, inspect, restore, a new voter seeded from a replica vs fed from the
log, replication lag under a steady write load, and an idle replica's growth.

A management database of OBJECTS objects: mostly kv keys (values of 64 random
characters, committed through the real consensus service in batches of BATCH), plus
JOBS jobs of `/bin/sleep` with INSTANCES instances each (through `colony job run`),
and what the cluster keeps of itself (its nodes, leases). In turn:

1. on a `colony up --nodes 3` cluster (three voters, each with its snapshotter and
   litestream replicating to the cluster's own JetStream object store): the database
   filled; `colony snapshot save FILE` (the leader makes it after a read barrier, puts
   it in the object store; the CLI downloads and checks it) and `colony snapshot
   inspect FILE` timed, the file's size; a node's snapshotter asked for a snapshot
   of the freshest replica (`snapshot_fetch`: `litestream restore` + the file made);
2. the idle cluster (lease renewals only) for IDLE seconds: the replica buckets'
   bytes sampled, what litestream added to them meanwhile extrapolated per hour, and
   the bound its retention puts on it;
3. RATE kv writes/s (one per proposal) for LOAD seconds: each write's lag, from its
   acknowledgement to every voter's replica holding its index (each snapshotter's
   `replication_status`, asked every POLL seconds), and the lag the snapshotters
   report themselves;
4. restore: `colony down`, `colony snapshot restore FILE` (check + copy to every
   node), `colony up` (each voter checks and extracts the snapshot as it starts,
   then a leader is elected), then until a linearizable read answers with the
   restored data. Baseline: a plain `colony down` + `colony up` of the same cluster;
5. in this process, real pysyncobj replicas over a real nats-server
   (`colony.harness.replicas`), three voters given the same OBJECTS kv keys: a 4th
   voter added and timed until it applied the leader's commit index, (a) seeded:
   `litestream restore` from voter 1's replica in a NATS object store, the snapshot
   extracted, then caught up from the log; (b) empty, fed the whole log by the leader;
   (c) empty, sent the leader's Raft snapshot (its log compacted first).

    python -m bench snapshot
    COLONY_BENCH_SNAPSHOT_IDLE=3600 python -m bench snapshot    # the full idle hour
    python -m bench.snapshot --quick                            # small, printed only
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from nats.js.api import ObjectStoreConfig

from bench._cluster import COLONY, Cluster, colony, local_cluster
from bench._report import quantile, say, table, verdict
from colony.consensus.raft import NotCommitted
from colony.harness.jobs import LocalJobs, voters_in
from colony.harness.processes import NatsServer, poll, wait_for
from colony.harness.replicas import VOTERS, Group
from colony.harness.rollouts import nats_urls
from colony.shared import snapshot, subjects
from colony.shared.bus import Bus, BusError, connect
from colony.shared.config import NatsSettings, SnapshotterSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    KvPut,
    ReplicationStatusRequest,
    SnapshotFetchRequest,
    new_id,
)
from colony.snapshotter import fetching, litestream

TITLE = "Snapshots"
OBJECTS = int(os.environ.get("COLONY_BENCH_SNAPSHOT_OBJECTS", "100000"))
JOBS = int(os.environ.get("COLONY_BENCH_SNAPSHOT_JOBS", "10"))
INSTANCES = 3
"""Instances of each job (a `/bin/sleep` each, 0.01 core)."""
BATCH = 200
"""kv writes to a proposal while the database is filled (each request must be answered
within `Management`'s per-attempt timeout on a busy machine)."""
FILL_INFLIGHT = 3
IDLE = float(os.environ.get("COLONY_BENCH_SNAPSHOT_IDLE", "180"))
"""Seconds the idle cluster's replicas are watched (3600: the issue's hour)."""
SAMPLE = 10.0
"""Seconds between samples of the replicas' bytes."""
RATE = float(os.environ.get("COLONY_BENCH_SNAPSHOT_RATE", "200"))
LOAD = float(os.environ.get("COLONY_BENCH_SNAPSHOT_LOAD", "60"))
"""Seconds of the steady write load."""
LOAD_INFLIGHT = 64
POLL = 0.1
"""Seconds between asks of each snapshotter's replication status during the load."""
SEED_PER_ENTRY = 200
"""kv writes to a log entry in the in-process group (5: 500 entries for 100,000)."""
AFTER_SEED = 200
"""kv writes made after the replica was seen complete: the seeded voter takes them from
the log."""
RESTORE_BAR = 10.0
SEED_BAR = 5.0
LONG = 600.0


def key(k: int) -> str:
    return f"bench-{k:07d}"


def value() -> str:
    """64 random characters: data that compresses as little as real values might."""
    return secrets.token_urlsafe(48)


# --- the real cluster --------------------------------------------------------------------


def cli(*argv: str) -> str:
    """`colony ...`; its stdout; raise with its output if it fails."""
    done = subprocess.run([*COLONY, *argv], capture_output=True, text=True, timeout=LONG)
    if done.returncode:
        said = (done.stderr or done.stdout).strip()
        raise RuntimeError(f"`colony {' '.join(argv)}` exited {done.returncode}: {said}")
    return done.stdout


def timed(call, *args) -> tuple[float, object]:
    began = time.monotonic()
    result = call(*args)
    return time.monotonic() - began, result


@dataclass
class Figures:
    counts: dict[str, int] = field(default_factory=dict)
    fill: float = 0.0
    save: float = 0.0
    save_leader: float = 0.0
    size: int = 0
    db_bytes: int = 0
    index: int = 0
    inspect: float = 0.0
    fetch: float = 0.0
    fetch_snapshotter: float = 0.0
    idle: list[tuple[float, int]] = field(default_factory=list)
    """(seconds since the start, bytes of every voter's replica bucket)."""
    objects_before: dict[str, tuple[str, int]] = field(default_factory=dict)
    """The replica buckets' objects as the idle time began: bucket/name -> (its prefix,
    the level: ltx/0, ltx/1, ...; bytes)."""
    objects_after: dict[str, tuple[str, int]] = field(default_factory=dict)
    writes: int = 0
    write_rate: float = 0.0
    write_errors: int = 0
    lags: dict[str, list[float]] = field(default_factory=dict)
    """voter -> each write's seconds from its acknowledgement to the replica holding it."""
    reported: list[float] = field(default_factory=list)
    """The lag the snapshotters reported (`ReplicaPosition.lag`) at each ask."""
    missed: int = 0
    restart: float = 0.0
    restart_read: float = 0.0
    restore: float = 0.0
    up: float = 0.0
    read: float = 0.0
    lost_after_save: bool = False
    problems: list[str] = field(default_factory=list)
    """What failed (the figures it would have given are 0)."""


async def bus_of(cluster: Cluster, name: str) -> Bus:
    return await connect(NatsSettings(servers=nats_urls(cluster.state.path)), name)


def job_spec(n: int) -> dict:
    return {
        "name": f"sleeper-{n}",
        "task": {"command": "/bin/sleep", "args": ["3600"]},
        "replicas": INSTANCES,
        "resources": {"cpu": 0.01, "memory": "16MiB"},
    }


def start_jobs(cluster: Cluster, workdir: Path) -> None:
    jobs = LocalJobs(cluster.state.path)
    for n in range(JOBS):
        path = workdir / f"sleeper-{n}.yaml"
        path.write_text(yaml.safe_dump(job_spec(n), sort_keys=False))
        colony("job", cluster.state, "run", str(path), "--detach")
    for n in range(JOBS):
        jobs.until(
            lambda got: sum(i.state == "running" for i in got) >= INSTANCES or None,
            f"sleeper-{n}",
            LONG,
            f"sleeper-{n}'s {INSTANCES} instances running",
            every=1.0,
        )


async def fill(bus: Bus, voters: list[str], count: int) -> int:
    """Put `count` kv keys, BATCH to a proposal, FILL_INFLIGHT proposals at once; the last
    index."""
    management = Management(bus, voters, timeout=30)
    batches = iter(range(0, count, BATCH))
    last = 0
    done = 0

    async def worker() -> None:
        nonlocal last, done
        for start in batches:
            keys = range(start, min(start + BATCH, count))
            commands = [KvPut(key(k), value()) for k in keys]
            ids = [new_id() for _ in keys]
            for attempt in range(10):
                try:  # the same ids again: applied once
                    reply = await management.propose(*commands, ids=ids)
                    break
                except ManagementError as e:
                    if not e.retryable or attempt == 9:
                        raise
                    say(f"  asking again: {e}")
            last, done = max(last, reply.index), done + len(keys)
            if done % 20_000 < BATCH:
                say(f"  {done:,} keys written")

    await asyncio.gather(*(worker() for _ in range(FILL_INFLIGHT)))
    return last


async def replicas_hold(bus: Bus, voters: list[str], index: int, timeout: float) -> None:
    """Every voter's replica holds `index` (its snapshotter says so)."""

    async def held() -> bool:
        for node in voters:
            with contextlib.suppress(BusError):
                status = await bus.request(
                    subjects.replication_status(node), ReplicationStatusRequest(), timeout=2
                )
                if status.replica is not None and status.replica.index >= index:
                    continue
            return False
        return True

    deadline = time.monotonic() + timeout
    while not await held():
        if time.monotonic() > deadline:
            raise AssertionError(f"the replicas did not reach index {index} in {timeout:g} s")
        await asyncio.sleep(0.5)


async def replica_bytes(bus: Bus, voters: list[str]) -> int:
    total = 0
    for node in voters:
        store = await bus.js.object_store(subjects.replica_bucket(node))
        total += (await store.status()).size
    return total


async def replica_objects(bus: Bus, voters: list[str]) -> dict[str, tuple[str, int]]:
    """What the replica buckets hold: bucket/name -> (the name up to its last '/', bytes)."""
    objects = {}
    for node in voters:
        bucket = subjects.replica_bucket(node)
        store = await bus.js.object_store(bucket)
        for info in await store.list(ignore_deletes=True):
            prefix = info.name.rsplit("/", 1)[0] if "/" in info.name else "(top)"
            objects[f"{bucket}/{info.name}"] = (prefix, info.size or 0)
    return objects


async def idle(bus: Bus, voters: list[str], seconds: float, figures: Figures) -> None:
    figures.objects_before = await replica_objects(bus, voters)
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        figures.idle.append((elapsed, await replica_bytes(bus, voters)))
        if elapsed >= seconds:
            break
        say(f"  idle {elapsed:.0f}/{seconds:.0f} s: replicas {figures.idle[-1][1] / 2**20:.2f} MiB")
        await asyncio.sleep(min(SAMPLE, seconds - elapsed))
    figures.objects_after = await replica_objects(bus, voters)


def by_level(objects: dict[str, tuple[str, int]], names) -> dict[str, tuple[int, int]]:
    """The objects `names` of `objects`, per level: (count, bytes)."""
    levels: dict[str, tuple[int, int]] = {}
    for name in names:
        level, size = objects[name]
        count, total = levels.get(level, (0, 0))
        levels[level] = (count + 1, total + size)
    return levels


async def load(bus: Bus, voters: list[str], figures: Figures) -> int:
    """RATE single-write proposals a second for LOAD seconds, with every voter's replica
    position asked meanwhile; each write's lag per voter. The last index."""
    management = Management(bus, voters, timeout=10)
    acks: list[tuple[float, int]] = []
    seen: dict[str, list[tuple[float, int]]] = {node: [] for node in voters}
    slots = asyncio.Semaphore(LOAD_INFLIGHT)
    errors = 0
    writing = True

    async def one(k: int) -> None:
        nonlocal errors
        try:
            reply = await management.propose(KvPut(f"load-{k % 1000}", str(k)))
            acks.append((time.monotonic(), reply.index))
        except ManagementError:
            errors += 1
        finally:
            slots.release()

    async def watch(node: str) -> None:
        while writing or not acks or not seen[node] or seen[node][-1][1] < max(i for _, i in acks):
            with contextlib.suppress(BusError):
                status = await bus.request(
                    subjects.replication_status(node), ReplicationStatusRequest(), timeout=2
                )
                if status.replica is not None:
                    seen[node].append((time.monotonic(), status.replica.index))
                    figures.reported.append(status.replica.lag)
            await asyncio.sleep(POLL)

    watchers = [asyncio.create_task(watch(node)) for node in voters]
    began = time.monotonic()
    tasks = []
    k = 0
    while (now := time.monotonic()) < began + LOAD:
        due = began + k / RATE
        if due > now:
            await asyncio.sleep(due - now)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(k)))
        k += 1
        if k % int(RATE * 10) == 0:
            say(f"  load {time.monotonic() - began:.0f}/{LOAD:.0f} s: {len(acks):,} acknowledged")
    await asyncio.gather(*tasks)
    figures.write_rate = len(acks) / (time.monotonic() - began)
    writing = False
    with contextlib.suppress(TimeoutError):  # the writes never seen held count as missed
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
    figures.writes, figures.write_errors = len(acks), errors
    for node in voters:
        times = [t for t, _ in seen[node]]
        lags = []
        for acked, index in acks:
            i = bisect.bisect_left(times, acked)
            while i < len(times) and seen[node][i][1] < index:
                i += 1
            if i < len(times):
                lags.append(max(0.0, times[i] - acked))
            else:
                figures.missed += 1
        figures.lags[node] = lags
    return max((i for _, i in acks), default=0)


def start_and_read(
    cluster: Cluster, voters: list[str], present: str, absent: str
) -> tuple[float, float, bool]:
    """`colony up --detach` the stopped cluster, reading meanwhile: seconds until `colony
    up` returned, seconds until a linearizable read of `present` answered (both from the
    start), and whether `absent` is absent."""
    argv = [*COLONY, "up", "--state-dir", str(cluster.state.path), "--detach"]
    began = time.monotonic()
    up = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def failed() -> None:
        if up.poll():
            said = up.stdout.read().strip() if up.stdout else ""
            raise RuntimeError(f"`colony up` exited {up.returncode}: {said}")

    try:
        gone = asyncio.run(read_back(cluster, voters, present, absent, failed))
        read = time.monotonic() - began
        up.wait(LONG)
        failed()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    return time.monotonic() - began, read, gone


async def read_back(
    cluster: Cluster, voters: list[str], present: str, absent: str, failed: Callable[[], None]
) -> bool:
    """Linearizable reads until `present` answers (connecting until NATS answers), each
    try after `failed()` (which raises if the start failed); whether `absent` is absent."""
    deadline = time.monotonic() + LONG
    while True:
        failed()
        with contextlib.suppress(Exception):  # nothing listening yet
            bus = await connect(
                NatsSettings(servers=nats_urls(cluster.state.path), connect_timeout=0.5),
                "bench-snapshot-read",
                reconnect=False,
            )
            break
        if time.monotonic() > deadline:
            raise AssertionError("no nats-server of the cluster answered")
        await asyncio.sleep(0.05)
    try:
        management = Management(bus, voters, timeout=1)  # tries of a second at most
        while True:
            failed()
            with contextlib.suppress(ManagementError, BusError):
                if (await management.get(present)).objects:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{present} was not read back")
            await asyncio.sleep(0.05)
        return not absent or not (await management.get(absent)).objects
    finally:
        await bus.close()


def on_cluster(workdir: Path) -> Figures:
    figures = Figures()
    file = workdir / "bench.snapshot"
    with local_cluster(nodes=3) as cluster:
        say(f"cluster up in {cluster.up_seconds:.1f} s")
        state = str(cluster.state.path)
        voters = voters_in(cluster.state.path)[:3]
        wait_for(lambda: len(LocalJobs(cluster.state.path).nodes()) == 3, 120, "3 nodes registered")
        start_jobs(cluster, workdir)
        say(f"{JOBS} jobs of {INSTANCES} instances running")

        async def prepare() -> int:
            bus = await bus_of(cluster, "bench-snapshot")
            try:
                began = time.monotonic()
                last = await fill(bus, voters, OBJECTS - JOBS * (INSTANCES + 1))
                figures.fill = time.monotonic() - began
                say(f"filled in {figures.fill:.1f} s; waiting for the replicas")
                await replicas_hold(bus, voters, last, LONG)
                return last
            finally:
                await bus.close()

        asyncio.run(prepare())
        say("saving")
        figures.save, said = timed(
            cli, "snapshot", "save", str(file), "--json", "--state-dir", state
        )
        saved = json.loads(said)
        figures.save_leader = saved["seconds"]
        header = snapshot.read_header(file)
        figures.counts, figures.index = header.counts, header.index
        figures.size, figures.db_bytes = file.stat().st_size, header.size
        say(f"saved in {figures.save:.2f} s: {figures.size / 2**20:.1f} MiB, {header.counts}")
        figures.inspect, _ = timed(cli, "snapshot", "inspect", str(file))
        say(f"inspected in {figures.inspect:.2f} s")

        # a snapshotter writes only inside its own node's folder
        node_dir = next(n for n in cluster.state.nodes() if n.read_id() == voters[0])
        fetched = node_dir.path / "snapshotter" / "bench-fetched.snapshot"

        async def after_save() -> int:
            bus = await bus_of(cluster, "bench-snapshot")
            try:
                began = time.monotonic()
                reply = await bus.request(
                    subjects.snapshot_fetch(voters[0]),
                    SnapshotFetchRequest(path=str(fetched), min_index=0),
                    timeout=LONG,
                )
                figures.fetch = time.monotonic() - began
                figures.fetch_snapshotter = reply.seconds
                say(f"fetched from {reply.replica}'s replica in {figures.fetch:.2f} s")
                say(f"idle for {IDLE:g} s")
                await idle(bus, voters, IDLE, figures)
                say(f"load: {RATE:g} writes/s for {LOAD:g} s")
                return await load(bus, voters, figures)
            finally:
                await bus.close()

        asyncio.run(after_save())
        last_fill = key(OBJECTS - JOBS * (INSTANCES + 1) - 1)

        say("restart (baseline)")
        colony("down", cluster.state)
        try:
            figures.restart, figures.restart_read, _ = start_and_read(
                cluster, voters, last_fill, ""
            )
        except (RuntimeError, AssertionError) as e:  # said in the report; the restore next
            figures.problems.append(f"the restart without a restore failed: {e}")
            say(figures.problems[-1])
        colony("down", cluster.state)
        say("restore")
        figures.restore, _ = timed(cli, "snapshot", "restore", str(file), "--state-dir", state)
        try:
            figures.up, figures.read, figures.lost_after_save = start_and_read(
                cluster, voters, last_fill, "load-0"
            )
        except (RuntimeError, AssertionError) as e:
            figures.problems.append(f"`colony up` after the restore failed: {e}")
            say(figures.problems[-1])
        say(f"restored: {figures.restore:.2f} s, then read after {figures.read:.2f} s "
            f"(`colony up` {figures.up:.2f} s)")  # fmt: skip
    return figures


# --- in this process: a new voter caught up ----------------------------------------------


@dataclass
class Seeding:
    mode: str
    caught_up: float = 0.0
    """From the 4th voter's start to it applying the leader's commit index."""
    fetch: float = 0.0
    """`litestream restore` of the replica and the snapshot file made of it."""
    extract: float = 0.0
    snapshots_received: int = 0
    entries: int = 0
    """Log entries the leader held (its commit index) when the voter was added."""
    seeded_at: int = 0

    @property
    def total(self) -> float:
        return self.fetch + self.extract + self.caught_up


class Litestream:
    """`litestream replicate` of one database to a NATS object store bucket, its JSON log
    read in a thread: whether the replica has caught up with the database."""

    def __init__(self, db: Path, url: str, workdir: Path) -> None:
        config = workdir / "litestream.yml"
        settings = SnapshotterSettings(snapshot_interval=SEED_SNAPSHOT_INTERVAL)
        litestream.write_config(config, litestream.render(db, url, settings))
        self.process = subprocess.Popen(
            [litestream.binary(), "replicate", "-config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.synced_at = 0.0
        """When it last said the replica holds all the database's transactions."""
        self.snapshot_at = 0.0
        """When it last wrote a full snapshot into the replica."""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            event = litestream.parse(line)
            txid = event.get("txid")
            replica_sync = event.get("msg") == "replica sync" and isinstance(txid, dict)
            if replica_sync and txid.get("replica") == txid.get("db"):
                self.synced_at = time.monotonic()
            if event.get("msg") == "snapshot complete":
                self.snapshot_at = time.monotonic()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def write(group: Group, first: int, count: int, per_entry: int) -> int:
    """`Group.write` of random values, the entry tried again while there is no leader: on
    a busy machine three voters in one process may hold an election meanwhile."""
    index = 0
    for start in range(first, first + count, per_entry):
        for attempt in range(10):
            try:
                n = min(per_entry, first + count - start)
                index = await group.write(start, n, n, lambda _k: value())
                break
            except NotCommitted:
                if attempt == 9:
                    raise
    return index


async def add_voter(group: Group, node: str):
    """The leader adds `node`, asked again if it refused (a membership change is refused
    while the leader has not yet committed an entry of its term: a new leader after an
    election on a busy machine); the leader that added it."""
    for attempt in range(10):
        chief = await group.chief(VOTERS)
        try:
            await chief.replica.add_voter(node)
            return chief
        except NotCommitted:
            if attempt == 9:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def seed_run(mode: str, server: NatsServer, workdir: Path) -> Seeding:
    result = Seeding(mode)
    group = Group(server.url, workdir)
    replicating: Litestream | None = None
    try:
        for node in VOTERS:
            await group.start(node)
        if mode == "seeded":
            bucket = "BENCH_REPLICA_v1"
            bus = await connect(NatsSettings(servers=[server.url]), "bench-seed")
            try:
                await bus.js.create_object_store(bucket, ObjectStoreConfig(bucket=bucket))
            finally:
                await bus.close()
            url = litestream.replica_url("nats", "v1", server.url, bucket)
            replicating = Litestream(group.voters["v1"].replica.machine.path, url, workdir)
        last = await write(group, 0, OBJECTS, SEED_PER_ENTRY)
        await group.applied_everywhere(last, LONG)
        say(f"  {mode}: {OBJECTS:,} keys in {last} entries")
        chief = await group.chief()
        if replicating is not None:
            done = time.monotonic()
            await poll(lambda: replicating.synced_at > done, LONG, "the replica to catch up")
            # As a replica is once its periodic full snapshot has passed the bulk load (every
            # snapshot_interval): a seed restores that snapshot and the changes after it.
            await poll(lambda: replicating.snapshot_at > done, LONG, "a full replica snapshot")
        elif mode == "snapshot transfer":
            chief.replica.compact()
            await poll(lambda: chief.raft.journal[0][1] > 2, 60, "the leader's log compaction")
        await write(group, OBJECTS, AFTER_SEED, 50)
        began = time.perf_counter()
        if replicating is not None:
            seed = workdir / "seed.snapshot"
            await fetching.restore(url, seed, made_by="v4")
            result.fetch = time.perf_counter() - began
            replicating.stop()  # as the others: nothing else runs while it catches up
            replicating = None
            began = time.perf_counter()
            await asyncio.to_thread(snapshot.extract, seed, workdir / "v4" / "management.db")
            result.extract = time.perf_counter() - began
            began = time.perf_counter()
        new = await group.start("v4", [*VOTERS, "v4"])
        result.seeded_at = new.replica.seeded_at or 0
        chief = await add_voter(group, "v4")
        target = chief.raft.raftCommitIndex
        result.entries = target
        await poll(lambda: new.raft.raftLastApplied >= target, LONG, "v4 to catch up")
        result.caught_up = time.perf_counter() - began
        result.snapshots_received = new.snapshots_received
        say(f"  {mode}: caught up in {result.total:.2f} s (fetch {result.fetch:.2f}, extract "
            f"{result.extract:.2f}, start to caught up {result.caught_up:.2f})")  # fmt: skip
        return result
    finally:
        if replicating is not None:
            replicating.stop()
        await group.stop_all()


MODES = ("seeded", "log", "snapshot transfer")
SEED_SNAPSHOT_INTERVAL = 15.0
"""Seconds between the seeding replica's full snapshots (the default is 10 min: here the
bench waits for the first one after the bulk load rather than for 10 min)."""


def seeding(workdir: Path, modes: tuple[str, ...] = MODES) -> list[Seeding]:
    server = NatsServer.standalone(workdir / "nats").start()
    try:
        return [
            asyncio.run(seed_run(mode, server, workdir / mode.replace(" ", "-"))) for mode in modes
        ]
    finally:
        server.stop()


# --- the report --------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def lag_row(what: str, values: list[float], bold: bool = False) -> list[str]:
    p99 = f"{quantile(values, 0.99):.2f}"
    return [what, str(len(values)), f"{quantile(values, 0.5):.2f}",
            f"**{p99}**" if bold else p99, f"{max(values, default=0):.2f}"]  # fmt: skip


def report(f: Figures, seeds: list[Seeding]) -> str:
    objects = sum(f.counts.values())
    counts = ", ".join(f"{kind} {n:,}" for kind, n in sorted(f.counts.items()) if n)
    restore_total = f.restore + f.read
    save_rows = [
        ["`colony snapshot save FILE`", f"{f.save:.2f}",
         f"the leader made it in {f.save_leader:.2f} s; then downloaded and checked"],
        ["`colony snapshot inspect FILE` (header, checksum)", f"{f.inspect:.2f}", ""],
        ["a snapshotter's `snapshot_fetch` (`litestream restore` of a replica + the file)",
         f"{f.fetch:.2f}", f"{f.fetch_snapshotter:.2f} s in the snapshotter"],
    ]  # fmt: skip
    restore_rows = [
        ["`colony snapshot restore FILE` (check, copy to 3 nodes)", f"{f.restore:.2f}", ""],
        ["`colony up`: until a linearizable read answers the restored data", f"{f.read:.2f}",
         f"{f.restart_read:.2f}"],
        ["`colony up`: until it returned (every node's first metrics too)", f"{f.up:.2f}",
         f"{f.restart:.2f}"],
        ["**restore: the file put back, then the data read**", f"**{restore_total:.2f}**", ""],
    ]  # fmt: skip
    problems = "".join(f"\n\n**Failed:** {p}" for p in f.problems)
    by_mode = {s.mode: s for s in seeds}
    seeded, from_log = by_mode["seeded"], by_mode["log"]
    speedup = from_log.total / max(seeded.total, 1e-9)
    seed_rows = [
        [
            {"seeded": "seeded from a replica", "log": "empty, fed from the log",
             "snapshot transfer": "empty, sent the leader's Raft snapshot"}[s.mode],
            f"{s.fetch:.2f}" if s.mode == "seeded" else "",
            f"{s.extract:.2f}" if s.mode == "seeded" else "",
            f"{s.caught_up:.2f}",
            f"**{s.total:.2f}**",
            str(s.entries),
            str(s.snapshots_received),
        ]
        for s in seeds
    ]  # fmt: skip
    all_lags = [x for lags in f.lags.values() for x in lags]
    lag_rows = [lag_row(node, lags) for node, lags in sorted(f.lags.items())]
    lag_rows.append(lag_row("**every voter**", all_lags, bold=True))
    lag_rows.append(lag_row("reported by the snapshotters (`lag`)", f.reported))
    (_, b0), (t1, b1) = f.idle[0], f.idle[-1]
    hours = max(t1, 1e-9) / 3600
    before, after = f.objects_before, f.objects_after
    at_start = by_level(before, before)
    added = by_level(after, after.keys() - before.keys())
    removed = by_level(before, before.keys() - after.keys())
    at_end = by_level(after, after)

    def cell(levels: dict[str, tuple[int, int]], level: str) -> str:
        count, size = levels.get(level, (0, 0))
        return f"{count} / {mib(size)}" if count else ""

    levels = table(
        ["level (objects under)", "at the start", "added", "removed", "at the end",
         "added MiB/h"],
        [[f"`{level}`", cell(at_start, level), cell(added, level), cell(removed, level),
          cell(at_end, level), mib(added.get(level, (0, 0))[1] / hours)]
         for level in sorted({*at_start, *at_end})],
    )  # fmt: skip
    settings = SnapshotterSettings()
    buckets = max(1, len(f.lags))
    added_l0 = added.get("ltx/0", (0, 0))[1] / hours
    added_all = sum(size for _, size in added.values()) / hours
    added_compacted = added_all - added_l0 - added.get("ltx/9", (0, 0))[1] / hours
    largest9 = max((size for level, size in after.values() if level == "ltx/9"), default=0)
    snapshot_bytes = max(largest9, f.db_bytes)  # a full snapshot: at most the database
    l0_retention = min(settings.retention, 300.0)
    gone = sum(count for count, _ in removed.values())
    kept = (
        f"{gone} objects were removed during the {t1:.0f} s"
        if gone
        else f"No object was removed during the {t1:.0f} s: the bound below rests on "
        "litestream's settings, not on a plateau seen"
    )
    snapshots = (settings.retention / settings.snapshot_interval + 1) * snapshot_bytes
    bound = (
        added_l0 * l0_retention / 3600 + added_compacted * settings.retention / 3600
    ) / buckets + snapshots
    return f"""A management database of **{objects:,} objects** at index {f.index:,}
({counts}): kv keys of 64 random characters written through the consensus service in
proposals of {BATCH} ({f.fill:.0f} s to fill), {JOBS} jobs of {INSTANCES} `/bin/sleep`
instances through `colony job run`, and the cluster's own nodes and leases. A
`colony up --nodes 3` cluster (three voters, each with a snapshotter running
litestream to its own bucket of the cluster's JetStream object store, sync
interval {settings.sync_interval:g} s); 2 cores shared with other work on the machine.

### Save and inspect

The snapshot file: **{mib(f.size)} MiB** (the database {mib(f.db_bytes)} MiB behind its header).

{table(["step", "seconds", "note"], save_rows)}

### Restore

`colony down`, then the saved file put back and the cluster started; the
read is of the last key written before the save, and the {f.writes:,} writes made
after it are gone ({verdict(f.lost_after_save)}: the restored database is the
snapshot's).

{table(["step", "seconds", "without a restore (a plain restart)"], restore_rows)}

Bar: restore ≤ {RESTORE_BAR:g} s: {restore_total:.2f} s, {
        verdict(f.read > 0 and restore_total <= RESTORE_BAR)
    }.{problems}
The file's check and copy are the first line; the rest is the cluster
starting, each voter checking and extracting the snapshot before its Raft
starts (the last column: the same cluster stopped and started with no
restore).

### A new voter caught up

In this process (`colony.harness.replicas`): three real pysyncobj voters over a
real nats-server, each given the same {OBJECTS:,} kv keys ({SEED_PER_ENTRY} to a
log entry), then {AFTER_SEED} more; a 4th voter is started and added, and timed
until it applied the leader's commit index. Seeded: `litestream restore` from
voter 1's replica in a NATS object store bucket (litestream ran while the keys
were written) into a snapshot file, the snapshot extracted into the new voter's
folder, then the rest from the log; its Raft log starts at index
{seeded.seeded_at}. The others start empty. The seeded voter's fetch replays the
replica: its last full snapshot (level 9) and every compacted and single sync
since, until a newer full snapshot (`snapshot_interval`) shortens that.

{
        table(
            [
                "new voter",
                "fetch s",
                "extract s",
                "catch up s",
                "total s",
                "leader's entries",
                "Raft snapshot frames received",
            ],
            seed_rows,
        )
    }

Bar: seeded ≥ {SEED_BAR:g} x faster than fed from the log (fetch and extract
counted): **{speedup:.1f} x**, {verdict(speedup >= SEED_BAR)}.

### Replication lag under a steady write load

{RATE:g} kv writes/s asked for, one per proposal ({f.write_rate:.0f}/s acknowledged,
{f.writes:,} writes, {f.write_errors} errors) for {LOAD:g} s. A write's lag on a voter:
from its acknowledgement to the first answer of that voter's snapshotter
(`replication_status`, asked every {POLL:g} s, so figures are rounded up by up
to that) saying its replica holds the write's index (litestream's uploaded
transaction; a lower bound of what it holds). {f.missed} write-voter pairs never
seen held within 2 minutes of the end.

{table(["voter", "writes", "p50 s", "p99 s", "max s"], lag_rows)}

### Idle storage growth

The cluster idle (lease renewals only) for {t1:.0f} s after the fill and save:
every voter's replica bucket ({buckets} buckets, each counted once, not per
JetStream copy). In all {mib(b0)} MiB at the start, {mib(b1)} MiB at the end
({len(f.idle)} samples); that total also falls as the fill's single syncs expire,
so the growth is what litestream **added**: **{mib(added_all)} MiB per hour**
({mib(added_all / buckets)} MiB per voter), extrapolated from {t1:.0f} s. Objects
(count / MiB) per level:

{levels}

Whether retention bounds it: litestream compacts single syncs (level 0) into
level 1 every 30 s and removes them after the `l0-retention` ({l0_retention:g} s);
compacted levels and full snapshots (level 9, every `snapshot_interval`,
{settings.snapshot_interval:g} s) are removed after the `retention`
({settings.retention:g} s). {kept}. If every object added stayed for its whole
retention, a voter's replica would level off at about **{mib(bound)} MiB** (the
single syncs of {l0_retention:g} s, the compacted levels of {settings.retention / 3600:g} h,
{settings.retention / settings.snapshot_interval + 1:g} full snapshots of at most the
database's {mib(snapshot_bytes)} MiB each: litestream compresses them, the largest
level-9 object here is {mib(largest9)} MiB) and grow no more. {
        "The full snapshots are most of that bound"
        if snapshots > bound / 2
        else "The compacted changes are most of that bound"
    }: a shorter `retention` lowers
it. A run shorter than the retention shows the rate, not the plateau
(`COLONY_BENCH_SNAPSHOT_IDLE=3600` for the hour the issue asks)."""


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="colony-bench-snapshot-") as tmp:
        workdir = Path(tmp)
        say("on a 3-node cluster")
        (workdir / "cluster").mkdir()
        figures = on_cluster(workdir / "cluster")
        say("in process: a new voter caught up")
        (workdir / "seed").mkdir()
        seeds = seeding(workdir / "seed")
    return report(figures, seeds)


def main() -> None:
    """A small run, printed: 5,000 objects, 20 s idle, 10 s of load."""
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="small and short")
    parser.add_argument(
        "--seeding", nargs="*", choices=MODES, help="only the new voter's catch-up (these ways)"
    )
    options = parser.parse_args()
    if options.quick:
        global OBJECTS, JOBS, IDLE, LOAD
        OBJECTS, JOBS, IDLE, LOAD = 5000, 2, 20.0, 10.0
    if options.seeding is not None:
        with tempfile.TemporaryDirectory(prefix="colony-bench-snapshot-") as tmp:
            for s in seeding(Path(tmp), tuple(options.seeding) or MODES):
                print(s)
        return
    print(run())


if __name__ == "__main__":
    main()
