"""A voter promoted into a running group starts from a replica snapshot: three Raft voters
in this process against a real nats-server, a fourth node standing by, a membership view
the test controls, and the fourth node's snapshotter faked (it answers `snapshot_fetch`
with a snapshot of a voter's live database, as a litestream restore would give it).
The new voter logs that it was seeded, catches up from the leader's log after the
snapshot's index, and ends with the same database as the others."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _voters import Membership, Voters

from colony.harness.processes import poll
from colony.shared import snapshot, subjects
from colony.shared.cluster import Cluster
from colony.shared.messages import (
    DigestRequest,
    KvPut,
    Proposal,
    ProposeRequest,
    SnapshotFetchReply,
    SnapshotFetchRequest,
    decode,
    encode,
    new_id,
)

VOTERS = ["v1", "v2", "v3"]
NODES = [*VOTERS, "v4"]


@pytest.fixture
async def nodes(nats_server, tmp_path):
    group = Voters(nats_server, tmp_path, VOTERS, voter_count=4)
    yield group
    await group.stop_all()


async def serve_replica_snapshots(bus, nodes: Voters, node: str, source: str) -> list:
    """`node`'s snapshotter, faked: a snapshot of `source`'s database (live: the online
    backup reads one state) at the path asked."""
    db = Path(nodes.server.node_config(source).node.dir) / "consensus" / "management.db"
    asked = []

    async def answer(msg) -> None:
        request = decode(msg.data, SnapshotFetchRequest)
        asked.append(request)
        header = await asyncio.to_thread(
            snapshot.make_from_file, db, Path(request.path), made_by=node, origin="replica"
        )
        reply = SnapshotFetchReply(
            node=node, path=request.path, replica=source, header=header, seconds=0.1
        )
        await msg.respond(encode(reply))

    await bus.nc.subscribe(subjects.snapshot_fetch(node).name, cb=answer)
    return asked


async def put(bus, via: str, key: str) -> int:
    request = ProposeRequest(proposals=[Proposal(new_id(), KvPut(key, "v" * 1000))])
    return (await bus.request(subjects.propose(via), request, timeout=6)).index


async def test_a_promoted_voter_is_seeded_from_a_snapshot_and_catches_up(nodes, bus, caplog):
    membership = Membership(NODES)  # v4 is passed by until its consensus answers
    await membership.serve(bus)
    for node in VOTERS:
        nodes.start(node)
    cluster = Cluster(bus, NODES)
    leader = (await cluster.wait_settled(30, voters=3)).node
    for i in range(200):
        await put(bus, leader, f"k{i}")
    source = next(n for n in VOTERS if n != leader)
    asked = await serve_replica_snapshots(bus, nodes, "v4", source)

    nodes.start("v4")
    await cluster.wait_settled(60, voters=4)
    assert len(asked) == 1
    [seeded] = [r for r in caplog.records if r.getMessage() == "new replica seeded from a snapshot"]
    assert seeded.node == "v4" and seeded.replica == source and seeded.index > 200

    last = await put(bus, leader, "after")  # committed with the new voter among four
    digests = {}

    async def same_everywhere() -> bool:
        for node in NODES:
            reply = await bus.request(subjects.consensus_digest(node), DigestRequest(), 5)
            digests[node] = (reply.applied_index, reply.sha256)
        return len(set(digests.values())) == 1 and digests["v4"][0] >= last

    await poll(same_everywhere, 30, "the seeded voter's database to equal the others'")
