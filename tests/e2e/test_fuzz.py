"""Hostile input at every subject of a real cluster: afterwards every service answers, no
traceback was logged, and a write and a linearizable read still work.

A seeded generator (the seed is printed on failure, and `COLONY_FUZZ_SEED` replays it)
takes a valid message for each subject and breaks it: junk bytes, broken JSON, deep
nesting, oversized payloads, wrong types, out-of-range numbers, ids that are not subject
tokens, newer schema versions, internal commands, unsigned or replayed requests, forged
metrics and changes, and captured Raft frames published again, to their recipient and to
others. Gossip mutations never name a real member: spoofing a member's own state is what
per-node credentials (a later issue) close.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import msgspec
import pytest
from _cli import colony, on_cluster, status

from colony.harness.processes import example_metrics, poll, wait_for
from colony.shared import subjects
from colony.shared.bus import connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.messages import (
    Change,
    ConsensusStatusRequest,
    DigestRequest,
    Gossip,
    JoinRequest,
    KvPut,
    LatestMetricsRequest,
    LeaseGrant,
    ManagerActing,
    MembersRequest,
    MemberUpdate,
    NodeMeta,
    PingReqRequest,
    Proposal,
    ProposeRequest,
    QueryRequest,
    Resources,
    RetireRequest,
    encode,
)

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("COLONY_FUZZ_SEED", time.time_ns() % 1_000_000))
ROUNDS = 12
"""Broken variants per subject and node."""
SERVICES = ("consensus", "membership", "monitor")

HOSTILE_VALUES = [
    2**70, -(2**70), -1, 0, 1e308, float("inf"), "", "evil.node.>", "a b", "*", "x" * 100_000,
    "\u0000", "\udcff", [], {}, None, True, [1] * 10_000, {"k": {"k": {"k": {}}}},
]  # fmt: skip
JUNK = [b"", b"null", b"[]", b"{}", b"not json", b'{"v": 99}', b"\xff\xfe\x00", b"{" * 5000]


def samples(node: str) -> dict[str, object]:
    """A valid message for each of `node`'s subjects, and for the cluster-wide ones."""
    fake = MemberUpdate("fuzz-1", "alive", 1, NodeMeta(free=Resources(64.0, 2**40)))
    gossip = Gossip(sender="fuzz-0", seq=1, updates=[fake])
    proposal = Proposal("fuzz", KvPut("fuzz", "x"))
    grab = Proposal("grab", LeaseGrant("intruder", 5.0, expected_epoch=1))
    return {
        subjects.member_ping(node).name: gossip,
        subjects.member_ping_req(node).name: PingReqRequest(sender="fuzz-0", target=node, seq=1),
        subjects.member_sync(node).name: gossip,
        subjects.member_tell(node).name: gossip,
        subjects.member_news().name: gossip,
        subjects.member_announce().name: gossip,
        subjects.members(node).name: MembersRequest(),
        subjects.node_metrics(node).name: example_metrics(node, free=Resources(1e6, 2**50)),
        subjects.latest_metrics(node).name: LatestMetricsRequest(),
        subjects.propose(node).name: ProposeRequest(proposals=[proposal, grab]),
        subjects.query(node).name: QueryRequest(key="fuzz"),
        subjects.consensus_status(node).name: ConsensusStatusRequest(),
        subjects.consensus_digest(node).name: DigestRequest(),
        subjects.consensus_join(node).name: JoinRequest(voters=[node, "intruder"]),
        subjects.consensus_retire(node).name: RetireRequest(reason="fuzz", node=node),
        subjects.manager_acting().name: ManagerActing(
            node=node, epoch=99, acting=True, valid_for=1e9
        ),
        subjects.change("kv", "fuzz").name: Change(
            index=1, kind="kv", id="fuzz", version=1, log_index=1
        ),
    }


def known_attacks(nodes: list[str]) -> list[tuple[str, bytes]]:
    """The attacks that broke the cluster once, whatever the generator picks."""
    attacks = []
    term = {"type": "leader.elected", "node": nodes[0], "term": 2**70}
    for node in nodes:
        propose = {"proposals": [{"id": f"big-{node}", "command": term}]}
        attacks.append((subjects.propose(node).name, json.dumps(propose).encode()))
        evil = {"sender": "fuzz-0", "updates": [{"node": "evil.node.>", "status": "alive",
                "incarnation": 1}]}  # fmt: skip
        attacks.append((subjects.member_tell(node).name, json.dumps(evil).encode()))
    for i in range(500):  # a flood of announcements from members that do not exist
        hello = Gossip(sender=f"flood-{i}", updates=[MemberUpdate(f"flood-{i}", "alive", 1)])
        attacks.append((subjects.member_announce().name, encode(hello)))
    return attacks


