"""Consensus: committed commands/s and commit latency through the real service, NATS
transport vs pysyncobj's TCP transport, and failover after kill -9 of the leader.

Everything runs on loopback: a 3-server NATS cluster (`NatsCluster`, JetStream
on), three voters, the clients in this process.

1. Throughput through the API: three `python -m colony.consensus` processes,
   each connected to its own server of the cluster; clients in this process
   send ProposeRequests (`Management`, leader first) with one proposal each
   (several in flight) or with hundreds (batched). A reply comes once the
   entry is committed and applied to the leader's SQLite.
2. Transport: the same Machine and the same `Timers` in raw voter processes
   (`bench._voters`): pysyncobj's TCPTransport on free loopback ports, and the
   service's own `Replica` with its NATS `Link` over the same NATS cluster.
   The leader's process keeps many single-proposal entries in flight.
3. Failover: kill -9 of the leader's voter process while a client writes
   continuously through it; then one write through a retrying `Management`
   client that asks the survivors, and one through a client that starts at
   the dead voter; each timed from the kill to its reply. The killed voter is
   restarted on its state and the group is whole again before the next trial.
4. Durability: raw NATS voter groups as in 2, with the journal flushed
   before an entry counts toward a commit (as the service runs) and with the
   flush skipped, alternately, one entry in flight and many; the voters time
   each flush.

5. etcd: when an `etcd` binary is on PATH (`apt-get install etcd-server`; never
   required), a 3-member etcd on loopback (`bench._etcd`) gets the failover
   trials of 3 and the loads of 1 that the side-by-side table shows, through a
   client shaped like `Management`; then its idle cost. Without etcd the
   table's etcd column is empty and says why.

They run in the order 2, 4, 3, 1, 5: the raw groups before the service's voters
exist, failover on a small database, before the throughput runs fill it, and
etcd once Colony's processes are gone.

    python -m bench.consensus durability    only 4, printed
    python -m bench.consensus versus        only the side-by-side table (3 and 1 with
                                            its loads, then 5), printed

    COLONY_BENCH_TRIALS=20 COLONY_BENCH_WINDOW=10 python -m bench consensus
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import _etcd
from bench._report import ms, quantile, say, table, verdict
from colony.harness.processes import NatsCluster, VoterProcesses, poll, wait_for
from colony.shared import natsd, subjects
from colony.shared.bus import BusError, connect
from colony.shared.cluster import Cluster, Statuses
from colony.shared.config import NatsSettings
from colony.shared.management import ATTEMPT, PROBE_EVERY, Management, ManagementError
from colony.shared.messages import KvPut

TITLE = "Consensus"
WINDOW = float(os.environ.get("COLONY_BENCH_WINDOW", "6"))
"""Seconds each throughput figure is counted over, after WARMUP."""
WARMUP = 1.0
TRIALS = int(os.environ.get("COLONY_BENCH_TRIALS", "12"))
UNBATCHED = (1, 16, 64)
"""Requests in flight, one proposal each."""
BATCHED = ((100, 8), (500, 4))
"""(proposals per request, requests in flight)."""
RAW_INFLIGHT = {"sqlite": 1000, "none": 5000}
"""Entries in flight from the raw leader's process (one proposal each), by apply: with
SQLite, more only adds queueing (and ticks long enough to set off elections)."""
RAW_ROUNDS = 3
"""Alternating rounds of TCP and NATS groups with the SQLite apply (one without)."""
DURABILITY_INFLIGHT = (1, RAW_INFLIGHT["sqlite"])
DURABILITY_ROUNDS = 2
"""Alternating rounds with the journal flushed and not, at each DURABILITY_INFLIGHT."""
VERSUS_LOADS = ((1, 1), (1, 64), (100, 8))
"""(puts per request, requests in flight) of the side-by-side table: in both systems."""
VERSUS_TRIALS = int(os.environ.get("COLONY_BENCH_TRIALS", "5"))
"""Failover trials of `versus` alone (the full run takes TRIALS)."""
IDLE_SETTLE = 5.0
IDLE_SAMPLES = 10
"""etcd at rest: seconds after start, then samples 1 s apart (as bench/footprint)."""
MIB = 2**20
BAR_SINGLE_P50 = 0.002
BAR_INFLIGHT_64 = 6_300
BAR_BATCHED = 50_000
"""Issue 17's goals: one request in flight, p50 (s); 64 in flight and batched, commands/s."""
BAR_FAILOVER = 1.0
BRIEF_FAILOVER = 1.5
VALUE = "value-of-16-byte"
ROOT = Path(__file__).parent.parent
SECRET = "a-cluster-secret-for-the-consensus-bench"


class Cpu:
    """Cores kept busy by some processes between `start` and `stop` (user + system),
    and by everything else on the machine (`others`: other benchmarks, tests, ...)."""

    def __init__(self, pids: list[int]) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.began, self.used, self.busy, self.others = 0.0, 0.0, 0.0, 0.0

    @staticmethod
    def _machine() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                total += sum(process.cpu_times()[:2])
        return total

    def start(self) -> None:
        self.began, self.used, self.busy = time.monotonic(), self._seconds(), self._machine()

    def stop(self) -> float:
        elapsed = time.monotonic() - self.began
        ours = (self._seconds() - self.used) / elapsed
        self.others = max((self._machine() - self.busy) / elapsed - ours, 0.0)
        return ours


