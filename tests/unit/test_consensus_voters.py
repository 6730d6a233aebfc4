"""The leader's decisions about the voters, pure of Raft: whom to drop, promote, hand over to.

Each is a function of the voters, the membership view, when the Raft link last heard
each voter, and the clock."""

from __future__ import annotations

from colony.consensus.voters import (
    Change,
    Streak,
    floor,
    lost_voters,
    promotion,
    score,
    steady,
    transfer,
    voter_change,
)
from colony.shared.messages import MemberView, NodeMeta, Resources

GiB = 2**30


NOW = 1000.0
"""The monotonic clock of every decision here."""
LONG_AGO = {n: NOW - 60 for n in "abcdefg"}
"""The Raft link heard nobody for a minute."""


def member(
    node: str, status: str = "alive", cpu: float = 1.0, memory: int = 4 * GiB, since: float = 60
):
    meta = NodeMeta(free=Resources(cpu=cpu, memory=memory))
    return MemberView(node=node, status=status, incarnation=1, meta=meta, since=since)


def view(*members: MemberView) -> dict[str, MemberView]:
    return {m.node: m for m in members}


def lost(me, voters, members, heard=LONG_AGO, now=NOW):
    return lost_voters(me, voters, members, heard, now, grace=3.0)


def test_a_dead_or_departed_voter_is_lost_but_a_suspect_one_is_not():
    members = view(member("a"), member("b", "suspect"), member("c", "dead"), member("d", "left"))
    assert lost("a", ["a", "b", "c"], members) == ["c"]
    assert lost("a", ["a", "b", "d"], members) == ["d"]
    assert lost("a", ["a", "b"], members) == []
    assert lost("c", ["c"], members) == []  # never itself


def test_a_death_counts_only_once_it_held_for_the_grace_and_the_link_is_as_silent():
    voters = ["a", "b", "c"]
    fresh = view(member("a"), member("b"), member("c", "dead", since=0.8))
    assert lost("a", voters, fresh) == []  # a verdict just in: it may be refuted
    held = view(member("a"), member("b"), member("c", "dead", since=3.0))
    assert lost("a", voters, held) == ["c"]
    # A verdict from the far side of a healed partition: this leader hears c all along.
    assert lost("a", voters, held, heard={"b": NOW, "c": NOW - 0.2}) == []
    assert lost("a", voters, held, heard={"c": NOW - 2.9}) == []
    assert lost("a", voters, held, heard={"c": NOW - 3.0}) == ["c"]
    assert lost("a", voters, held, heard={}) == ["c"]  # never heard since this leader started


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


def change(voters, members, target=3, heard=LONG_AGO, shunned=()):
    return voter_change("a", voters, members, heard, NOW, target, set(shunned), grace=3.0)


def test_the_floor_is_three_voters_or_the_targets_majority():
    assert [floor(t) for t in (1, 3, 5, 7)] == [3, 3, 3, 4]


def test_a_lost_voter_is_removed_only_while_three_voters_remain():
    five = view(*(member(n) for n in "abcd"), member("e", "dead"))
    assert change(list("abcde"), five, target=5) == Change("remove", "e", ANY_REASON)
    four = view(*(member(n) for n in "abc"), member("d", "dead"), member("e", "dead"))
    assert change(list("abcd"), four, target=5).node == "d"  # 4 -> 3
    three = view(member("a"), member("b"), member("c", "dead"), member("d", "dead"))
    assert change(list("abc"), three, target=5) is None  # 2 would stop at the next loss
    assert change(list("abc"), three, target=3) is None
    assert change(["a"], view(member("a")), target=1) is None


def test_at_the_floor_a_standby_is_added_before_the_lost_voter_goes():
    members = view(member("a"), member("b"), member("c", "dead"), member("d", cpu=2.0))
    added = change(list("abc"), members)
    assert (added.kind, added.node, added.replacing) == ("add", "d", "c")
    assert "replacing c" in added.reason
    removed = change(list("abcd"), members)  # the next look
    assert (removed.kind, removed.node) == ("remove", "c")
    assert change(list("abc"), members, shunned={"d"}) is None  # no standby ready: keep c


def test_a_returning_voter_is_added_back_once_membership_says_it_is_alive():
    members = view(*(member(n) for n in "abcd"), member("e", "dead"))
    assert change(list("abcd"), members, target=5) is None  # e is still down
    members = view(*(member(n) for n in "abcd"), member("e", since=0.1))
    back = change(list("abcd"), members, target=5)
    assert (back.kind, back.node) == ("add", "e") and "voters were 4 of 5" in back.reason
    assert change(list("abcde"), members, target=5) is None


def test_leadership_moves_only_after_the_same_preference_held_over_looks_apart():
    streak = steady(Streak(), "b", NOW)
    assert streak == Streak("b", (NOW,))
    assert steady(streak, "b", NOW + 1.0) == streak  # too soon after: does not count
    streak = steady(steady(streak, "b", NOW + 2.0), "b", NOW + 4.0)
    assert len(streak.looks) == 3
    assert steady(streak, "c", NOW + 6.0) == Streak("c", (NOW + 6.0,))  # another: start over
    assert steady(streak, None, NOW + 6.0) == Streak()  # one look content to stay: too


class _Any:
    def __eq__(self, other) -> bool:
        return isinstance(other, str)


ANY_REASON = _Any()
