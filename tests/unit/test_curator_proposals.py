"""The curator cuts its decisions into proposals consensus accepts: at most MAX_BATCH
commands and MAX_ENTRY_BYTES per log entry, a command too large alone split in parts."""

from __future__ import annotations

from colony.consensus.machine import MAX_BATCH, MAX_ENTRY_BYTES, encode_batch
from colony.curator.service import _proposals
from colony.shared.messages import (
    InstancesPlace,
    JobRollback,
    NodeStatus,
    Placement,
    Proposal,
    RolloutProgress,
    new_id,
)


def placement(n: int) -> Placement:
    return Placement(
        id=f"web-{n}-abcd", job="web", version=1, slot=n, node=f"node-{n % 1000}",
        cpu=0.1, memory=2**26, ports={"http": 20000 + n % 100},
        reason="job web submitted" + " (with a long explanation)" * 10,
    )  # fmt: skip


def test_every_proposal_is_an_entry_consensus_accepts_and_nothing_is_lost():
    statuses = [NodeStatus(node=f"n{i}", status="alive") for i in range(1003)]
    place = [InstancesPlace(placements=[placement(n) for n in range(i, i + 500)])
             for i in range(0, 10_000, 500)]  # fmt: skip
    batches = _proposals([*statuses, *place])
    for batch in batches:
        entry = encode_batch([Proposal(new_id(), command, epoch=7) for command in batch])
        assert len(batch) <= MAX_BATCH and len(entry) <= MAX_ENTRY_BYTES
    commands = [command for batch in batches for command in batch]
    assert [c for c in commands if isinstance(c, NodeStatus)] == statuses
    placed = [p for c in commands if isinstance(c, InstancesPlace) for p in c.placements]
    assert [p.slot for p in placed] == list(range(10_000))  # in order, once each


def test_a_failed_rollout_its_revert_and_rollback_are_never_cut_apart():
    """A cut between them would leave a failed rollout with auto_revert unreverted, or a
    rollback with its rollout still running."""
    statuses = [NodeStatus(node=f"n{i}", status="alive") for i in range(MAX_BATCH - 1)]
    group = [
        RolloutProgress(job="web", version=2, status="failed", reason="unhealthy"),
        RolloutProgress(job="web", version=2, status="reverted", reason="reverted to 1"),
        JobRollback(job="web", version=1, cause="auto-revert"),
    ]
    batches = _proposals([*statuses, *group])
    assert any(batch[-3:] == group for batch in batches)
    for batch in batches:
        entry = encode_batch([Proposal(new_id(), command, epoch=7) for command in batch])
        assert len(entry) <= MAX_ENTRY_BYTES