def stop_process(process: subprocess.Popen, grace: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- 2. raw voters: TCP vs NATS -------------------------------------------------------


@dataclass
class RawGroup:
    """Three `bench._voters` processes driven over their stdin/stdout."""

    transport: str
    apply: str
    journal: str = "flush"
    """NATS only: `noflush` skips the journal's flush (bench._voters)."""
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, workdir: Path, cluster: NatsCluster, run: int) -> RawGroup:
        base = [sys.executable, "-m", "bench._voters", self.transport]
        if self.transport == "tcp":
            me = [f"127.0.0.1:{port}" for port in natsd.free_ports(3)]
            args = [[m, *(p for p in me if p != m)] for m in me]
        else:
            me = [f"raw{run}-v{i}" for i in range(1, 4)]
            secret = workdir / "secret"
            urls = cluster.urls
            args = [
                [m, ",".join(me), url, str(secret), self.journal]
                for m, url in zip(me, urls, strict=True)
            ]
        for i, rest in enumerate(args):
            where = workdir / f"raw{run}-{self.transport}-{i}"
            with open(workdir / f"raw{run}-{self.transport}-{i}.log", "ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [*base, str(where), self.apply, *rest],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                        cwd=ROOT,
                    )
                )
        return self

    def ask(self, process: subprocess.Popen[str], **command) -> dict:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(command) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"raw {self.transport} voter exited ({process.poll()})")
        return json.loads(line)

    def leader(self) -> subprocess.Popen[str] | None:
        views = [self.ask(p, op="status") for p in self.processes]
        leaders = [p for p, v in zip(self.processes, views, strict=True) if v.get("leader")]
        known = {v.get("known") for v in views}
        return leaders[0] if len(leaders) == 1 and len(known) == 1 and None not in known else None

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.close()  # end of input: it destroys its replica and exits
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(process, grace=2)


def raw_round(
    workdir: Path,
    cluster: NatsCluster,
    transport: str,
    apply: str,
    run: int,
    inflight: int | None = None,
    journal: str = "flush",
) -> dict:
    group = RawGroup(transport, apply, journal)
    try:
        group.start(workdir, cluster, run)
        chief = wait_for(group.leader, 30, f"raw {transport} voters to elect a leader")
        before = [group.ask(p, op="status") for p in group.processes]
        cpu = Cpu([p.pid for p in group.processes])
        cpu.start()
        inflight = inflight or RAW_INFLIGHT[apply]
        result = group.ask(chief, op="load", seconds=WINDOW, warmup=WARMUP, inflight=inflight)
        result["cores"], result["others"] = cpu.stop(), cpu.others
        after = [group.ask(p, op="status") for p in group.processes]
        term = max(a["term"] for a in after) - max(b["term"] for b in before)
        result["term changes"] = term
        result["rate"] = result["commits"] / result["seconds"]
        for key in ("flushes", "flush_seconds"):  # all three voters, warm-up included
            result[key] = sum(a[key] - b[key] for a, b in zip(after, before, strict=True))
    finally:
        group.stop()
    failed = ", ".join(f"{n} {why}" for why, n in result["failed"].items()) or "none"
    flushed = (
        f", {result['flushes']:,} flushes of {flush_ms(result):.2f} ms" if result["flushes"] else ""
    )
    say(
        f"raw {transport}/{apply}/{journal}, {inflight} in flight: {result['rate']:,.0f} "
        f"commits/s, p50 {result['p50'] or 0:.3f} s, {result['cores']:.2f} cores, "
        f"failed: {failed}, "
        f"new terms: {result['term changes']}{flushed}"
    )
    return result


def flush_ms(result: dict) -> float:
    """The mean time of one journal flush in a round, in ms."""
    return result["flush_seconds"] / result["flushes"] * 1000 if result["flushes"] else 0.0


def transports(workdir: Path, cluster: NatsCluster) -> dict[tuple[str, str], list[dict]]:
    (workdir / "secret").write_text(SECRET)
    runs = itertools.count()
    results: dict[tuple[str, str], list[dict]] = {}
    plan = [("sqlite", RAW_ROUNDS), ("none", 1)]
    for apply, rounds in plan:
        for _ in range(rounds):
            for transport in ("tcp", "nats"):
                result = raw_round(workdir, cluster, transport, apply, next(runs))
                results.setdefault((transport, apply), []).append(result)
    return results


def durability(workdir: Path, cluster: NatsCluster) -> dict[tuple[int, str], list[dict]]:
    """NATS groups with the journal flushed and not, alternately: {(in flight, journal): rounds}."""
    (workdir / "secret").write_text(SECRET)
    runs = itertools.count(1000)  # names apart from transports()'s
    results: dict[tuple[int, str], list[dict]] = {}
    for inflight in DURABILITY_INFLIGHT:
        for _ in range(DURABILITY_ROUNDS):
            for journal in ("flush", "noflush"):
                result = raw_round(
                    workdir, cluster, "nats", "sqlite", next(runs), inflight, journal
                )
                results.setdefault((inflight, journal), []).append(result)
    return results


