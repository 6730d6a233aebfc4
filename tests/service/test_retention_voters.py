"""Retention with three real voters: the leader's Prune entries bound the idempotency records
and the change log the same way on every voter, after the changes reached the stream; a
retry too late to be recognised is refused."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import pytest
from _voters import Voters

from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.cluster import Cluster
from colony.shared.management import Management
from colony.shared.messages import DigestRequest, KvPut, Proposal, ProposeRequest

VOTERS = ["v1", "v2", "v3"]
WINDOW = 2.0
KEPT = 256
"""The least consensus.change_log_kept allows: one relay round."""
WRITES, BATCH = 320, 40
"""More changes than are kept, proposed a batch an entry."""


@pytest.fixture
async def voters(nats_server, tmp_path):
    group = Voters(nats_server, tmp_path, VOTERS, idempotency_window=WINDOW, change_log_kept=KEPT)
    for node in VOTERS:
        group.start(node)
    yield group
    await group.stop_all()


def rows(nats_server, node: str) -> tuple[int, int]:
    """(changes, idempotency records) in `node`'s management database."""
    path = nats_server.workdir / node / "consensus" / "management.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        changes = db.execute("SELECT count(*) FROM changes").fetchone()[0]
        return changes, db.execute("SELECT count(*) FROM proposals").fetchone()[0]


async def test_the_leader_prunes_every_voter_alike_and_a_late_retry_is_refused(
    voters, bus, nats_server
):
    await Cluster(bus, VOTERS).wait_leader(20)
    client = Management(bus, VOTERS)
    started = time.time()
    for start in range(0, WRITES, BATCH):
        batch = range(start, start + BATCH)
        await client.propose(
            *(KvPut(f"k{i % 4}", str(i)) for i in batch), ids=[f"put-{i}" for i in batch]
        )

    def pruned():
        counts = [rows(nats_server, node) for node in VOTERS]
        changes, records = max(c for c, _ in counts), max(r for _, r in counts)
        # kept changes plus the few since the last Prune; records of the last window only
        return counts if changes <= KEPT + BATCH and records < 10 else None

    await poll(pruned, 20, "every voter to forget old records and relayed changes")
    await poll(lambda: _same_digest(bus), 10, "every voter to hold the same database")
    stream = await bus.stream_state(subjects.CHANGES_STREAM)
    assert stream.last_seq >= WRITES  # the history is on the stream

    # a retry of put-0, made (its request's time) before the forgotten window: refused
    late = ProposeRequest(proposals=[Proposal("put-0", KvPut("k0", "again"))], ts=started)
    [outcome] = (await bus.request(subjects.propose("v1"), late, timeout=6)).outcomes
    assert not outcome.ok and "Propose it again with new ids" in outcome.error
    assert (await client.get("k0")).value == str(WRITES - 4)


async def _same_digest(bus) -> bool:
    replies = [await bus.request(subjects.consensus_digest(n), DigestRequest(), 6) for n in VOTERS]
    return len({r.applied_index for r in replies}) == 1 and len({r.sha256 for r in replies}) == 1
