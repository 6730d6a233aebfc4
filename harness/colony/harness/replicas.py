"""Raft replicas in this process: real pysyncobj `Replica`s over a real nats-server, each
with its own NATS connection and `Link`, to start, stop, write to and look into.

What tests/service/test_seeded_start.py and bench/snapshot share: a group of voters
whose databases, Raft state and received messages are at hand (a new voter seeded from
a snapshot, every voter restored, a voter caught up from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from colony.consensus import changelog
from colony.consensus.machine import encode_batch
from colony.consensus.raft import Replica, Timers
from colony.consensus.transport import Link
from colony.harness.processes import poll
from colony.shared import snapshot
from colony.shared.bus import Bus, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import KvPut, Proposal, new_id

VOTERS = ["v1", "v2", "v3"]
SECRET = b"a-cluster-secret-for-seed-tests"
CLUSTER = snapshot.cluster_id_of(SECRET)


@dataclass
class Voter:
    bus: Bus
    link: Link
    replica: Replica
    heard: list[dict] = field(default_factory=list)
    """Every Raft message handed to its tick thread."""

    @property
    def raft(self):
        return self.replica._raft

    @property
    def snapshots_received(self) -> int:
        return sum("serialized" in m for m in self.heard if m.get("type") == "append_entries")


class Group:
    """Voters of one cluster (`SECRET`), each in `workdir/<node>`."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.voters: dict[str, Voter] = {}

    async def start(self, node: str, voters: list[str] = VOTERS, first_term: int = 0) -> Voter:
        bus = await connect(NatsSettings(servers=[self.url], ping_interval=1.0), node)
        link = Link(bus.nc, node, voters, SECRET)
        await link.start()
        try:
            replica = Replica(node, voters, self.workdir / node, link, Timers(), cluster=CLUSTER,
                              first_term=first_term)  # fmt: skip
        except BaseException:
            await link.stop()
            await bus.close()
            raise
        voter = self.voters[node] = Voter(bus, link, replica)
        push = link._push

        def record(kind: str, peer: str, message) -> None:
            if kind == "message" and isinstance(message, dict):
                voter.heard.append(message)
            push(kind, peer, message)

        link._push = record
        return voter

    async def stop(self, node: str) -> None:
        voter = self.voters.pop(node)
        await asyncio.to_thread(voter.replica.destroy)
        await voter.link.stop()
        await voter.bus.close()

    async def stop_all(self) -> None:
        for node in list(self.voters):
            await self.stop(node)

    def leader(self, among: list[str] | None = None) -> str | None:
        """The voter every running voter (of `among`) names as leader, once they agree."""
        with contextlib.suppress(RuntimeError):  # pysyncobj's thread is mid-update
            named = {self.voters[n].replica.status()["leader"] for n in among or self.voters}
            if len(named) == 1 and (chief := named.pop()) in self.voters:
                return chief if self.voters[chief].replica.is_leader else None
        return None

    async def chief(self, among: list[str] | None = None) -> Voter:
        return self.voters[await poll(lambda: self.leader(among), 20, "a leader")]

    async def write(
        self, first: int, count: int, per_entry: int = 50, value: Callable[[int], str] = str
    ) -> int:
        """Put keys k<first>..k<first+count-1>, `per_entry` to a log entry, key k's value
        "v" + value(k); the last index."""
        chief = await self.chief()
        index = 0
        for start in range(first, first + count, per_entry):
            keys = range(start, min(start + per_entry, first + count))
            entry = encode_batch([Proposal(new_id(), KvPut(f"k{k}", f"v{value(k)}")) for k in keys])
            index, _outcomes = await chief.replica.commit(entry, timeout=10)
        return index

    async def applied_everywhere(self, index: int, timeout: float = 30) -> None:
        await poll(
            lambda: all(v.raft.raftLastApplied >= index for v in self.voters.values()),
            timeout,
            f"every voter to apply entry {index}",
        )

    async def digests(self) -> dict[str, str]:
        return {n: (await changelog.digest(v.replica.machine.path))[1]
                for n, v in self.voters.items()}  # fmt: skip


def save(voter: Voter, out: Path) -> snapshot.SnapshotHeader:
    """A snapshot of a running voter's database, through a reader's connection."""
    reader = sqlite3.connect(voter.replica.machine.path, isolation_level=None)
    try:
        return snapshot.make(reader, out, made_by=voter.replica.me, origin="save")
    finally:
        reader.close()
