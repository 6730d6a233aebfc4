"""A snake_case adapter over pysyncobj: one voter's Raft replica of the management database.

pysyncobj stays in this module. Its tick thread applies committed entries to
the `Machine` and calls back; `commit` turns that callback into an awaitable
on the service's loop (`call_soon_threadsafe`). Its snapshots (log
compaction, and catching up a voter that fell too far behind) are SQLite
online backups of the database, not pickles of Python objects.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import Node

from colony.consensus import frames
from colony.consensus.machine import Machine
from colony.consensus.transport import Link, NatsTransport
from colony.shared.messages import Outcome


@dataclass(frozen=True)
class Timers:
    """Raft's timers, tuned for a LAN (pysyncobj's defaults suit slow WANs)."""

    append_entries: float = 0.05
    """Heartbeat period: 20 a second keeps an idle voter cheap (pysyncobj: 0.1 s)."""
    election_min: float = 0.3
    election_max: float = 0.6
    """A follower that hears no leader for a random time in this range campaigns."""
    leader_fallback: float = 1.0
    """A leader cut off from its majority steps down after this (pysyncobj: 30 s)."""
    tick: float = 0.01
    """pysyncobj's timer resolution; frames wake it at once (the transport's pipe)."""
    compaction_entries: int = 20_000
    compaction_seconds: float = 300


_LEADER = 2
"""pysyncobj's leader state."""
NO_QUORUM_CHECK = 0.1
"""Seconds between checks, while an entry waits, that a majority is still reachable."""


class NotCommitted(Exception):
    """The entry was not committed (or not known to be): the message says why."""


_REASONS = {
    FAIL_REASON.QUEUE_FULL: "too many proposals waiting",
    FAIL_REASON.MISSING_LEADER: "no leader: a majority of the voters cannot be reached",
    FAIL_REASON.DISCARDED: "the leader changed before it was committed",
    FAIL_REASON.NOT_LEADER: "this voter is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed while it waited: it may still commit "
    "(a retry with the same id is safe)",
    FAIL_REASON.REQUEST_DENIED: "refused by the leader",
}


def sync_conf(timers: Timers, state_dir: Path, save, load, on_state_changed=None) -> SyncObjConf:
    """pysyncobj's configuration for a voter: the timers, its journal and snapshot files,
    the snapshot hooks `save(path, raft_state)` / `load(path)`, and a hook called with
    (old, new) when it becomes follower (0), candidate (1) or leader (2)."""
    return SyncObjConf(
        onStateChanged=on_state_changed,
        autoTick=True,
        autoTickPeriod=timers.tick,
        appendEntriesPeriod=timers.append_entries,
        raftMinTimeout=timers.election_min,
        raftMaxTimeout=timers.election_max,
        leaderFallbackTimeout=timers.leader_fallback,
        journalFile=str(state_dir / "raft.journal"),
        fullDumpFile=str(state_dir / "raft.snapshot"),
        serializer=save,
        deserializer=load,
        useFork=False,  # never fork a threaded asyncio process
        # No leader: refuse at once ("no quorum"); clients retry, a queue would hide it.
        commandsWaitLeader=False,
        logCompactionMinEntries=timers.compaction_entries,
        logCompactionMinTime=timers.compaction_seconds,
        appendEntriesBatchSizeBytes=frames.MAX_FRAME // 2,
        # Voters are replaced at run time, one change committed at a time; the cluster
        # is kept in the journal and in snapshots.
        dynamicMembershipChange=True,
    )


class _Replica(SyncObj):
    def __init__(self, machine: Machine, me: str, peers: list[str], conf, link: Link) -> None:
        self._machine = machine
        transport = functools.partial(NatsTransport, link=link)
        super().__init__(me, peers, conf, nodeClass=Node, transportClass=transport)

    @replicated
    def _apply_entry(self, entry: bytes) -> tuple[int, list[Outcome] | None]:
        index = self.raftLastApplied + 1  # pysyncobj counts it applied after this returns
        return index, self._machine.apply(index, entry)


