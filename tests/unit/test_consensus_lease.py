"""The manager lease's decisions, pure: taken, renewed, counted down, expired, handed over
and fenced, on a clock the test moves (seconds as floats: each test runs in microseconds)."""

from __future__ import annotations

import logging

from pytest import approx

from colony.consensus.kinds.leases import FREE, LeaseState
from colony.consensus.lease import (
    Announce,
    LeaseTimers,
    ManagerLease,
    Note,
    RecordLeader,
    Release,
    Renew,
    Seen,
    Take,
    WaitUntil,
)
from colony.shared.messages import Outcome

TIMERS = LeaseTimers(ttl=1.0, renew=0.2, margin=0.1)
OK = Outcome(ok=True)


def granted(epoch: int) -> list[Outcome]:
    return [Outcome(ok=True, version=epoch)]


def held(holder: str, epoch: int, asked_term: int = 0) -> LeaseState:
    return LeaseState(holder, epoch, TIMERS.ttl, asked_term)


def leader(term: int, lease: LeaseState = FREE, renewed=None, arrived_by=0.0) -> Seen:
    return Seen(True, term, lease, renewed, arrived_by)


def manager(me: str, now: float, term: int = 3) -> ManagerLease:
    """`me`, leading `term`, granted the free lease at epoch 1 at `now`."""
    core = ManagerLease(me, TIMERS)
    record = core.look(now, leader(term))
    assert record == RecordLeader(term)
    assert core.committed(record, [OK], term) == []
    take = core.look(now, leader(term))
    assert take == Take(0, "the lease was free", term, now)
    [note] = core.committed(take, granted(1), term)
    assert (note.message, note.extra) == ("manager lease granted", {"epoch": 1, "why": take.why})
    return core


def test_a_new_leader_records_its_term_then_takes_the_free_lease_and_renews_it():
    core = manager("a", now=10.0)
    mine = leader(3, held("a", 1, asked_term=3))
    assert core.acting(10.0, mine) and core.valid_until == 11.0
    renew = core.look(10.2, mine)
    assert renew == Renew(epoch=1, term=3, asked=10.2)
    assert core.committed(renew, [OK], 3) == []
    assert core.valid_until == 11.2  # a ttl after it *asked*, not after the commit
    assert core.valid_for(10.5, mine) == approx(0.7)


def test_the_holder_acts_only_until_a_ttl_after_it_asked_and_only_with_its_own_epoch():
    core = manager("a", now=10.0)
    mine = leader(3, held("a", 1, asked_term=3))
    assert core.acting(10.999, mine)
    assert not core.acting(11.0, mine)  # ran out by its own clock: no renewal committed
    assert not core.acting(10.5, leader(3, held("b", 2)))  # a later grant applied here
    assert not core.acting(10.5, leader(3, held("a", 2)))  # even to itself: not its epoch
    assert not core.acting(10.5, Seen(False, 3, held("a", 1)))  # no longer the Raft leader
    assert core.valid_for(11.5, mine) == 0.0


def test_a_refused_renewal_stops_acting_at_once():
    core = manager("a", now=10.0)
    mine = leader(3, held("a", 1, asked_term=3))
    renew = core.look(10.2, mine)
    [note] = core.committed(renew, [Outcome(ok=False, error="stale epoch 1")], 3)
    assert (note.level, note.message) == (logging.WARNING, "lease renewal refused")
    assert note.extra == {"reason": "stale epoch 1"}
    assert core.epoch == 0 and not core.acting(10.3, mine)


def test_a_grant_refused_leaves_the_node_without_an_epoch():
    core = ManagerLease("a", TIMERS)
    core.committed(RecordLeader(3), [OK], 3)
    take = core.look(10.0, leader(3))
    [note] = core.committed(take, [Outcome(ok=False, error="the lease is held")], 3)
    assert note.message == "manager lease not granted" and core.epoch == 0


def test_another_holders_lease_expires_a_ttl_plus_the_margin_after_its_last_renewal_here():
    core = ManagerLease("b", TIMERS)
    core.committed(RecordLeader(4), [OK], 4)
    theirs = leader(4, held("a", 1, asked_term=4), renewed=10.0)
    assert core.look(10.5, theirs) is None  # more than a renew period to go: look later
    assert core.look(10.95, theirs) == WaitUntil(11.1)  # within one: wait for the moment
    assert core.look(11.099, theirs) == WaitUntil(11.1)
    expire = core.look(11.1, theirs)
    assert expire == Take(1, "no renewal from a for 1.1 s", 4, 11.1, expire=True)
    renewed_meanwhile = leader(4, held("a", 1, asked_term=4), renewed=11.05)
    assert core.look(11.1, renewed_meanwhile) is None


def test_a_renewal_asked_in_an_earlier_term_counts_down_from_its_arrival_not_its_apply():
    core = ManagerLease("b", TIMERS)
    core.committed(RecordLeader(7), [OK], 7)
    # Asked in term 6; applied here only once term 7's first entry committed (20.5), but
    # it had arrived by 20.0: the old holder stopped by 21.0, so expire at 21.1.
    late = leader(7, held("a", 3, asked_term=6), renewed=20.5, arrived_by=20.0)
    assert core.look(21.1, late).expire
    # Asked in this leader's own term: it may not have arrived before it applied.
    same_term = leader(7, held("a", 3, asked_term=7), renewed=20.5, arrived_by=20.0)
    assert core.look(21.1, same_term) is None
    assert core.look(21.45, same_term).at == approx(21.6)


