"""The leader's decisions about the voters, pure of Raft: whom to drop, promote, hand over to."""

from __future__ import annotations

from colony.consensus.voters import lost_voter, promotion, score, transfer
from colony.shared.messages import MemberView, NodeMeta, Resources

GiB = 2**30


def member(node: str, status: str = "alive", cpu: float = 1.0, memory: int = 4 * GiB):
    meta = NodeMeta(free=Resources(cpu=cpu, memory=memory))
    return MemberView(node=node, status=status, incarnation=1, meta=meta, since=0.0)


def view(*members: MemberView) -> dict[str, MemberView]:
    return {m.node: m for m in members}


def test_a_dead_or_departed_voter_is_lost_but_a_suspect_one_is_not():
    members = view(member("a"), member("b", "suspect"), member("c", "dead"), member("d", "left"))
    assert lost_voter("a", ["a", "b", "c"], members) == "c"
    assert lost_voter("a", ["a", "b", "d"], members) == "d"
    assert lost_voter("a", ["a", "b"], members) is None
    assert lost_voter("c", ["c"], members) is None  # never itself


def test_the_alive_standby_with_the_most_free_resources_is_promoted():
    members = view(
        member("a"),
        member("b", cpu=2.0),
        member("c", cpu=8.0, memory=64 * GiB, status="suspect"),
        member("d", cpu=4.0),
        member("e", cpu=4.0, memory=8 * GiB),
    )
    assert promotion(["a", "b"], members, shunned=set()) == "e"
    assert promotion(["a", "b"], members, shunned={"e"}) == "d"
    assert promotion(["a", "b", "d", "e"], members, shunned=set()) is None


def test_leadership_moves_only_to_a_voter_with_clearly_more_free_resources():
    even = view(member("a"), member("b", cpu=1.1), member("c"))
    assert transfer("a", ["a", "b", "c"], even, margin=0.25) is None  # 10 % more: stay
    richer = view(member("a"), member("b", cpu=4.0, memory=16 * GiB), member("c"))
    target, reason = transfer("a", ["a", "b", "c"], richer, margin=0.25)
    assert target == "b" and "more free resources: b scores 1.00, a 0.25" in reason
    assert transfer("b", ["a", "b", "c"], richer, margin=0.25) is None  # it leads already
    dead = view(member("a"), member("b", "dead", cpu=4.0, memory=16 * GiB), member("c"))
    assert transfer("a", ["a", "b", "c"], dead, margin=0.25) is None
    assert transfer("a", ["a", "c"], richer, margin=0.25) is None  # b is not a voter


def test_a_score_is_the_mean_of_cpu_and_memory_relative_to_the_best_and_never_negative():
    best = Resources(cpu=4.0, memory=8 * GiB)
    assert score(Resources(cpu=2.0, memory=8 * GiB), best) == 0.75
    assert score(Resources(cpu=-1.0, memory=0), best) == 0.0  # over-committed
    assert score(Resources(), Resources()) == 0.0