def durability_report(results: dict[tuple[int, str], list[dict]]) -> str:
    columns = ["in flight", "journal", "commits/s by round", "p50 ms", "entries per flush"]
    columns += ["ms per flush", "new terms", "others' cores"]
    rows = []
    for (inflight, journal), rounds in results.items():
        flushes = sum(r["flushes"] for r in rounds)
        submitted = sum(r["submitted"] for r in rounds)  # warm-up and window, as flushes
        rows.append(
            [
                f"{inflight:,}",
                "flushed before it counts" if journal == "flush" else "**not flushed**",
                ", ".join(f"**{r['rate']:,.0f}**" for r in rounds),
                ", ".join(f"{(r['p50'] or 0) * 1000:.1f}" for r in rounds),
                f"{submitted * 3 / max(flushes, 1):,.1f}" if journal == "flush" else "-",
                f"{sum(r['flush_seconds'] for r in rounds) / max(flushes, 1) * 1000:.2f}"
                if journal == "flush"
                else "-",
                str(sum(r["term changes"] for r in rounds)),
                ", ".join(f"{r['others']:.2f}" for r in rounds),
            ]
        )

    def cost(inflight: int) -> str:
        flushed = statistics.median(r["rate"] for r in results[(inflight, "flush")])
        skipped = statistics.median(r["rate"] for r in results[(inflight, "noflush")])
        return (
            f"{inflight:,} in flight: {flushed:,.0f}/s flushed, {skipped:,.0f}/s not "
            f"({(flushed / skipped - 1) * 100:+.0f} %)"
        )

    # without the flush, the voters still count the (skipped) flushes: leave those out
    every = [r for (_, journal), rounds in results.items() if journal == "flush" for r in rounds]
    mean = sum(r["flush_seconds"] for r in every) / max(sum(r["flushes"] for r in every), 1)
    costs = "; ".join(map(cost, DURABILITY_INFLIGHT))
    say(f"journal flush: {mean * 1000:.2f} ms each; {costs}")
    return f"""Raw NATS voter groups (`bench/_voters.py`, the service's `Replica`, SQLite
apply) as above, {DURABILITY_ROUNDS} rounds each, alternating: the journal synced
(fdatasync) before an entry counts toward a commit, as the service runs (a
follower before its acknowledgements leave, once per batch of frames; the leader
right after it sends new entries, and before it counts its own log), and the
sync skipped. Entries per flush are each voter's, over the warm-up and the
window; the time of a flush is measured around the sync inside the voters.
One flush took **{mean * 1000:.2f} ms** on average on this machine's disk; medians of the
rounds: {costs}.

{table(columns, rows)}

With one entry in flight a commit waits for two syncs, the leader's and a
follower's, made at the same time; with many in flight one sync covers every
entry of a batch. Where the rest of the machine was busy (others'
cores), rounds differ by more than the flushes cost."""


# --- 1 and 3. the service's voter processes -----------------------------------------


class Voters(VoterProcesses):
    """Three `python -m colony.consensus` processes, each on its own server of the cluster."""

    def stop_all(self) -> None:
        for node in list(self.processes):
            process = self.processes.pop(node)
            stop_process(process)
            if process.returncode:
                say(f"{node} exited {process.returncode} when stopped (log: {node}.log)")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values()]


def whole(statuses: Statuses) -> str | None:
    """The leader, once every voter answers, follows it, and has applied all it committed."""
    top = statuses.settled()
    if top is None or statuses.unreachable or not top.status.has_quorum:
        return None
    if any(v.applied_index < top.status.commit_index for v in statuses.answered.values()):
        return None
    return top.node


async def whole_group(bus, voters: Voters, timeout: float, what: str) -> str:
    return await Cluster(bus, voters.ids).until(whole, timeout, what)


class Sender:
    """One client of a system under test: `send` puts its pairs in one request."""

    async def send(self, pairs: list[tuple[str, str]]) -> object: ...

    def close(self) -> None: ...


class Target:
    """What the loads and the failover trials need of a system under test."""

    label: str
    names: list[str]
    errors: tuple[type[Exception], ...]
    """What a client raises when no member could answer in time."""

    async def whole(self) -> str:
        """The leader, once every member is up and agrees on it."""
        raise NotImplementedError

    def kill(self, name: str) -> None:
        raise NotImplementedError

    def restart(self, name: str) -> None:
        raise NotImplementedError

    def client(self, order: list[str], timeout: float) -> Sender:
        raise NotImplementedError

    async def elected(self, survivors: list[str]) -> str:
        """The new leader, once `survivors` agree on one (within 10 s)."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The processes whose cpu counts with this process's during a load."""
        raise NotImplementedError

    async def relayed(self) -> int:
        """Changes copied to the change stream so far (0 where there is none)."""
        return 0

    async def lag(self, leader: str) -> int:
        """The most entries a follower is behind (-1: not known)."""
        return -1


class ColonyClient(Sender):
    def __init__(self, management: Management) -> None:
        self.management = management

    async def send(self, pairs: list[tuple[str, str]]) -> object:
        return await self.management.propose(*(KvPut(k, v) for k, v in pairs))

    def close(self) -> None:
        pass  # the bus is shared


@dataclass
class Colony(Target):
    bus: Any
    voters: Voters
    label = "Colony"
    errors = (ManagementError, TimeoutError)

    @property
    def names(self) -> list[str]:  # type: ignore[override]
        return self.voters.ids

    async def whole(self) -> str:
        return await whole_group(self.bus, self.voters, 120, "whole group")

    def kill(self, name: str) -> None:
        self.voters.kill(name)

    def restart(self, name: str) -> None:
        self.voters.start(name)

    def client(self, order: list[str], timeout: float) -> Sender:
        return ColonyClient(Management(self.bus, order, timeout=timeout))

    async def elected(self, survivors: list[str]) -> str:
        return (await Cluster(self.bus, survivors).wait_leader(10)).node

    def pids(self) -> list[int]:
        return [*self.voters.pids(), *(s.process.pid for s in self.voters.server_of.values())]

    async def relayed(self) -> int:
        return await stream_last(self.bus) or 0

    async def lag(self, leader: str) -> int:
        top = await Cluster(self.bus).status(leader)
        return max((v.lag or 0 for v in top.voters), default=0) if top else -1


@dataclass
class EtcdTarget(Target):
    etcd: _etcd.Etcd
    label = "etcd"
    errors = (_etcd.EtcdError,)

    @property
    def names(self) -> list[str]:  # type: ignore[override]
        return self.etcd.names

    async def whole(self) -> str:
        return await self.etcd.whole(60)

    def kill(self, name: str) -> None:
        self.etcd.kill(name)

    def restart(self, name: str) -> None:
        self.etcd.start(name)

    def client(self, order: list[str], timeout: float) -> Sender:
        return _etcd.EtcdClient(self.etcd.urls(order), timeout=timeout)

    async def elected(self, survivors: list[str]) -> str:
        async def new() -> str | None:
            return await self.etcd.leader(survivors)

        return await poll(new, 10, f"{' and '.join(survivors)} to agree on a new leader")

    def pids(self) -> list[int]:
        return self.etcd.pids()