class Replica:
    """One voter: commit entries, read its state, report the group."""

    def __init__(
        self, me: str, voters: list[str], state_dir: Path, link: Link, timers: Timers = Timers()
    ) -> None:
        self.me = me
        self.machine = Machine(state_dir / "management.db")
        self._loop = asyncio.get_running_loop()
        self._link = link
        self._stopped_leading_at = 0.0
        conf = sync_conf(
            timers, state_dir, self._save_snapshot, self._load_snapshot, self._state_changed
        )
        peers = [v for v in voters if v != me]
        self._initial = list(voters)
        self._raft = _Replica(self.machine, me, peers, conf, link)

    async def commit(self, entry: bytes, timeout: float) -> tuple[int, list[Outcome] | None]:
        """Append `entry` through the leader; return (log index, outcomes) once applied here."""
        future = self._loop.create_future()

        def done(result, error) -> None:  # on pysyncobj's thread
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        self._raft._apply_entry(entry, callback=done)
        deadline = self._loop.time() + timeout
        while not future.done():
            # An entry appended just before the majority was lost waits forever:
            # say so as soon as this voter knows it cannot reach a majority.
            left = deadline - self._loop.time()
            await asyncio.wait({future}, timeout=min(max(left, 0), NO_QUORUM_CHECK))
            if future.done():
                break
            if not self._raft.hasQuorum:
                future.cancel()
                raise NotCommitted("no quorum: a majority of the voters cannot be reached")
            if left <= 0:
                future.cancel()
                raise NotCommitted(f"not committed within {timeout:g} s; it may still commit")
        return future.result()

    # --- the voters and the leadership (the leader only) ----------------------------

    async def add_voter(self, node: str) -> None:
        """Add `node` to the cluster; returns once the change is committed."""
        await self._membership(self._raft.addNodeToCluster, node)

    async def remove_voter(self, node: str) -> None:
        """Remove `node` from the cluster; returns once the change is committed."""
        await self._membership(self._raft.removeNodeFromCluster, node)

    async def _membership(self, change, node: str) -> None:
        future = self._loop.create_future()

        def done(result, error) -> None:  # on pysyncobj's thread
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        change(Node(node), callback=done)
        await asyncio.wait_for(future, timeout=10.0)

    async def transfer_leadership(self, node: str, patience: float = 1.0) -> bool:
        """Ask voter `node` to campaign now (Raft's TimeoutNow) as soon as it holds the whole
        log, within `patience` seconds; False if it never did (or this is not the leader).
        Whether it won shows in the status afterwards."""
        deadline = self._loop.time() + patience
        answers: list[int] = []  # the callback is called before transferLeadership returns
        while True:
            answers.clear()
            self._raft.transferLeadership(Node(node), callback=lambda _r, e: answers.append(e))
            if answers == [FAIL_REASON.SUCCESS]:
                return True
            if not self.is_leader or self._loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)  # its acknowledgement of the last entries is on the way

    # --- views --------------------------------------------------------------------

    @property
    def voters(self) -> list[str]:
        """Every voter of the cluster as this replica knows it, itself first."""
        return [self.me, *sorted(node.id for node in self._raft.otherNodes)]

    @property
    def term(self) -> int:
        return self._raft.raftCurrentTerm

    @property
    def is_leader(self) -> bool:
        return self._raft._isLeader()

    @property
    def log_arrived_by(self) -> float:
        """When (this replica's monotonic clock) every entry it holds from an earlier term
        had arrived: they came in a leader's frames, from its own journal, or it appended
        them while it led."""
        return max(self._link.entries_heard_at, self._stopped_leading_at)

    def _state_changed(self, old: int, _new: int) -> None:  # on pysyncobj's thread
        if old == _LEADER:
            self._stopped_leading_at = time.monotonic()

    def status(self) -> dict:
        """pysyncobj's status, with node objects turned into ids."""
        raw = self._raft.getStatus()
        leader = raw.get("leader")
        return {
            "role": {0: "follower", 1: "candidate", 2: "leader"}.get(raw["state"], "follower"),
            "leader": leader.id if leader is not None else None,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "applied_index": raw["last_applied"],
            "has_quorum": bool(raw["has_quorum"]),
            "connected": {
                k.removeprefix("partner_node_status_server_"): v == 2
                for k, v in raw.items()
                if k.startswith("partner_node_status_server_")
            },
            "match_index": {
                k.removeprefix("match_idx_server_"): v
                for k, v in raw.items()
                if k.startswith("match_idx_server_")
            },
        }

    def destroy(self) -> None:
        """Stop pysyncobj and wait for its thread, then close the database (in that order:
        the thread applies entries until it stops)."""
        self._raft.destroy_synchronous()
        self.machine.close()

    # --- snapshots (called on pysyncobj's thread) -----------------------------------

    def _save_snapshot(self, path: str, raft_state) -> None:
        """The database copy, with pysyncobj's own bookkeeping (last entries) inside it."""
        last_entry, previous_entry, cluster = raft_state
        self.machine.save(Path(path))
        meta = frames.dumps((last_entry, previous_entry, sorted(node.id for node in cluster)))
        with sqlite3.connect(path) as copy:
            copy.execute("CREATE TABLE raft_snapshot (meta BLOB NOT NULL)")
            copy.execute("INSERT INTO raft_snapshot VALUES (?)", (meta,))
        copy.close()

    def _load_snapshot(self, path: str):
        with sqlite3.connect(path) as copy:
            (meta,) = copy.execute("SELECT meta FROM raft_snapshot").fetchone()
            (snapshot_applied,) = copy.execute(
                "SELECT value FROM meta WHERE name = 'last_applied'"
            ).fetchone() or (0,)
        copy.close()
        last_entry, previous_entry, *rest = frames.loads(meta)
        cluster = rest[0] if rest else self._initial  # a snapshot from before dynamic voters
        if snapshot_applied > self.machine.last_applied:  # else ours is newer: keep it
            self.machine.load(Path(path))
            self.machine.db.execute("DROP TABLE IF EXISTS raft_snapshot")
        return last_entry, previous_entry, {Node(node) for node in cluster}


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        future.set_result(result)
    else:
        reason = _REASONS.get(error, f"pysyncobj error {error}")
        future.set_exception(NotCommitted(reason))
