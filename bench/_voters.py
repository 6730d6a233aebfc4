"""A raw Raft voter process for bench/consensus: pysyncobj + the Machine, over TCP or NATS.

    python -m bench._voters tcp  DIR APPLY ME PEER PEER
    python -m bench._voters nats DIR APPLY ME VOTERS URL SECRET_FILE [JOURNAL]

`tcp`: a SyncObj subclass whose one @replicated method applies an entry to
`colony.consensus.machine.Machine`, on pysyncobj's own TCPTransport (ME and
the peers are `127.0.0.1:port` addresses). `nats`: the service's own
`colony.consensus.raft.Replica`, which is the same SyncObj shape with the
NATS `Link` and transport, on one connection to URL. Both use the same
`Timers` and the same SyncObjConf (mirrored below from `Replica`), with the
same SQLite snapshot hooks. APPLY is `sqlite` (the Machine's apply: one
transaction per entry) or `none` (the entry is not applied: Raft and the
transport alone, as in the prototype of shared/MACHINE.md). JOURNAL (nats
only) is `flush` (the default: the journal is flushed before an entry counts
toward a commit) or `noflush` (the flush is skipped, to measure its cost).

The parent drives it with one JSON line per command on stdin and reads one
JSON line per answer on stdout:

    {"op": "status"}                   -> {"leader": bool, "known": id|null, "applied": n,
                                           "flushes": n, "flush_seconds": s, ...}
    {"op": "load", "seconds": S, "warmup": W, "inflight": K}
        -> {"commits": n, "seconds": s, "failed": {reason: n}, "p50": ..., "p99": ...}

`load` (on the leader) keeps K single-proposal entries in flight through the
replicated method with a callback, from a driver thread, for W + S seconds,
and counts the commits (applied here) of the last S. End of stdin: it stops.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from colony.consensus.machine import Machine, encode_batch
from colony.consensus.raft import Replica, Timers, sync_conf
from colony.consensus.service import read_secret
from colony.consensus.transport import Link
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.messages import KvPut, Proposal

_REASONS = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}
KEYS = 10_000
"""Distinct keys the load cycles over (an insert first, then updates)."""


def conf(timers: Timers, state_dir: Path, machine: Machine) -> SyncObjConf:
    """The SyncObjConf that `Replica` builds, with its SQLite snapshot hooks."""
    holder = types.SimpleNamespace(machine=machine)  # the hooks only use `self.machine`
    return sync_conf(
        timers,
        state_dir,
        functools.partial(Replica._save_snapshot, holder),
        functools.partial(Replica._load_snapshot, holder),
    )


class TcpVoter(SyncObj):
    """The baseline: the same replicated apply, on pysyncobj's TCPTransport."""

    def __init__(self, machine: Machine, me: str, peers: list[str], conf: SyncObjConf) -> None:
        self._machine = machine
        super().__init__(me, peers, conf)

    @replicated
    def _apply_entry(self, entry: bytes):
        index = self.raftLastApplied + 1
        return index, self._machine.apply(index, entry)


def status(raft: SyncObj) -> dict:
    leader = raft._getLeader()
    return {
        "leader": raft._isLeader(),
        "known": None if leader is None else str(getattr(leader, "id", leader)),
        "applied": raft.raftLastApplied,
        "commit": raft.raftCommitIndex,
        "quorum": raft.hasQuorum,
        "term": raft.raftCurrentTerm,
        # the journal's flushes so far, and the time they took (NATS voters only)
        "flushes": getattr(raft, "flushes", 0),
        "flush_seconds": getattr(raft, "flush_seconds", 0.0),
    }