@dataclass
class ApiResult:
    per_request: int
    inflight: int
    latencies: list[float]
    errors: list[str]
    cores: float
    others: float
    relayed: float
    lag: int

    @property
    def rate(self) -> float:
        return len(self.latencies) * self.per_request / WINDOW


async def stream_last(bus) -> int | None:
    try:
        return (await bus.stream_state(subjects.CHANGES_STREAM)).last_seq
    except BusError:  # not made yet, or JetStream busy: no figure
        return None


async def drive(target: Target, leader: str, per_request: int, inflight: int) -> ApiResult:
    """`inflight` clients sending requests of `per_request` puts for WARMUP + WINDOW."""
    order = [leader, *(n for n in target.names if n != leader)]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    window, end = start + WARMUP, start + WARMUP + WINDOW
    samples: dict[str, float] = {}
    cpu = Cpu([*target.pids(), os.getpid()])

    async def client(n: int) -> None:
        sender = target.client(order, 10)
        try:
            for i in itertools.count():
                if time.perf_counter() >= end:
                    return
                keys = (f"c{n}-{(i * per_request + j) % 1000}" for j in range(per_request))
                sent = time.perf_counter()
                try:
                    await sender.send([(key, VALUE) for key in keys])
                except target.errors as e:
                    errors.append(str(e))
                    continue
                if window <= (now := time.perf_counter()) <= end:
                    latencies.append(now - sent)
        finally:
            sender.close()

    async def sampler() -> None:
        await asyncio.sleep(WARMUP)  # the measurement window's edges, not a wait for a state
        cpu.start()
        samples["relayed"] = await target.relayed()
        await asyncio.sleep(WINDOW)
        samples["cores"], samples["others"] = cpu.stop(), cpu.others
        samples["relayed"] = (await target.relayed() - samples["relayed"]) / WINDOW
        samples["lag"] = await target.lag(leader)

    await asyncio.gather(sampler(), *(client(n) for n in range(inflight)))
    result = ApiResult(
        per_request,
        inflight,
        latencies,
        errors,
        samples["cores"],
        samples["others"],
        samples["relayed"],
        int(samples["lag"]),
    )
    say(
        f"{target.label} {per_request} x {inflight} in flight: {result.rate:,.0f} commands/s, "
        f"p50 {quantile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {quantile(latencies, 0.99) * 1000:.1f} ms, "
        f"{result.cores:.2f} cores (others {result.others:.2f}), "
        f"stream {result.relayed:,.0f}/s, lag {result.lag}, "
        f"{len(errors)} errors"
    )
    return result


@dataclass
class Failover:
    survivors: float
    """A client that asks the survivors: from the kill to its write's reply."""
    fresh: float
    """A client that was using the leader, its first request sent after the kill."""
    outage: float
    """A client writing continuously through the leader: its longest wait for an ack."""
    elected: float
    """The survivors both name the same new leader."""
    old: str
    new: str


async def timed(since: float, write, errors: tuple[type[Exception], ...]) -> float:
    try:
        await write
    except (*errors, TimeoutError) as e:
        say(f"failed: {e}")
        return float("inf")
    return time.monotonic() - since


async def failover(target: Target, trial: int, trials: int) -> Failover:
    leader = await target.whole()
    survivors = [n for n in target.names if n != leader]
    calls: list[tuple[float, float]] = []  # (sent, acknowledged) of the continuous writer
    stop = asyncio.Event()

    async def writer() -> None:
        client = target.client([leader, *survivors], timeout=30)
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                sent = time.monotonic()
                with contextlib.suppress(*target.errors):
                    await client.send([(f"stream-{trial}", str(i))])
                    calls.append((sent, time.monotonic()))
        finally:
            client.close()

    async def one(order: list[str], key: str, since: float) -> float:
        client = target.client(order, timeout=10)
        try:
            return await timed(since, client.send([(key, "b")]), target.errors)
        finally:
            client.close()

    writing = asyncio.create_task(writer())
    try:
        await poll(lambda: len(calls) >= 5, 10, "the continuous writer to get going")
        killed = time.monotonic()
        target.kill(leader)
        through, fresh, elected = await asyncio.gather(
            one(survivors, "a", killed),
            one([leader, *survivors], "c", killed),
            timed(killed, target.elected(survivors), ()),
        )
        await poll(lambda: calls[-1][0] > killed, 30, "the continuous writer to write again")
    finally:
        stop.set()
        await writing
    acks = [done for _, done in calls if done > killed - 1]
    outage = max(later - earlier for earlier, later in itertools.pairwise(acks))
    new = await target.elected(survivors)
    target.restart(leader)
    say(
        f"{target.label} failover {trial + 1}/{trials}: killed {leader}, {new} leads after "
        f"{elected:.3f} s; first write: {through:.3f} s via the survivors, {fresh:.3f} s "
        f"starting at the dead voter; continuous writer waited {outage:.3f} s"
    )
    return Failover(through, fresh, outage, elected, leader, new)


@dataclass
class Backlog:
    changes: int
    """Rows in the leader's change log (its SQLite, read directly)."""
    relayed: int
    """Messages in COLONY_CHANGES."""


async def backlog(bus, voters: Voters, leader: str) -> Backlog:
    path = voters.workdir / leader / "consensus" / "management.db"

    def count() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return db.execute("SELECT coalesce(max(idx), 0) FROM changes").fetchone()[0]

    return Backlog(await asyncio.to_thread(count), await stream_last(bus) or 0)


@dataclass
class Side:
    """One system's figures: failover trials, then loads."""

    trials: list[Failover]
    api: list[ApiResult]