def mutate(value: object, rng: random.Random) -> object:
    """`value` (plain JSON data) with one place, picked at random, made hostile."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        return {**value, key: mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return [*value[:i], mutate(value[i], rng), *value[i + 1 :]]
    return rng.choice(HOSTILE_VALUES)


def variants(message: object, rng: random.Random) -> list[bytes]:
    plain = msgspec.to_builtins(message)
    out = [rng.choice(JUNK), os.urandom(rng.randrange(1, 300)), encode(message)]
    out.append(b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}")  # deep
    out.append(json.dumps({**plain, "pad": "x" * 900_000}).encode())  # near the size limit
    out.append(json.dumps({**plain, "v": 99}).encode())  # a newer major version
    for _ in range(ROUNDS):
        broken = mutate(plain, rng)
        try:
            out.append(json.dumps(broken, allow_nan=True).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError):
            continue
    return out


async def throw(url: str, nodes: list[str], rng: random.Random) -> int:
    """Publish every broken variant to every subject (requests with a reply inbox that
    nobody waits on), and replay captured Raft frames; returns how many were sent."""
    bus = await connect(NatsSettings(servers=[url]), "fuzzer")
    nc, sent = bus.nc, 0
    frames: list[tuple[str, bytes]] = []

    async def capture(msg) -> None:
        if len(frames) < 50:
            frames.append((msg.subject, msg.data))

    tap = await nc.subscribe(subjects.raft_frames(subjects.ANY), cb=capture)
    try:
        for node in nodes:
            for subject, message in samples(node).items():
                for payload in variants(message, rng):
                    await nc.publish(subject, payload, reply=nc.new_inbox())
                    sent += 1
                await nc.flush(timeout=10)
        for subject, payload in known_attacks(nodes):
            await nc.publish(subject, payload, reply=nc.new_inbox())
            sent += 1
        await poll(lambda: len(frames) >= 10, 10, "Raft frames to replay")
        await tap.unsubscribe()
        for subject, data in frames:
            for target in nodes:
                await nc.publish(subjects.raft_frames(target), data)  # to others: misdirected
                sent += 1
            await nc.publish(subject, data)  # to its recipient again: a replay
            sent += 1
        await nc.flush(timeout=10)
    finally:
        await bus.close()
    return sent


async def answering(url: str) -> set[tuple[str, str]]:
    bus = await connect(NatsSettings(servers=[url]), "fuzz-check")
    try:
        return {(s.service, s.node) for s in await Cluster(bus).services(window=0.5)}
    finally:
        await bus.close()


def test_hostile_messages_at_every_subject_break_nothing(cluster):
    state, base = cluster
    on_cluster(state, lambda c: c.wait_manager(60))  # a manager before the fuzz
    nodes = {entry["id"]: entry for entry in status(state).values()}
    url = f"nats://127.0.0.1:{base}"
    expected = {(service, node) for service in SERVICES for node in nodes}
    assert asyncio.run(answering(url)) >= expected
    rng = random.Random(SEED)
    sent = asyncio.run(throw(url, sorted(nodes), rng))
    assert sent > 1000, f"seed {SEED}"

    # every service answers, the cluster writes and reads, and nothing crashed
    wait_for(lambda: asyncio.run(answering(url)) >= expected, 20, f"every service (seed {SEED})")
    print(f"seed {SEED}")
    on_cluster(state, lambda c: c.wait_manager(30))  # a manager after the fuzz
    colony("kv", "put", "after-fuzz", "still-here", state=state)
    assert colony("kv", "get", "after-fuzz", state=state).stdout.strip() == "still-here"
    for entry in status(state).values():
        assert entry["member"] == "alive", (entry["name"], SEED)
    logged = {
        path: path.read_text(errors="replace") for path in Path(state).rglob("*.log")
    }  # every service's log, and nats-server's
    for path, text in logged.items():
        assert "Traceback" not in text, f"{path} (seed {SEED}):\n{_around(text, 'Traceback')}"
        assert "CRITICAL" not in text, f"{path} (seed {SEED}):\n{_around(text, 'CRITICAL')}"


def _around(text: str, needle: str) -> str:
    at = text.index(needle)
    return text[max(0, at - 500) : at + 2500]
