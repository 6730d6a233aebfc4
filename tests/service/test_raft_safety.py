"""Raft's safety rules on real pysyncobj replicas over a real nats-server (three voters in
this process, each with its own NATS connection, `Link` and `Replica`):

- a voter acknowledges, and applies, only entries its journal has flushed to disk;
- a delayed repeat of an `append_entries` cuts nothing; one that contradicts committed
  entries stops the replica instead of rewriting them;
- a captured frame published again, to its recipient or to another voter, is dropped;
  a restarted voter's frames are accepted, its earlier run's are not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from colony.consensus import frames
from colony.consensus.machine import encode_batch
from colony.consensus.raft import NotCommitted, Replica, Timers
from colony.consensus.transport import Link
from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import Bus, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import KvPut, Proposal, new_id

VOTERS = ["v1", "v2", "v3"]
SECRET = b"a-cluster-secret-for-raft-tests"


@dataclass
class Voter:
    bus: Bus
    link: Link
    replica: Replica
    delivered: list[tuple[str, dict]] = field(default_factory=list)
    """Raft messages that passed the wire checks, as handed to the tick thread."""

    @property
    def raft(self):
        return self.replica._raft

    @property
    def journal(self):
        """pysyncobj's own log (read without the adapter's help: the checks hold for any)."""
        return self.raft._SyncObj__raftLog


class Group:
    """Three voters in this process; each can be stopped and started again on its state."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.workdir = workdir
        self.voters: dict[str, Voter] = {}

    async def start(self, node: str) -> Voter:
        bus = await connect(NatsSettings(servers=[self.url], ping_interval=1.0), node)
        link = Link(bus.nc, node, VOTERS, SECRET)
        await link.start()
        replica = Replica(node, VOTERS, self.workdir / node, link, Timers())
        voter = self.voters[node] = Voter(bus, link, replica)
        push = link._push

        def record(kind: str, peer: str, message) -> None:
            if kind == "message" and isinstance(message, dict):
                voter.delivered.append((peer, message))
            push(kind, peer, message)

        link._push = record
        return voter

    async def stop(self, node: str) -> None:
        voter = self.voters.pop(node)
        await asyncio.to_thread(voter.replica.destroy)
        await voter.link.stop()
        await voter.bus.close()

    def leader(self) -> str | None:
        """The voter every running voter names as leader, once they agree."""
        with contextlib.suppress(RuntimeError):  # pysyncobj's thread is mid-update
            named = {v.replica.status()["leader"] for v in self.voters.values()}
            if len(named) == 1 and (chief := named.pop()) in self.voters:
                return chief if self.voters[chief].replica.is_leader else None
        return None

    async def commit(self, key: str, value: str = "x") -> int:
        chief = self.voters[await poll(self.leader, 20, "a leader")]
        entry = encode_batch([Proposal(new_id(), KvPut(key, value))])
        index, _outcomes = await chief.replica.commit(entry, timeout=5)
        return index

    async def applied_everywhere(self, index: int, among: list[str] | None = None) -> None:
        nodes = among or list(self.voters)
        await poll(
            lambda: all(self.voters[n].raft.raftLastApplied >= index for n in nodes),
            10,
            f"{nodes} to apply entry {index}",
        )


@pytest.fixture
async def group(nats_server, tmp_path):
    voters = Group(nats_server.url, tmp_path)
    for node in VOTERS:
        await voters.start(node)
    yield voters
    for node in list(voters.voters):
        await voters.stop(node)


def terms(voter: Voter) -> list[tuple[int, int]]:
    journal = voter.journal
    return [(journal[i][1], journal[i][2]) for i in range(len(journal))]


def record_cuts(voter: Voter) -> list[int]:
    """Every `deleteEntriesFrom` pysyncobj makes on this voter's journal from now on."""
    cuts: list[int] = []
    journal = voter.journal
    cut = journal.deleteEntriesFrom

    def recorded(position: int) -> None:
        cuts.append(position)
        cut(position)

    journal.deleteEntriesFrom = recorded
    return cuts


# --- 1. acknowledged means on disk ----------------------------------------------------