async def loads(target: Target, plan: list[tuple[int, int]], trials: int) -> Side:
    """Failover trials first (on a small database), then each (per request, in flight)."""
    side = Side([await failover(target, trial, trials) for trial in range(trials)], [])
    for per_request, inflight in plan:
        leader = await target.whole()
        side.api.append(await drive(target, leader, per_request, inflight))
    return side


async def service(
    workdir: Path, cluster: NatsCluster, plan: list[tuple[int, int]], trials: int
) -> tuple[Side, Backlog]:
    voters = Voters(cluster, workdir)
    bus = await connect(NatsSettings(servers=cluster.urls), "bench-consensus")
    try:
        for node in voters.ids:
            voters.start(node)
        started = time.monotonic()
        await whole_group(bus, voters, 60, "leader of the whole group")
        say(f"service voters: a leader after {time.monotonic() - started:.2f} s")
        colony = Colony(bus, voters)
        side = await loads(colony, plan, trials)
        behind = await backlog(bus, voters, await colony.whole())
        say(f"change log: {behind.changes:,} rows, {behind.relayed:,} in the stream")
        return side, behind
    finally:
        await bus.close()
        voters.stop_all()


# --- 5. etcd, the same loads ----------------------------------------------------------


@dataclass
class Idle:
    """Processes at rest: their summed RSS and PSS (MiB, mean of the samples), and the
    cpu they used over the samples (% of one core)."""

    processes: int
    rss: float
    pss: float
    cpu: float


def idle(pids: list[int]) -> Idle:
    processes = [psutil.Process(pid) for pid in pids]

    def cpu_seconds() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)  # user + system

    rss, pss = [], []
    before, started = cpu_seconds(), time.monotonic()
    for _ in range(IDLE_SAMPLES):
        memory = [p.memory_full_info() for p in processes]
        rss.append(sum(m.rss for m in memory) / MIB)
        pss.append(sum(m.pss for m in memory) / MIB)
        time.sleep(1.0)  # the sampling period, not a wait for a state
    cpu = (cpu_seconds() - before) / (time.monotonic() - started) * 100
    return Idle(len(processes), statistics.mean(rss), statistics.mean(pss), cpu)


@dataclass
class EtcdSide(Side):
    version: str = ""
    idle: Idle | None = None


def etcd(workdir: Path, plan: list[tuple[int, int]], trials: int) -> EtcdSide | None:
    """A fresh 3-member etcd: idle, then failover trials and loads; None without etcd."""
    if _etcd.binary() is None:
        say("etcd: no `etcd` on PATH, so no etcd column (apt-get install etcd-server)")
        return None
    with _etcd.Etcd(workdir) as members:

        async def run() -> EtcdSide:
            started = time.monotonic()
            await members.start_all()
            say(f"etcd: a leader after {time.monotonic() - started:.2f} s")
            await asyncio.sleep(IDLE_SETTLE)  # as bench/footprint lets a cluster settle
            still = await asyncio.to_thread(idle, members.pids())
            say(
                f"etcd idle: {still.rss:.0f} MiB RSS, {still.pss:.0f} MiB PSS, "
                f"{still.cpu:.1f} % of a core ({still.processes} processes)"
            )
            side = await loads(EtcdTarget(members), plan, trials)
            return EtcdSide(side.trials, side.api, _etcd.version(), still)

        return asyncio.run(run())


# --- the report -----------------------------------------------------------------------


def measure() -> tuple[dict, dict, Side, Backlog, EtcdSide | None]:
    with tempfile.TemporaryDirectory(prefix="colony-bench-consensus-") as tmp:
        workdir = Path(tmp)
        cluster = NatsCluster(workdir / "nats").start()
        try:
            (workdir / "raw").mkdir()
            raw = transports(workdir / "raw", cluster)
            durable = durability(workdir / "raw", cluster)
            plan = [(1, n) for n in UNBATCHED] + list(BATCHED)
            colony, behind = asyncio.run(service(workdir / "service", cluster, plan, TRIALS))
        finally:
            cluster.stop()
        other = etcd(workdir / "etcd", list(VERSUS_LOADS), TRIALS)  # Colony stopped: alone
    return raw, durable, colony, behind, other


def measure_versus() -> tuple[Side, EtcdSide | None]:
    """Only the loads of the side-by-side table, one system at a time."""
    with tempfile.TemporaryDirectory(prefix="colony-bench-versus-") as tmp:
        workdir = Path(tmp)
        cluster = NatsCluster(workdir / "nats").start()
        try:
            plan = list(VERSUS_LOADS)
            colony, _ = asyncio.run(service(workdir / "service", cluster, plan, VERSUS_TRIALS))
        finally:
            cluster.stop()
        return colony, etcd(workdir / "etcd", list(VERSUS_LOADS), VERSUS_TRIALS)


def footprint_idle() -> tuple[Idle, str] | None:
    """The idle cluster row of bench/footprint's last results, and when it was measured."""
    path = ROOT / "bench" / "results" / "footprint.md"
    with contextlib.suppress(OSError, ValueError, StopIteration, KeyError, IndexError):
        lines = path.read_text().splitlines()
        when = next(line for line in lines if line.startswith("_Measured ")).split(" on ")[0]
        header = next(line for line in lines if line.startswith("| process |"))
        row = next(line for line in lines if line.startswith("| **") and "cluster**" in line)

        def cells(line: str) -> list[str]:
            return [c.strip() for c in line.strip("|").split("|")]

        cell = dict(zip(cells(header), cells(row), strict=False))
        figures = Idle(
            int(cell["per cluster"].split()[0]),
            float(cell["RSS mean"]),
            float(cell["PSS mean"]),
            float(cell["idle cpu % mean"]),
        )
        return figures, when.removeprefix("_Measured ")
    return None


def ratio(ours: float, theirs: float) -> str:
    """Colony / etcd, to 3 figures ("-" where either is missing)."""
    return f"{ours / theirs:.3g}" if theirs and ours != float("inf") else "-"