def load(submit: Callable, tag: str, seconds: float, warmup: float, inflight: int) -> dict:
    """Keep `inflight` entries in flight for warmup + seconds; count the last `seconds`."""
    slots = threading.Semaphore(inflight)
    lock = threading.Lock()
    latencies: list[float] = []
    failed: dict[int, int] = {}
    start = time.perf_counter()
    window = start + warmup
    deadline = window + seconds

    def one(i: int) -> None:
        entry = encode_batch([Proposal(f"{tag}-{i}", KvPut(f"k{i % KEYS}", "value-of-16-byte"))])
        sent = time.perf_counter()

        def done(_result, error) -> None:  # on pysyncobj's tick thread
            now = time.perf_counter()
            with lock:
                if error != FAIL_REASON.SUCCESS:
                    failed[error] = failed.get(error, 0) + 1
                elif window <= now <= deadline:
                    latencies.append(now - sent)
            slots.release()

        submit(entry, callback=done)

    i = 0
    while time.perf_counter() < deadline:
        if slots.acquire(timeout=0.1):
            one(i)
            i += 1
    settled = time.perf_counter() + 10
    for _ in range(inflight):  # let what is in flight finish (or fail) before answering
        if not slots.acquire(timeout=max(settled - time.perf_counter(), 0)):
            break
    latencies.sort()

    def q(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None

    return {
        "commits": len(latencies),
        "seconds": seconds,
        "failed": {_REASONS.get(k, str(k)): n for k, n in failed.items()},
        "submitted": i,
        "p50": q(0.5),
        "p99": q(0.99),
    }


_loads = itertools.count()


def answer(raft: SyncObj, tag: str, line: str) -> dict:
    command = json.loads(line)
    tag = f"{tag}-{next(_loads)}"  # fresh proposal ids every load: none is a retry
    if command["op"] == "status":
        for _ in range(10):  # pysyncobj's thread may be mid-update
            try:
                return status(raft)
            except RuntimeError:
                continue
        return {"error": "status unreadable"}
    if command["op"] == "load":
        return load(
            raft._apply_entry, tag, command["seconds"], command["warmup"], command["inflight"]
        )
    return {"error": f"unknown op {command['op']!r}"}


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def machine(state_dir: Path, apply: str) -> Machine:
    made = Machine(state_dir / "management.db")
    if apply == "none":
        made.apply = lambda _index, _entry: None  # this process only: Raft without SQLite
    return made


def run_tcp(state_dir: Path, apply: str, me: str, peers: list[str]) -> None:
    db = machine(state_dir, apply)
    raft = TcpVoter(db, me, peers, conf(Timers(), state_dir, db))
    try:
        for line in sys.stdin:
            reply(answer(raft, me, line))
    finally:
        raft.destroy_synchronous()  # the tick thread must be gone before SQLite closes
        db.close()


async def run_nats(
    state_dir: Path, apply: str, me: str, voters: list[str], url: str, secret: bytes, journal: str
) -> None:
    bus = await connect(NatsSettings(servers=[url], ping_interval=1.0), f"bench-{me}")
    link = Link(bus.nc, me, voters, secret)
    await link.start()
    replica = Replica(me, voters, state_dir, link, Timers())
    if apply == "none":
        replica.machine.apply = lambda *_entry: None
    if journal == "noflush":  # this process only: entries count toward commits unflushed
        replica._raft.sync_journal = lambda: None
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            reply(await asyncio.to_thread(answer, replica._raft, me, line))
    finally:
        # Replica.destroy closes SQLite without waiting for the tick thread: join it first.
        await asyncio.to_thread(replica._raft.destroy_synchronous)
        await asyncio.to_thread(replica.destroy)
        await link.stop()
        await bus.close()


if __name__ == "__main__":
    kind, where, apply, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    where.mkdir(parents=True, exist_ok=True)
    if kind == "tcp":
        run_tcp(where, apply, me, sys.argv[5:])
    else:
        voters, url, secret = sys.argv[5].split(","), sys.argv[6], read_secret(sys.argv[7])
        journal = sys.argv[8] if len(sys.argv) > 8 else "flush"
        asyncio.run(run_nats(where, apply, me, voters, url, secret, journal))