async def test_a_voter_acknowledges_and_applies_only_entries_its_journal_flushed(group):
    chief = await poll(group.leader, 20, "a leader")
    flushed: dict[str, int] = {}
    flushes: collections.Counter[str] = collections.Counter()
    acks: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    for node, voter in group.voters.items():
        journal = voter.journal

        def flush(node=node, journal=journal, real=voter.raft.sync_journal) -> None:
            real()
            flushed[node] = journal[-1][1]
            flushes[node] += 1

        def send(peer, message, node=node, real=voter.link.send) -> bool:
            if isinstance(message, dict) and message.get("type") == "next_node_idx":
                acked = message["next_node_idx"] - 1 if message["success"] else 0
                acks[node] += bool(acked)
                if acked > flushed[node]:
                    problems.append(
                        f"{node} acknowledged entry {acked}: flushed up to {flushed[node]}"
                    )
            return real(peer, message)

        def apply(index, entry, entry_term=0, node=node, real=voter.replica.machine.apply):
            if index > flushed[node]:
                problems.append(f"{node} applied {index}: flushed up to {flushed[node]}")
            return real(index, entry, entry_term)

        voter.raft.sync_journal = flush  # all three run on pysyncobj's thread, as flushed does
        flushed[node] = getattr(voter.raft, "durable_index", 0)
        voter.link.send = send
        voter.replica.machine.apply = apply

    burst = 200
    indexes = await asyncio.gather(*(group.commit(f"k{i}") for i in range(burst)))
    for i in range(10):  # one at a time too: each waits for its own round trip
        indexes.append(await group.commit(f"one-by-one-{i}"))
    await group.applied_everywhere(max(indexes))

    assert problems == []
    followers = [n for n in VOTERS if n != chief]
    assert all(acks[n] > 0 for n in followers), acks
    # grouped: one flush covers every entry a batch of frames (or a tick) brought
    assert all(0 < flushes[n] < burst for n in VOTERS), flushes
    assert all(group.voters[n].raft.durable_index >= max(indexes) for n in VOTERS)


async def test_a_burst_of_slow_entries_costs_no_leadership_and_applies_in_order(group):
    chief = await poll(group.leader, 20, "a leader")
    term = group.voters[chief].replica.term
    applied: dict[str, list[int]] = {node: [] for node in VOTERS}
    for node, voter in group.voters.items():

        def apply(index, entry, entry_term=0, node=node, real=voter.replica.machine.apply):
            # 60 ms an entry: the burst is 1.8 s of applying on every voter, three times
            # the longest election timeout, committed nearly at once
            time.sleep(0.06)
            applied[node].append(index)
            return real(index, entry, entry_term)

        voter.replica.machine.apply = apply

    burst = 30
    leader = group.voters[chief].replica
    entries = [encode_batch([Proposal(new_id(), KvPut(f"slow-{i}", str(i)))]) for i in range(burst)]
    committed = await asyncio.gather(*(leader.commit(entry, timeout=20) for entry in entries))
    indexes = sorted(index for index, _outcomes in committed)
    await group.applied_everywhere(indexes[-1])

    assert {n: v.replica.term for n, v in group.voters.items()} == dict.fromkeys(VOTERS, term)
    assert group.leader() == chief
    for node, voter in group.voters.items():
        assert applied[node] == sorted(applied[node]) and set(indexes) <= set(applied[node])
        assert [voter.replica.machine.read(f"slow-{i}")[0] for i in range(burst)] == [
            str(i) for i in range(burst)
        ]


# --- 2. entries at or below the commit index are never cut -----------------------------


async def test_a_delayed_repeat_of_an_append_cuts_nothing(group, caplog):
    chief_id = await poll(group.leader, 20, "a leader")
    follower_id = next(n for n in VOTERS if n != chief_id)
    follower = group.voters[follower_id]
    for i in range(5):
        await group.commit(f"early-{i}")
    appends = [
        m for p, m in follower.delivered if m["type"] == "append_entries" and m.get("entries")
    ]
    old = appends[-1]  # a genuine frame from the leader, holding entries
    for i in range(30):  # the follower's log, commit index and applied index move past it
        last = await group.commit(f"later-{i}")
    await group.applied_everywhere(last)
    assert follower.raft.raftCommitIndex > old["entries"][-1][1]
    assert old["term"] == follower.replica.term  # same leader, same term: not ignored
    before = terms(follower)
    cuts = record_cuts(follower)

    follower.link._push("message", chief_id, old)  # delivered again, as a delayed frame
    after = await group.commit("after-the-repeat")  # its frames queue behind the repeat
    await group.applied_everywhere(after)

    assert cuts == []
    assert terms(follower)[: len(before)] == before
    assert not any("truncating already-applied" in r.getMessage() for r in caplog.records)