def load_cell(side: Side, per_request: int, inflight: int) -> tuple[str, float]:
    """One system's figures at one load (rate, and latency for single puts), and its rate."""
    found = [r for r in side.api if (r.per_request, r.inflight) == (per_request, inflight)]
    if not found:
        return "-", 0.0
    r = found[0]
    q, name = (0.5, "p50") if inflight == 1 else (0.99, "p99")
    latency = f", {name} {ms(quantile(r.latencies, q))} ms" if per_request == 1 else ""
    errors = f" ({len(r.errors)} errors)" if r.errors else ""
    return f"{r.rate:,.0f}/s{latency}{errors}", r.rate


def idle_cell(figures: Idle) -> str:
    return (
        f"{figures.rss:.0f} MiB / {figures.pss:.0f} MiB / {figures.cpu:.1f} % "
        f"({figures.processes} processes)"
    )


def versus_table(colony: Side, other: EtcdSide | None) -> str:
    rows = []
    for per_request, inflight in VERSUS_LOADS:
        if per_request > 1:
            what = f"{per_request} puts per request, {inflight} in flight"
        else:
            what = f"{inflight} put{'s' if inflight > 1 else ''} in flight"
        (ours, rate), (theirs, etcd_rate) = (
            load_cell(colony, per_request, inflight),
            load_cell(other, per_request, inflight) if other else ("-", 0.0),
        )
        rows.append([what, ours, theirs, ratio(rate, etcd_rate) if rate else "-"])
    failovers = [
        ("kill -9 of the leader → the survivors agree on a new leader, p50", "elected", [0.5]),
        ("kill -9 of the leader → first put accepted, p50", "survivors", [0.5]),
        (
            "client with a request in flight to the killed leader → its next acknowledged"
            " write, p50 / p95",
            "outage",
            [0.5, 0.95],
        ),
    ]
    for what, figure, qs in failovers:

        def at(side: Side, figure: str = figure, qs: list[float] = qs) -> list[float]:
            return [quantile([getattr(t, figure) for t in side.trials], q) for q in qs]

        ours = at(colony)
        theirs = at(other) if other and other.trials else []
        rows.append(
            [
                what,
                " / ".join(f"{x:.2f} s" for x in ours),
                " / ".join(f"{x:.2f} s" for x in theirs) or "-",
                " / ".join(map(ratio, ours, theirs)) or "-",
            ]
        )
    ours_idle, theirs_idle = footprint_idle(), other.idle if other else None
    both = (
        f"{ratio(ours_idle[0].pss, theirs_idle.pss)} / {ratio(ours_idle[0].cpu, theirs_idle.cpu)}"
        if ours_idle and theirs_idle
        else "-"
    )
    rows.append(
        [
            "idle 3-node cluster: RSS / PSS / cpu % of one core",
            f"{idle_cell(ours_idle[0])}, bench/footprint of {ours_idle[1]}"
            if ours_idle
            else "see footprint",
            idle_cell(theirs_idle) if theirs_idle else "-",
            f"{both} (PSS / cpu)" if both != "-" else "-",
        ]
    )
    return table(["load", "Colony", "etcd", "Colony / etcd"], rows)


def versus_report(colony: Side, other: EtcdSide | None) -> str:
    trials = len(colony.trials)
    if other is None:
        baseline = (
            "No `etcd` was on PATH, so the etcd column is empty (`apt-get install "
            "etcd-server` gives one; nothing else needs it)."
        )
    else:
        baseline = f"""etcd {other.version} (`{_etcd.binary()}`): three members on free
loopback ports, each its own data dir, with Colony's raft timers: a heartbeat
every {_etcd.HEARTBEAT_MS} ms and an election timeout of {_etcd.ELECTION_MS} ms, which etcd draws
between one and two timeouts, as Colony's elections after 0.3-0.6 s (etcd's
defaults are 100 ms and 1 s). etcd fsyncs its WAL before it acknowledges, as
Colony flushes its journal. The client (`bench/_etcd.py`) has `Management`'s
shape: one asyncio process, each client its own keep-alive HTTP/1.1 connection
to etcd's JSON gateway (`/v3/kv/put`; `/v3/kv/txn` with the puts of a request
in one transaction), the leader first, the next member after an error or
{ATTEMPT:g} s without an answer, backing off 50 ms doubling to 0.5 s (the retries
`Management` had before issue 17; it now also probes the voter a request waits
on, see Failover). Idle: a fresh
cluster after {IDLE_SETTLE:g} s, sampled {IDLE_SAMPLES} times 1 s apart (RSS and PSS summed,
cpu over the samples), as bench/footprint samples Colony's."""
    return f"""The same loads through each system, one system at a time on this machine
(Colony's voters and NATS stopped before etcd starts): {WINDOW:g} s windows after
{WARMUP:g} s of warm-up, 16-byte values over 1,000 keys per client, and {trials} failover
trial{"s" if trials != 1 else ""} each (kill -9 of the leader while a client writes through it; the
killed member restarted before the next trial). {baseline}

{versus_table(colony, other)}

Colony / etcd: for rates below 1 means Colony is slower; for times and idle
cost above 1 means Colony is slower or heavier. The rest of the machine
(anything not measured) kept {busy(colony)} cores busy during Colony's loads,
{busy(other) if other else "-"} during etcd's.

An etcd follower hands a put to the leader it knows without waiting for an
answer: one sent to a survivor before the survivors have noticed the kill is
lost with the dead leader and fails only after etcd's request timeout (5 s +
two election timeouts: "request timed out, possibly due to previous leader
failure"), so through this client the first put after a kill waits out its
{ATTEMPT:g} s attempt, while a put sent once the new leader is elected is acknowledged in
milliseconds."""