def test_a_renewal_committed_in_a_later_term_is_not_counted():
    core = manager("a", now=10.0, term=3)
    mine = leader(3, held("a", 1, asked_term=3))
    renew = core.look(10.2, mine)
    [note] = core.committed(renew, [OK], term=4)  # it lost and won the lead meanwhile
    assert note.message == "lease entry committed in a later term: not counted"
    assert note.extra == {"term": 3}
    assert core.valid_until == 11.0  # as granted: not extended


def test_a_grant_committed_in_a_later_term_lapses_and_is_taken_afresh():
    core = ManagerLease("a", TIMERS)
    core.committed(RecordLeader(3), [OK], 3)
    take = core.look(10.0, leader(3))
    notes = core.committed(take, granted(1), term=4)
    assert [n.message for n in notes] == [
        "lease entry committed in a later term: not counted",
        "manager lease granted",
    ]
    mine = leader(4, held("a", 1, asked_term=3), renewed=10.1, arrived_by=10.1)
    assert core.epoch == 1 and not core.acting(10.1, mine)
    assert core.look(10.1, mine) == RecordLeader(4)  # the term moved on
    core.committed(RecordLeader(4), [OK], 4)
    assert core.look(10.5, mine) is None  # counts its own lease down like anyone's
    assert core.look(11.25, mine) == Take(1, "no renewal from a for 1.1 s", 4, 11.25, expire=True)


def test_a_leader_records_its_term_once_and_again_after_it_did_not_lead_for_a_look():
    core = manager("a", now=10.0, term=3)
    assert core.look(10.2, leader(3, held("a", 1, asked_term=3))) == Renew(1, 3, 10.2)
    assert core.look(10.4, Seen(False, 3, held("a", 1))) is None
    # Leading again: its first entry is recorded afresh (a barrier: harmless if repeated).
    assert core.look(10.6, leader(3, held("a", 1, asked_term=3))) == RecordLeader(3)


def test_a_handover_releases_the_lease_and_the_next_leader_takes_it_at_once():
    a = manager("a", now=10.0, term=3)
    mine = leader(3, held("a", 1, asked_term=3))
    assert a.release(10.3, mine, "more free resources", hold_off=2.0) == [
        Announce(False, 1, 0.0, "releasing: more free resources"),
        Release(1, "more free resources"),
    ]
    assert a.epoch == 0 and not a.acting(10.3, mine)
    # The release applied (the lease is free), and b leads term 4: it takes it at once,
    # 0.8 s before a's lease would have run out, with no countdown.
    released = LeaseState("", 1, 0.0)
    b = ManagerLease("b", TIMERS)
    b.committed(b.look(10.31, leader(4, released)), [OK], 4)
    assert b.look(10.31, leader(4, released)) == Take(1, "the lease was free", 4, 10.31)
    # a, still leading until the transfer completes, leaves it free during the hold-off.
    assert a.look(10.5, leader(3, released)) is None
    assert a.look(12.3, leader(3, released)) == Take(1, "the lease was free", 3, 12.3)


def test_releasing_a_lease_not_held_commits_nothing():
    core = ManagerLease("a", TIMERS)
    assert core.release(10.0, leader(3, held("b", 4)), "stopping", hold_off=0) == []
    late = manager("a", now=10.0)
    assert late.release(11.5, leader(3, held("a", 1)), "stopping", hold_off=0) == []  # ran out


def test_acting_is_announced_when_it_starts_each_second_while_it_lasts_and_when_it_stops():
    core = manager("a", now=10.0)
    mine = leader(3, held("a", 1, asked_term=3))
    assert core.watch(10.0, mine) == [Announce(True, 1, 1.0, "holds the manager lease")]
    assert core.watch(10.5, mine) == []
    core.committed(core.look(10.6, mine), [OK], 3)  # renewed: valid until 11.6
    [again] = core.watch(11.0, mine)
    assert again.acting and again.epoch == 1 and again.valid_for == approx(0.6)
    stopped = core.watch(11.6, mine)
    assert stopped == [
        Note(logging.WARNING, "stopped acting as manager", {"why": "lease ran out"}),
        Announce(False, 1, 0.0, "lease ran out"),
    ]
    assert core.watch(12.0, mine) == []  # said once


def test_losing_the_raft_leadership_stops_acting_at_once():
    core = manager("a", now=10.0)
    core.watch(10.0, leader(3, held("a", 1, asked_term=3)))
    [note, announce] = core.watch(10.1, Seen(False, 3, held("a", 1, asked_term=3)))
    assert note.extra == {"why": "lost the Raft leadership"} and not announce.acting


def test_a_release_is_announced_once_not_again_by_the_watch():
    core = manager("a", now=10.0)
    mine = leader(3, held("a", 1, asked_term=3))
    core.watch(10.0, mine)
    core.release(10.2, mine, "stopping", hold_off=0)
    assert core.watch(10.3, mine) == []


def test_the_holder_renews_every_renew_period_while_looking_more_often():
    timers = LeaseTimers(ttl=1.0, renew=0.5, margin=0.1, look=0.2)
    core = ManagerLease("a", timers)
    core.committed(core.look(10.0, leader(3)), [OK], 3)
    core.committed(core.look(10.0, leader(3)), granted(1), 3)
    mine = leader(3, held("a", 1, asked_term=3))
    assert core.look(10.2, mine) is None  # renewed (granted) 0.2 s ago: nothing to do
    assert core.look(10.35, mine) == WaitUntil(10.5)  # due before the next look
    renew = core.look(10.5, mine)
    assert renew == Renew(epoch=1, term=3, asked=10.5)
    core.committed(renew, [OK], 3)
    assert core.valid_until == 11.5
    assert core.look(10.7, mine) is None
    assert core.look(11.0, mine) == Renew(epoch=1, term=3, asked=11.0)
