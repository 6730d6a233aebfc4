"""The leader's decisions about the voters, pure of Raft: whom to drop, promote, hand over to.

Each is a function of the voters, the membership view, when the Raft link last heard
each voter, and the time (a number the test picks: no clock is read)."""

from __future__ import annotations

from colony.consensus.keeper import (
    NOT_READY_FOR,
    SETTLE,
    Change,
    Keeping,
    Preference,
    Streak,
    Transfer,
    floor,
    lost_voters,
    promotion,
    score,
    steady,
    strays,
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


def test_alive_non_voters_are_asked_whether_they_still_run_a_replica():
    members = view(member("a"), member("b"), member("c", "dead"), member("d"), member("e"))
    assert strays(["a", "b"], members) == ["d", "e"]


# --- the keeper's memory between looks ------------------------------------------------

RICH_B = view(member("a"), member("b", cpu=4.0, memory=16 * GiB), member("c"))
ALL_CAUGHT_UP = {"a", "b", "c"}


def settled(hold: float = 60.0) -> Keeping:
    """The keeper of leader `a`, leading since NOW - 60 (settled in the lead)."""
    keeping = Keeping("a", target=3, preference=Preference(margin=0.25, hold=hold))
    assert keeping.leading(NOW - 60, leader=True)
    return keeping


def prefer(
    keeping: Keeping, at: float, transferred_at=None, caught_up=ALL_CAUGHT_UP, members=RICH_B
):
    return keeping.prefer(NOW + at, list("abc"), members, transferred_at, caught_up)


def test_a_node_passed_over_is_not_promoted_until_its_time_is_up():
    keeping = Keeping("a", target=3)
    members = view(member("a"), member("b"), member("c", "dead"), member("d", cpu=2.0), member("e"))
    assert keeping.change(NOW, list("abc"), members, LONG_AGO).node == "d"
    keeping.pass_over("d", NOW, NOT_READY_FOR)  # it did not come to stand by
    assert keeping.change(NOW + 1, list("abc"), members, LONG_AGO).node == "e"
    assert keeping.change(NOW + NOT_READY_FOR, list("abc"), members, LONG_AGO).node == "d"


def test_leadership_moves_after_three_steady_looks_two_seconds_apart():
    keeping = settled()
    assert [prefer(keeping, at) for at in (0.0, 1.0, 2.0, 3.9)] == [None] * 4  # 3 count
    handover = prefer(keeping, 4.0)
    assert isinstance(handover, Transfer) and handover.target == "b"
    assert "b scores 1.00, a 0.25" in handover.reason
    assert keeping.streak == Streak()  # judged afresh after a transfer


def test_leadership_is_held_after_any_transfer_for_the_hold():
    keeping = settled(hold=60.0)
    last = NOW - 55.0  # a transfer applied here 55 s before the first look
    assert [prefer(keeping, at, transferred_at=last) for at in (0, 2, 4)] == [None] * 3
    assert prefer(keeping, 4.9, transferred_at=last) is None
    assert prefer(keeping, 5.0, transferred_at=last).target == "b"  # the streak held meanwhile


def test_a_new_leader_settles_before_it_hands_over():
    keeping = Keeping("a", target=3)
    assert keeping.leading(NOW, leader=True)
    assert [prefer(keeping, at) for at in (0, 2, 4, SETTLE - 0.1)] == [None] * 4
    assert prefer(keeping, SETTLE).target == "b"


def test_leadership_waits_until_its_target_holds_every_committed_entry():
    keeping = settled()
    assert [prefer(keeping, at, caught_up={"a", "c"}) for at in (0, 2, 4, 6)] == [None] * 4
    assert prefer(keeping, 7).target == "b"


def test_following_or_a_change_of_the_voters_starts_the_judgement_over():
    keeping = settled()
    prefer(keeping, 0)
    prefer(keeping, 2)
    assert not keeping.leading(NOW + 3, leader=False)
    assert keeping.leading(NOW + 3.5, leader=True)
    assert keeping.streak == Streak() and keeping.leading_since == NOW + 3.5
    keeping = settled()
    prefer(keeping, 0)
    prefer(keeping, 2)
    members = RICH_B | view(member("c", "dead"), member("d"))
    assert keeping.change(NOW + 3, list("abc"), members, LONG_AGO).kind == "add"
    assert keeping.streak == Streak()
    assert prefer(keeping, 4) is None  # one look of a new streak


class _Any:
    def __eq__(self, other) -> bool:
        return isinstance(other, str)


ANY_REASON = _Any()