def busy(side: Side) -> str:
    """The others' cores over a side's loads: their range."""
    others = [r.others for r in side.api]
    return f"{min(others):.2f}-{max(others):.2f}" if others else "-"


def api_table(api: list[ApiResult]) -> str:
    columns = ["load", "proposals per request", "in flight", "commands/s", "requests/s"]
    columns += ["p50 ms", "p99 ms", "CPU cores", "others' cores", "stream/s", "lag"]
    rows = []
    for r in api:
        errors = f" ({len(r.errors)} errors)" if r.errors else ""
        rows.append(
            [
                "unbatched" if r.per_request == 1 else "batched",
                str(r.per_request),
                str(r.inflight),
                f"**{r.rate:,.0f}**{errors}",
                f"{len(r.latencies) / WINDOW:,.0f}",
                ms(quantile(r.latencies, 0.5)),
                ms(quantile(r.latencies, 0.99)),
                f"{r.cores:.2f}",
                f"{r.others:.2f}",
                f"{r.relayed:,.0f}",
                str(r.lag),
            ]
        )
    return table(columns, rows)


def raw_table(raw: dict[tuple[str, str], list[dict]]) -> str:
    columns = ["transport", "apply", "in flight", "round", "commits/s", "p50 ms"]
    columns += ["CPU cores", "others' cores", "failed", "new terms"]
    rows = []
    for apply in ("sqlite", "none"):
        for transport in ("tcp", "nats"):
            for n, r in enumerate(raw[(transport, apply)], 1):
                failed = ", ".join(f"{k} {why}" for why, k in r["failed"].items()) or "none"
                rows.append(
                    [
                        "pysyncobj TCPTransport" if transport == "tcp" else "NATS (`Link`)",
                        "Machine (SQLite)" if apply == "sqlite" else "none",
                        f"{RAW_INFLIGHT[apply]:,}",
                        str(n),
                        f"**{r['rate']:,.0f}**",
                        f"{(r['p50'] or 0) * 1000:.0f}",
                        f"{r['cores']:.2f}",
                        f"{r['others']:.2f}",
                        failed,
                        str(r["term changes"]),
                    ]
                )
    return table(columns, rows)


