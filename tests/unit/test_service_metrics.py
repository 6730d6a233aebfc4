"""What consensus and membership count for the node's metrics, without processes."""

from __future__ import annotations

import random

import pytest

from colony.consensus.metrics import ConsensusMetrics
from colony.membership.metrics import MembershipMetrics
from colony.membership.state import SUSPECT, Membership, Timing
from colony.shared.messages import (
    KvPut,
    MemberUpdate,
    NodeMeta,
    Outcome,
    Proposal,
    ProposeReply,
    ProposeRequest,
)
from colony.shared.runner import Refused


def counts(counter) -> dict[str, float]:
    return {next(iter(s.labels.values()), ""): s.value for s in counter.family().samples}


def counted_run(core: Membership, metrics: MembershipMetrics, instructions) -> None:
    for i in instructions:
        metrics.executed(i, core.me)


def test_a_failed_probe_counts_probes_and_one_suspicion_by_probe():
    a, metrics = Membership("a", NodeMeta(), 0.0, random.Random(1)), MembershipMetrics()
    for peer in "bcde":
        a.gossip_received(0, peer, [MemberUpdate(peer, "alive", 0)])
    period = Timing().period
    for now in (0, period / 4, period / 2, 3 * period / 4, period, 2 * period):
        counted_run(a, metrics, a.tick(now))
    assert counts(metrics.probes)["direct"] >= 1
    assert counts(metrics.probes)["indirect"] == Timing().indirect
    assert counts(metrics.suspicions) == {"probe": 1, "gossip": 0}
    assert counts(metrics.sent)["ping_req"] == Timing().indirect
    assert counts(metrics.sent)["news"] >= 1  # the accusation, broadcast


def test_a_suspicion_heard_counts_by_gossip_and_a_refutation_counts_once():
    b, metrics = Membership("b", NodeMeta(), 0.0, random.Random(1)), MembershipMetrics()
    b.gossip_received(0, "c", [MemberUpdate("c", "alive", 0)])
    counted_run(b, metrics, b.gossip_received(0, "a", [MemberUpdate("c", SUSPECT, 0, by="a")]))
    assert counts(metrics.suspicions) == {"probe": 0, "gossip": 1}
    counted_run(b, metrics, b.gossip_received(0, "a", [MemberUpdate("b", SUSPECT, 0, by="a")]))
    assert counts(metrics.refutations) == {"": 1}
    counted_run(b, metrics, b.leave(1.0))  # leaving broadcasts 'left': no refutation
    assert counts(metrics.refutations) == {"": 1}


async def test_proposals_and_refusals_are_counted_per_proposal():
    metrics = ConsensusMetrics()
    two = ProposeRequest(
        proposals=[Proposal("p1", KvPut("a", "1")), Proposal("p2", KvPut("b", "2"))]
    )

    async def no_quorum(_request):
        raise Refused(503, "no quorum")

    async def one_not_applied(_request):
        return ProposeReply(index=7, outcomes=[Outcome(ok=True), Outcome(ok=False, error="epoch")])

    with pytest.raises(Refused):
        await metrics.counting(no_quorum)(two)
    assert (await metrics.counting(one_not_applied)(two)).index == 7
    assert counts(metrics.proposals) == {"": 4}
    assert counts(metrics.refused) == {
        "invalid": 0, "forbidden": 0, "not_committed": 2, "not_applied": 1,
    }  # fmt: skip


def test_the_figures_of_a_standby_or_starting_voter_are_its_counters():
    names = [f.name for f in ConsensusMetrics().families(None)]
    assert names == [
        "colony_consensus_proposals_total",
        "colony_consensus_proposals_refused_total",
        "colony_consensus_apply_seconds",
        "colony_consensus_changes_lost_total",
    ]