async def test_a_conflict_with_committed_entries_stops_the_replica(group, caplog):
    chief_id = await poll(group.leader, 20, "a leader")
    victim_id, other_id = [n for n in VOTERS if n != chief_id]
    victim = group.voters[victim_id]
    for i in range(10):
        last = await group.commit(f"k{i}")
    await group.applied_everywhere(last)
    held = dict(terms(victim))
    index = victim.raft.raftCommitIndex - 2  # committed (and applied) here
    rewrite = {
        "type": "append_entries",
        "term": victim.replica.term,
        "commit_index": victim.raft.raftCommitIndex,
        "prevLogIdx": index - 1,
        "prevLogTerm": held[index - 1],
        "entries": [(b"\x00", index, held[index] + 7)],  # another term at a committed index
    }
    applied = victim.raft.raftLastApplied
    cuts = record_cuts(victim)
    before = terms(victim)

    with caplog.at_level(logging.CRITICAL, logger="colony.consensus.raft"):
        victim.link._push("message", chief_id, rewrite)
        await poll(lambda: not victim.raft.tick_thread_alive(), 10, "the replica to stop")
    assert victim.raft.stopped_by and f"entry {index} is committed here" in victim.raft.stopped_by
    assert any(
        r.levelno == logging.CRITICAL and "conflicts with entries this voter committed" in r.msg
        for r in caplog.records
    )
    assert cuts == [] and terms(victim) == before
    with pytest.raises(NotCommitted, match="this voter stopped"):
        await victim.replica.commit(encode_batch([Proposal(new_id(), KvPut("k", "v"))]), 5)
    # the others (a majority) go on; the stopped one applies nothing more
    later = await group.commit("without-the-victim")
    await group.applied_everywhere(later, [chief_id, other_id])
    assert victim.raft.raftLastApplied == applied


# --- 3. frames cannot be replayed ---------------------------------------------------------


async def capture(bus: Bus, node: str) -> list[tuple[frames.Frame, bytes]]:
    """Every frame published to `node`'s Raft subject from now on: decoded, and as sent."""
    seen: list[tuple[frames.Frame, bytes]] = []

    async def keep(msg) -> None:
        seen.append((frames.unseal_for(SECRET, msg.data), msg.data))

    await bus.nc.subscribe(subjects.raft_frames(node), cb=keep)
    await bus.nc.flush()  # the server has the subscription before anything is sent
    return seen


async def test_a_captured_frame_published_again_is_dropped_by_every_voter(group, bus):
    chief_id = await poll(group.leader, 20, "a leader")
    target_id, bystander_id = [n for n in VOTERS if n != chief_id]
    target, bystander = group.voters[target_id], group.voters[bystander_id]
    wire = await capture(bus, target_id)
    for i in range(3):
        last = await group.commit(f"k{i}")
    await group.applied_everywhere(last)
    frame, raw = next(
        (f, raw)
        for f, raw in wire
        if f.sender == chief_id and isinstance(f.message, dict) and f.message.get("entries")
    )
    assert frame.recipient == target_id

    def copies() -> list[int]:  # the leader sends the same entries to both followers
        return [sum(m == frame.message for _, m in v.delivered) for v in (target, bystander)]

    before = copies()
    await bus.nc.publish(subjects.raft_frames(target_id), raw)  # to its recipient
    await bus.nc.publish(subjects.raft_frames(bystander_id), raw)  # to another voter
    await bus.nc.flush()
    await poll(lambda: target.link.dropped["replayed"] >= 1, 5, "the replay to be dropped")
    await poll(lambda: bystander.link.dropped["misaddressed"] >= 1, 5, "the misaddressed one")

    assert copies() == before
    later = await group.commit("after-the-replays")
    await group.applied_everywhere(later)


async def test_a_restarted_voters_frames_are_accepted_and_its_earlier_runs_are_not(group, bus):
    chief_id = await poll(group.leader, 20, "a leader")
    restarted_id = next(n for n in VOTERS if n != chief_id)
    chief = group.voters[chief_id]
    wire = await capture(bus, chief_id)
    last = await group.commit("before")
    await group.applied_everywhere(last)
    earlier_run = group.voters[restarted_id].link.incarnation
    old = next(raw for f, raw in wire if (f.sender, f.incarnation) == (restarted_id, earlier_run))

    await group.stop(restarted_id)
    for i in range(5):
        last = await group.commit(f"while-away-{i}")
    await group.start(restarted_id)
    await group.applied_everywhere(last)  # it caught up: the leader took its new frames
    last = await group.commit("after-the-restart")
    await group.applied_everywhere(last)
    assert chief.link.dropped["replayed"] == 0

    await bus.nc.publish(subjects.raft_frames(chief_id), old)
    await bus.nc.flush()
    await poll(lambda: chief.link.dropped["replayed"] == 1, 5, "the earlier run's frame dropped")
    last = await group.commit("after-the-replay")
    await group.applied_everywhere(last)