def run() -> str:
    raw, durable, colony, behind, other = measure()
    trials, api = colony.trials, colony.api
    cores = os.cpu_count()
    best_batched = max(r.rate for r in api if r.per_request > 1)
    unbatched = {r.inflight: r for r in api if r.per_request == 1}
    single_p50, at_64 = quantile(unbatched[1].latencies, 0.5), unbatched[64].rate
    goals = [
        f"one request in flight, p50 at most {BAR_SINGLE_P50 * 1000:g} ms: "
        f"{single_p50 * 1000:.1f} ms, {verdict(single_p50 <= BAR_SINGLE_P50)}",
        f"64 in flight, at least {BAR_INFLIGHT_64:,} commands/s: {at_64:,.0f}/s, "
        f"{verdict(at_64 >= BAR_INFLIGHT_64)}",
        f"batched, at least {BAR_BATCHED:,} commands/s: best {best_batched:,.0f}/s, "
        f"{verdict(best_batched >= BAR_BATCHED)}",
    ]

    def rate(transport: str, apply: str) -> float:
        return statistics.median(r["rate"] for r in raw[(transport, apply)])

    def spread(transport: str) -> str:
        rates = [r["rate"] for r in raw[(transport, "sqlite")]]
        return f"{min(rates):,.0f}-{max(rates):,.0f}/s"

    ratio = rate("nats", "sqlite") / rate("tcp", "sqlite")
    moved = [r for rs in raw.values() for r in rs if r["term changes"]]
    elections = (
        f" {len(moved)} round(s) saw a new term under load with every voter alive"
        " (the entries in flight were discarded); not investigated here."
        if moved
        else ""
    )
    ratio_none = rate("nats", "none") / rate("tcp", "none")

    def row(what: str, values: list[float]) -> list[str]:
        return [what, *(f"{x:.3f}" for x in (quantile(values, 0.5), quantile(values, 0.95)))]

    p95 = quantile([t.survivors for t in trials], 0.95)
    fresh95 = quantile([t.fresh for t in trials], 0.95)
    outage95 = quantile([t.outage for t in trials], 0.95)
    rank = round(0.95 * (len(trials) - 1)) + 1
    bars = table(
        ["write", "p95 s", f"≤ {BAR_FAILOVER:g} s (issue)", f"≤ {BRIEF_FAILOVER:g} s (brief)"],
        [
            [what, f"{x:.3f}", verdict(x <= BAR_FAILOVER), verdict(x <= BRIEF_FAILOVER)]
            for what, x in [
                ("(a) through the survivors: **the bar**", p95),
                ("(b) starting at the dead voter", fresh95),
                ("(c) continuous writer", outage95),
            ]
        ],
    )
    failovers = table(
        ["from kill -9 of the leader to", "p50 s", "p95 s", "max s"],
        [
            [*row(what, values), f"{max(values):.3f}"]
            for what, values in [
                ("survivors agree on a new leader", [t.elected for t in trials]),
                ("(a) first write, client asks the survivors", [t.survivors for t in trials]),
                ("(b) first write, client starts at the dead voter", [t.fresh for t in trials]),
                ("(c) continuous writer's longest wait for an ack", [t.outage for t in trials]),
            ]
        ],
    )
    return f"""Everything on loopback on this one machine ({cores} cores shared by all of it):
a 3-server NATS cluster (`NatsCluster`, routes and JetStream), three voters,
and the clients. Default `Timers` (heartbeat 50 ms, elections after
0.3-0.6 s; the tick thread sleeps until its next deadline, woken at once by
frames and proposals). Proposals are small `kv.put`s (16-byte values over
1,000 keys per client), each with its own id, so each is applied. "Others'
cores" is what the rest of the machine (anything not measured, such as tests
run meanwhile) kept busy during the window.

### Side by side with etcd

{versus_report(colony, other)}

### Committed commands through the service

Three `python -m colony.consensus` processes, each connected to its own
server of the cluster (as on a real node), the change relay running on the
leader. Clients in this benchmark's process (one NATS connection) send
`ProposeRequest`s through `Management` (the leader first), each client one
request at a time; a reply means committed by a majority **and applied to
the leader's SQLite** (one transaction per entry; the requests that reach the
leader in the same turn of its event loop share an entry). Commands/s counts the
proposals replied to over {WINDOW:g} s after {WARMUP:g} s of warm-up; latency is per
request, send to reply. CPU is the cores busy over the window in the voters,
the nats-servers and this process; stream/s is what the leader's change
relay copied to `COLONY_CHANGES` per second meanwhile; lag is the most
entries a follower was behind at the end of the window.

{api_table(api)}

A proposal goes to the followers as soon as the leader's tick thread has
appended it (pysyncobj alone would wait for the next 50 ms heartbeat), and
requests in flight together are batched into one entry, so many small
requests pay for one round trip and one transaction per voter. What is left
per proposal (applying it on every voter, relaying its change, the request
and reply in Python on both sides) is what bounds these rates: see
[Where a commit's time goes](consensus-profile.md). The change relay publishes
a round of up to 256 changes before it awaits their acknowledgements: at the end
of these runs the leader's change log held {behind.changes:,} changes and
`COLONY_CHANGES` {behind.relayed:,} ({behind.changes - behind.relayed:,} still to relay).

Anchors: pysyncobj's README claims 15K requests/s on localhost (no
database). Issue 17's goals: {"; ".join(goals)}.

### Transport: NATS vs pysyncobj's TCP

Raw voter processes (`bench/_voters.py`), three per group, one group at a
time: a SyncObj whose one `@replicated` method calls
`Machine.apply(raftLastApplied + 1, entry)` on pysyncobj's `TCPTransport`
(free loopback ports), and the service's own `Replica` (the same method)
with its NATS `Link`, each voter on its own server of the NATS cluster.
Same `Timers`, the same `SyncObjConf` and the same SQLite snapshot hooks on
both. The leader's process keeps that many single-proposal entries in flight
(replicated calls with a callback, from a driver thread) and counts those
applied on the leader over {WINDOW:g} s after {WARMUP:g} s of warm-up; p50 is submit
to callback, so mostly queueing. Rounds alternate TCP and NATS; the last two
apply nothing (Raft and transport alone, as in the prototype). CPU: the
three voters' processes.

{raw_table(raw)}

NATS/TCP, medians: **{ratio:.2f}** with the SQLite apply, {ratio_none:.2f} without
(with SQLite, rounds ranged {spread("tcp")} over TCP and {spread("nats")} over NATS).{elections}
pysyncobj applies committed entries one at a time on the thread that also
runs Raft, one SQLite transaction each, so with the Machine that thread
bounds both transports alike. Anchor: the prototype of shared/MACHINE.md
(no SQLite; heartbeat 10 ms, tick 5 ms) pipelined about 50k writes/s over
NATS and 40k over TCPTransport.

### Durability: the journal flushed before an entry counts

{durability_report(durable)}

### Failover

{TRIALS} trials. In each, a client writes continuously through the leader
(`Management`, one `kv.put` at a time); the leader's voter process is
killed with -9; at once, two more retrying `Management` clients each send
one write: (a) one that asks only the two survivors, (b) one that starts
at the dead voter, as a client that was using it would. `Management` tries
the next voter (the leader the last status named, if it still listens) after a
refusal or no responders; while a request waits more than {PROBE_EVERY * 1000:g} ms it probes
the voter asked every {PROBE_EVERY * 1000:g} ms, gives it up at once when nothing listens
there any more, keeps waiting while it answers, and gives it up after {ATTEMPT:g} s of
silence; backoff 50 ms doubling to 0.25 s. Times are from the kill
to each write's reply; (c) is the longest gap between the continuous
writer's acknowledgements around the kill. Meanwhile the survivors' status
is polled until both name the same new leader. The killed voter is then
restarted on its state dir, and the next trial waits until all three
answer, agree on the leader, are connected and have applied everything
(polled, no fixed sleeps).

{failovers}

The request that (c) had in flight to the killed leader is never answered:
the client's next probe of that voter finds nothing listening, and it asks a
survivor at once with the same ids, so (c) is about the election plus a
probe period. A request sent to the dead voter after the kill (b) is refused
at once (no responders) or given up at the first probe.

Anchor: etcd elects a new leader in about one election timeout (1 s by
default); the MACHINE.md prototype failed over to the first write in
0.2-0.4 s. Bars on the p95 (rank {rank} of {TRIALS}, fastest first): the issue's
{BAR_FAILOVER:g} s and the brief's {BRIEF_FAILOVER:g} s for the first committed write through
the surviving voters, which (a) measures; (b) and (c) are shown against
the same bars for what a client sees.

{bars}
"""


if __name__ == "__main__" and sys.argv[1:] == ["durability"]:
    with tempfile.TemporaryDirectory(prefix="colony-bench-durability-") as tmp:
        nats = NatsCluster(Path(tmp) / "nats").start()
        try:
            (Path(tmp) / "raw").mkdir()
            print(durability_report(durability(Path(tmp) / "raw", nats)))
        finally:
            nats.stop()
elif __name__ == "__main__" and sys.argv[1:] == ["versus"]:
    from bench.__main__ import machine, stamp

    print(f"_Measured {stamp(machine())}._\n\n{versus_report(*measure_versus())}")
elif __name__ == "__main__":
    sys.exit(f"usage: python -m bench.consensus durability|versus (not {sys.argv[1:]})")
