"""The SWIM core, pure: single rules first, then whole groups on a simulated network."""

from __future__ import annotations

import random

import pytest

from colony.membership.state import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    Announce,
    Broadcast,
    Changed,
    Membership,
    Ping,
    PingReq,
    PushPull,
    Reply,
    Suspicion,
    Tell,
    Timing,
)
from colony.shared.messages import MemberUpdate, NodeMeta

TIMING = Timing()


def member(name: str, now: float = 0.0, seed: int = 1) -> Membership:
    return Membership(name, NodeMeta(nats_url=f"nats://{name}"), now, random.Random(seed))


def changes(instructions) -> list[tuple[str, str]]:
    return [(i.node, i.status) for i in instructions if isinstance(i, Changed)]


# --- single rules -------------------------------------------------------------------


def test_an_unknown_member_may_only_announce_itself():
    a = member("a")
    assert a.gossip_received(0, "x", [MemberUpdate("ghost", SUSPECT, 3)]) == []
    assert a.gossip_received(0, "x", [MemberUpdate("ghost", DEAD, 3)]) == []
    assert "ghost" not in a.members
    joined = a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0, NodeMeta(version="1"))])
    assert changes(joined) == [("b", ALIVE)]
    assert a.members["b"].meta.version == "1"


def test_higher_incarnation_wins_and_at_equal_incarnation_dead_beats_suspect_beats_alive():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 2)])
    assert a.gossip_received(1, "c", [MemberUpdate("b", SUSPECT, 1)]) == []  # stale
    assert changes(a.gossip_received(1, "c", [MemberUpdate("b", SUSPECT, 2)])) == [("b", SUSPECT)]
    assert a.gossip_received(1, "c", [MemberUpdate("b", ALIVE, 2)]) == []  # not a refutation
    assert changes(a.gossip_received(1, "c", [MemberUpdate("b", DEAD, 2)])) == [("b", DEAD)]
    assert changes(a.gossip_received(2, "b", [MemberUpdate("b", ALIVE, 3)])) == [("b", ALIVE)]


def test_a_death_declared_of_a_member_we_hold_alive_is_only_an_accusation_it_can_refute():
    # As a partition test saw it: the cut-off member's suspicion of a majority member ran
    # out just as the cable came back, and its "dead" reached the majority before any
    # word of the suspicion had; the majority held the member dead (and the manager moved
    # its instances) though it refuted 10 ms later.
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    out = a.gossip_received(1, "d", [MemberUpdate("b", DEAD, 0)])
    assert changes(out) == [("b", SUSPECT)] and a.members["b"].suspicion.accusers == ["d"]
    assert changes(a.gossip_received(1.01, "b", [MemberUpdate("b", ALIVE, 1)])) == [("b", ALIVE)]
    # Not refuted: our own suspicion timeout makes it dead.
    a.gossip_received(2, "d", [MemberUpdate("b", DEAD, 1)])
    assert a.members["b"].status == SUSPECT
    timeout = a.suspicion_timeout(a.members["b"].suspicion)
    assert changes(a.tick(2 + timeout)) == [("b", DEAD)]
    # A death of a member we suspect already is news: taken at once.
    a.gossip_received(3, "c", [MemberUpdate("c", ALIVE, 0)])
    a.gossip_received(3, "d", [MemberUpdate("c", SUSPECT, 0, by="d")])
    assert changes(a.gossip_received(3, "d", [MemberUpdate("c", DEAD, 0)])) == [("c", DEAD)]


def test_a_suspected_member_refutes_with_a_higher_incarnation():
    b = member("b")
    b.gossip_received(0, "c", [MemberUpdate("c", ALIVE, 0)])
    told = b.gossip_received(0, "a", [MemberUpdate("b", SUSPECT, 0, by="a")])
    assert b.incarnation == 1
    assert told == [Broadcast([MemberUpdate("b", ALIVE, 1, b.members["b"].meta)])]
    assert b.health == 1  # being suspected hints that we are slow
    [reply] = [i for i in b.ping_received(0, "a", []) if isinstance(i, Reply)]
    assert MemberUpdate("b", ALIVE, 1, b.members["b"].meta) in reply.updates


def test_nobody_else_can_say_a_member_left_and_left_is_final_for_its_incarnation():
    a = member("a")
    a.gossip_received(0, "x", [MemberUpdate("a", LEFT, 5)])
    assert a.members["a"].status == ALIVE
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    assert changes(a.gossip_received(1, "b", [MemberUpdate("b", LEFT, 1)])) == [("b", LEFT)]
    assert a.gossip_received(2, "c", [MemberUpdate("b", DEAD, 1)]) == []
    assert a.members["b"].status == LEFT


def test_metadata_changes_travel_with_a_new_incarnation_and_no_event():
    a, b = member("a"), member("b")
    b.gossip_received(0, "a", a.full_state())
    a.gossip_received(0, "b", b.full_state())
    news = a.update_meta(1, NodeMeta(roles=("voter",)))
    assert news == [] and a.incarnation == 1
    [ping] = [i for i in a.tick(0.1) if isinstance(i, Ping)]
    assert b.gossip_received(0.1, "a", ping.updates) == []
    assert b.members["a"].meta.roles == ("voter",)


def test_an_unanswered_probe_asks_others_then_suspects():
    a = member("a")
    for peer in "bcde":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    [ping] = [i for i in a.tick(0) if isinstance(i, Ping)]
    assert a.tick(TIMING.probe_timeout / 2) == []
    asked = [i for i in a.tick(TIMING.probe_timeout) if isinstance(i, PingReq)]
    assert len(asked) == TIMING.indirect
    assert {r.target for r in asked} == {ping.to} and ping.to not in {r.via for r in asked}
    later = a.tick(0.3) + a.tick(0.4) + a.tick(TIMING.period)  # ticks come every period / 4
    assert (ping.to, SUSPECT) in changes(later)


def test_a_late_tick_is_a_stall_that_blames_nobody_and_gives_helpers_their_time():
    a = member("a")
    for peer in "bcde":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    [ping] = [i for i in a.tick(0) if isinstance(i, Ping)]
    a.tick(0.15)
    asked = [i for i in a.tick(0.34) if isinstance(i, PingReq)]  # late, but no stall
    assert asked and all(r.timeout >= TIMING.probe_timeout for r in asked)
    assert changes(a.tick(0.5)) == []  # the period is over, the helpers' time is not
    assert (ping.to, SUSPECT) in changes(a.tick(0.55))
    assert changes(a.tick(5.0)) == [] and a.health > 0  # a stall: nobody judged


def test_a_member_that_left_stays_left_and_peers_cannot_speak_for_it():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    refuted = a.gossip_received(0, "b", [MemberUpdate("a", LEFT, 0)])  # b lies about a
    assert a.members["a"].status == ALIVE and a.incarnation == 1
    assert refuted == [Broadcast([MemberUpdate("a", ALIVE, 1, a.members["a"].meta)])]
    a.leave(1)
    assert a.update_meta(1.1, NodeMeta(version="2")) == [] and a.leave(1.2) == []
    assert a.members["a"].status == LEFT


def test_a_member_held_dead_that_pings_us_is_told_so_and_can_refute():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 3)])
    a.gossip_received(0, "c", [MemberUpdate("b", SUSPECT, 3, by="c")])
    a.gossip_received(0, "c", [MemberUpdate("b", DEAD, 3)])
    [reply] = [i for i in a.ping_received(1, "b", []) if isinstance(i, Reply)]
    assert MemberUpdate("b", DEAD, 3) in reply.updates


def test_an_indirect_ack_saves_the_target():
    a = member("a")
    for peer in "bcd":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    [ping] = [i for i in a.tick(0) if isinstance(i, Ping)]
    a.tick(TIMING.probe_timeout)
    a.ack_received(0.3, "c", ping.seq, [])  # relayed by a helper
    assert changes(a.tick(TIMING.period)) == []
    assert a.members[ping.to].status == ALIVE


def test_suspicion_shrinks_with_independent_accusations_not_with_relays():
    a = member("a")
    for peer in [*"bcdefghij", *(f"p{i}" for i in range(90))]:  # N = 100
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    lone = Suspicion(0.0, ["c"])
    confirmed = Suspicion(0.0, ["c", "d", "e", "f"])
    assert a.suspicion_timeout(confirmed) < a.suspicion_timeout(lone)
    assert a.suspicion_timeout(confirmed) == pytest.approx(
        TIMING.suspicion_min_mult * TIMING.period
    )
    assert a.suspicion_timeout(lone) == pytest.approx(
        TIMING.suspicion_max_mult * 2 * TIMING.period  # · log10(N)
    )
    a.gossip_received(0, "c", [MemberUpdate("b", SUSPECT, 0, by="c")])
    a.gossip_received(0, "d", [MemberUpdate("b", SUSPECT, 0, by="c")])  # d only passes it on
    assert a.members["b"].suspicion.confirmations == 0
    a.gossip_received(0, "e", [MemberUpdate("b", SUSPECT, 0, by="e")])  # e's own probe failed
    assert a.members["b"].suspicion.accusers == ["c", "e"]
    [ping] = [i for i in a.tick(0) if isinstance(i, Ping)]
    passed_on = [u for u in ping.updates if u.node == "b"]
    assert MemberUpdate("b", SUSPECT, 0, by="e") in passed_on


def test_updates_are_retransmitted_a_bounded_number_of_times():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    carried = 0
    for _ in range(50):
        [reply] = [i for i in a.ping_received(0, "b", []) if isinstance(i, Reply)]
        carried += sum(u.node == "b" for u in reply.updates)
    assert 1 <= carried <= TIMING.retransmit_mult * 2


def test_a_member_that_joins_mid_round_is_probed_within_that_round():
    a = member("a")
    peers = [f"p{i}" for i in range(50)]
    for peer in peers:
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    now, probed = 0.0, []

    def probe_once() -> None:
        nonlocal now
        while True:
            now += TIMING.period / 4
            pings = [i for i in a.tick(now) if isinstance(i, Ping)]
            if pings:
                probed.append(pings[0].to)
                a.ack_received(now, pings[0].to, pings[0].seq, [])
                return

    probe_once()  # a round of 50 is under way
    a.gossip_received(now, "new", [MemberUpdate("new", ALIVE, 0)])
    for _ in range(len(peers)):
        probe_once()
    assert "new" in probed  # not left unwatched until the next round (up to 50 periods)


def test_a_death_is_broadcast_when_the_suspicion_expires():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    a.gossip_received(0, "c", [MemberUpdate("b", SUSPECT, 0, by="c")])
    out = []
    for step in range(1, 200):
        out += a.tick(step * 0.1)
        if a.members["b"].status == DEAD:
            break
    assert Broadcast([MemberUpdate("b", DEAD, 0)]) in out
    assert changes(out)[-1] == ("b", DEAD)


def probe_fails(a: Membership, start: float, nacks: int) -> tuple[Ping, list[Ping], float]:
    """Tick `a` through one probe that nobody acks (`nacks` helpers nack it), up to
    the accusation; return that probe, the next one if it started, and the time."""
    now = start
    [ping] = [i for i in a.tick(now) if isinstance(i, Ping)]
    asked: list = []
    while not asked:
        now += 0.1
        asked = [i for i in a.tick(now) if isinstance(i, PingReq)]
    for _ in range(nacks):
        a.nack_received(ping.seq)
    after: list = []
    while a.members[ping.to].status == ALIVE:
        now += 0.1
        after = a.tick(now)
    return ping, [i for i in after if isinstance(i, Ping)], now


def test_lifeguard_a_member_whose_helpers_stay_silent_blames_itself_and_slows_down():
    a = member("a")
    for peer in "bcde":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    ping, following, now = probe_fails(a, 0.0, nacks=0)  # nobody answered: the fault is likely ours
    assert a.health == TIMING.indirect
    assert a.interval == pytest.approx(TIMING.period * (TIMING.indirect + 1))
    assert a.probe_timeout == pytest.approx(TIMING.probe_timeout * (TIMING.indirect + 1))
    assert a.members[ping.to].status == SUSPECT  # still accused: it did not answer
    [following] = following  # the next probe starts at once, and is answered
    a.ack_received(now, following.to, following.seq, [])
    assert a.health == TIMING.indirect - 1  # each success heals a step


def test_lifeguard_nacks_from_every_helper_put_the_fault_on_the_target():
    a = member("a")
    for peer in "bcde":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    ping, _, accused_at = probe_fails(a, 0.0, nacks=TIMING.indirect)
    assert accused_at >= TIMING.period  # not before the direct ping's own time is up
    assert a.health == 0
    assert a.members[ping.to].status == SUSPECT
    assert a.members[ping.to].suspicion.accusers == ["a"]


def test_a_member_whose_loop_stalled_accuses_nobody():
    a = member("a")
    for peer in "bcd":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    a.gossip_received(0, "c", [MemberUpdate("d", SUSPECT, 0, by="c")])
    [ping] = [i for i in a.tick(0.1) if isinstance(i, Ping)]
    after = a.tick(30.0)  # blocked for half a minute: acks and refutations sit unread
    assert changes(after) == [] and a.health == 1
    assert a.members[ping.to].status != DEAD and a.members["d"].status == SUSPECT
    a.gossip_received(30.01, "d", [MemberUpdate("d", ALIVE, 1)])  # read at last
    assert changes(a.tick(30.1) + a.tick(30.6)) == []


def test_an_announcement_is_answered_with_who_we_are_and_what_we_know_of_it():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 4)])
    a.gossip_received(0, "c", [MemberUpdate("b", SUSPECT, 4, by="c")])
    a.gossip_received(0, "c", [MemberUpdate("b", DEAD, 4)])
    [tell] = [
        i for i in a.announce_received(1, "b", [MemberUpdate("b", ALIVE, 0)]) if isinstance(i, Tell)
    ]
    assert tell.to == "b"
    assert tell.updates == [a.full_state()[0], MemberUpdate("b", DEAD, 4)]
    b = member("b")  # its past life died at incarnation 4, this one starts at 0
    b.gossip_received(1, "a", tell.updates)
    assert b.incarnation == 5 and not b.lonely


def test_a_restarted_member_refutes_even_its_past_lifes_leave():
    b = member("b")
    refuted = b.gossip_received(0, "a", [MemberUpdate("b", LEFT, 2)])
    assert b.incarnation == 3 and b.members["b"].status == ALIVE
    assert refuted == [Broadcast([MemberUpdate("b", ALIVE, 3, b.members["b"].meta)])]


def test_a_member_held_dead_that_announces_itself_is_alive_at_once_at_a_new_incarnation():
    a = member("a")
    for peer in "bcd":
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    for held, status in (("b", DEAD), ("c", LEFT), ("d", SUSPECT)):
        a.gossip_received(0, "x", [MemberUpdate(held, ALIVE, 4)])
        a.gossip_received(0, "x", [MemberUpdate(held, status, 4, by="a")])
        fresh = NodeMeta(version="2")
        out = a.announce_received(1, held, [MemberUpdate(held, ALIVE, 0, fresh)])  # restarted
        assert changes(out) == [(held, ALIVE)]  # the announcement is its proof of life
        assert (a.members[held].incarnation, a.members[held].meta) == (5, fresh)
    [ping] = [i for i in a.tick(2) if isinstance(i, Ping)]
    spread = {u.node: u.incarnation for u in ping.updates if u.status == ALIVE}
    assert all(spread.get(n) == 5 for n in "bcd" if n != ping.to)  # and it spreads


def test_a_restarted_member_announces_until_another_member_holds_it_alive_at_its_incarnation():
    b = member("b")
    [ping] = b.told(0, "c", [MemberUpdate("c", ALIVE, 0)])  # c restarted with it, was faster
    b.ack_received(0, "c", ping.seq, [])
    assert not b.lonely
    [announced] = [i for i in b.tick(0) if isinstance(i, Announce)]  # still: c proves nothing
    assert announced.updates == [MemberUpdate("b", ALIVE, 0, b.members["b"].meta)]
    assert not b.announcing  # once: the members that hold it dead take it alive from that
    b.told(0.2, "a", [MemberUpdate("b", DEAD, 3)])  # its past life, as a held it
    assert b.incarnation == 4 and b.announcing  # c knowing it proves nothing to a
    b.told(0.3, "c", [MemberUpdate("b", ALIVE, 3)])  # an older life going round
    assert b.announcing
    b.told(0.4, "a", [MemberUpdate("b", ALIVE, 4)])  # a holds this life alive
    assert not b.announcing
    b.update_meta(0.5, NodeMeta(version="2"))  # new metadata is no new life to announce
    assert not b.announcing


def test_announcements_go_each_period_while_alone_then_a_few_after_outbidding_a_past_life():
    b, now = member("b"), 0.0

    def announcements(periods: int) -> int:
        nonlocal now
        made = 0
        for _ in range(periods * 4):
            now += TIMING.period / 4
            out = b.tick(now)
            made += sum(isinstance(i, Announce) for i in out)
            for ping in [i for i in out if isinstance(i, Ping)]:
                b.ack_received(now, ping.to, ping.seq, [])  # c answers, but never mentions b
        return made

    assert announcements(4) == 4  # alone: one per period
    [ping] = b.told(now, "c", [MemberUpdate("c", ALIVE, 0)])
    b.ack_received(now, "c", ping.seq, [])
    assert announcements(10) == 0  # a group forming at once must not drown in them
    b.told(now, "a", [MemberUpdate("b", DEAD, 7)])  # a past life to outbid: a few
    assert announcements(1) == 0  # the refutation itself is news: it goes first
    assert announcements(10) == TIMING.announce_unseen


def test_a_joiner_pulls_again_while_push_pulls_teach_it_members():
    b, now = member("b"), 0.0
    [ping] = b.told(now, "c", [MemberUpdate("c", ALIVE, 0)])  # restarted with it
    b.ack_received(now, "c", ping.seq, [])

    def next_pull() -> PushPull:
        nonlocal now
        while True:
            now += TIMING.period / 4
            pulls = [i for i in b.tick(now) if isinstance(i, PushPull)]
            if pulls:
                return pulls[0]

    first = next_pull()  # at once, with the only peer it knows: c knows little
    b.gossip_received(now, first.to, [MemberUpdate("c", ALIVE, 0), MemberUpdate("d", ALIVE, 0)])
    started = now
    second = next_pull()
    assert now - started <= TIMING.period  # it taught b of d: again, soon
    everyone = [MemberUpdate(n, ALIVE, 0) for n in "acdefg"]
    b.gossip_received(now, second.to, everyone)
    assert sorted(b.members) == ["a", "b", "c", "d", "e", "f", "g"]
    next_pull()
    b.gossip_received(now, "e", everyone)  # nothing new: back to the usual pace
    started = now
    next_pull()
    assert now - started >= TIMING.push_pull_every


def test_a_newcomer_is_admitted_only_once_it_answers_our_ping():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    out = a.told(0, "b", [MemberUpdate("c", ALIVE, 2, NodeMeta(version="c")), *[]])
    [ping] = [i for i in out if isinstance(i, Ping)]
    assert ping.to == "c" and [u.node for u in ping.updates] == ["a"]  # just who we are
    assert "c" not in a.members and changes(out) == []
    assert "c" not in a.live_peers()  # not probed, not gossiped, not counted yet
    joined = a.ack_received(0.1, "c", ping.seq, [])
    assert changes(joined) == [("c", ALIVE)]
    assert a.members["c"].incarnation == 2 and a.members["c"].meta.version == "c"
    a.tick(1)  # a new tick, a new budget of pings to candidates
    [ping] = [i for i in a.told(1, "b", [MemberUpdate("ghost", ALIVE, 0)]) if isinstance(i, Ping)]
    later = a.tick(1.1) + a.tick(1 + TIMING.verify_wait)
    assert "ghost" not in a.members and "ghost" not in a.candidates  # silent: forgotten
    assert not [i for i in later if isinstance(i, Broadcast | Changed) and "ghost" in str(i)]
    a.tick(5)
    [ping] = [i for i in a.told(5, "b", [MemberUpdate("nobody", ALIVE, 0)]) if isinstance(i, Ping)]
    a.unanswerable(ping.seq)  # nothing listens on its subject: forgotten at once
    assert "nobody" not in a.candidates


def test_a_member_that_pings_us_unknown_is_checked_and_admitted_as_it_is():
    a, c = member("a"), member("c")
    c.update_meta(0, NodeMeta(version="c2"))  # c is at incarnation 1, with metadata
    c.gossip_received(0, "a", [MemberUpdate("a", ALIVE, 0)])  # c knows a, a not c
    out = a.ping_received(1, "c", [])  # c probes a: a checks c in turn
    [check] = [i for i in out if isinstance(i, Ping)]
    assert check.to == "c" and "c" not in a.members
    [reply] = [i for i in c.ping_received(1, "a", check.updates) if isinstance(i, Reply)]
    assert changes(a.ack_received(1.1, "c", check.seq, reply.updates)) == [("c", ALIVE)]
    assert (a.members["c"].incarnation, a.members["c"].meta.version) == (1, "c2")


def test_a_flood_of_invented_names_never_dilutes_the_probe_round_or_fills_the_table():
    a = member("a")
    real = ["b", "c", "d"]
    for peer in real:
        a.gossip_received(0, peer, [MemberUpdate(peer, ALIVE, 0)])
    now, pinged, probed = 0.0, 0, []
    for i in range(3000):  # announcements from names that nobody answers for
        fake = f"fake-{i}"
        out = a.announce_received(now, fake, [MemberUpdate(fake, ALIVE, 0)])
        pinged += sum(isinstance(x, Ping) for x in out)
    assert pinged <= TIMING.verify_per_tick  # the flood costs a bounded ping rate
    assert len(a.candidates) <= TIMING.max_candidates
    assert sorted(a.members) == ["a", *real]
    for _ in range(8 * 4):  # 8 periods, each probe answered
        now += TIMING.period / 4
        out = a.tick(now)
        for fake in [x for x in out if isinstance(x, Ping) and x.to.startswith("fake")]:
            pinged += 1
            a.unanswerable(fake.seq)  # nobody listens on its subject
        for p in [x for x in out if isinstance(x, Ping) and not x.to.startswith("fake")]:
            probed.append(p.to)
            a.ack_received(now, p.to, p.seq, [])
    assert sorted(a.members) == ["a", *real] and not a.candidates  # fakes forgotten
    assert pinged <= TIMING.max_candidates
    assert all(probed.count(n) >= 2 for n in real)  # each real member probed every round


def test_one_sender_names_a_few_newcomers_per_period_and_the_table_is_bounded():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    a.told(0, "b", [MemberUpdate(f"n{i}", ALIVE, 0) for i in range(20)])
    assert len(a.candidates) == TIMING.new_per_sender
    a.told(0, "b", [MemberUpdate(f"n{i}", ALIVE, 0) for i in range(20, 40)])
    assert len(a.candidates) == TIMING.new_per_sender  # this period's share is used up
    a.tick(TIMING.period)  # a period later, a few more
    a.told(TIMING.period, "b", [MemberUpdate(f"n{i}", ALIVE, 0) for i in range(20, 40)])
    assert len(a.candidates) == 2 * TIMING.new_per_sender and "n23" in a.candidates
    small = Membership("a", NodeMeta(), 0, random.Random(1), TIMING, max_members=5)
    small.gossip_received(0, "b", [MemberUpdate(f"n{i}", ALIVE, 0) for i in range(20)])
    small.told(0, "b", [MemberUpdate(f"m{i}", ALIVE, 0) for i in range(20)])
    assert len(small.members) == 5 and not small.candidates


def test_ids_that_are_not_subject_tokens_never_enter_the_table():
    a = member("a")
    a.gossip_received(0, "b", [MemberUpdate("b", ALIVE, 0)])
    evil = ["evil.node.>", "*", "a b", "", "x" * 65]
    a.gossip_received(0, "b", [MemberUpdate(n, ALIVE, 0) for n in evil])
    a.told(0, "b", [MemberUpdate(n, ALIVE, 0) for n in evil])
    for n in evil:
        a.announce_received(0, n, [MemberUpdate(n, ALIVE, 0)])
    a.gossip_received(0, "evil.node.>", [MemberUpdate("c", ALIVE, 0)])  # a bad sender
    a.told(0, "b", [MemberUpdate("b", SUSPECT, 0, by="evil.node.>")])  # a bad accuser
    assert sorted(a.members) == ["a", "b"] and not a.candidates
    assert a.members["b"].status == ALIVE


# --- whole groups on a simulated network -------------------------------------------


class Network:
    """Runs members in simulated time; delivers instructions instantly unless cut."""

    def __init__(self, names: list[str], step: float = 0.05) -> None:
        self.step = step
        self.now = 0.0
        self.members = {n: member(n, seed=i) for i, n in enumerate(names)}
        self.down: set[str] = set()
        self.paused: dict[str, list] = {}
        """Members whose loop is blocked: what reaches them waits, nothing is answered."""
        self.cut: set[frozenset[str]] = set()
        self.events: dict[str, list[Changed]] = {n: [] for n in names}
        for name in names:  # each joins as the service does: by announcing itself
            self.announce(name)

    def reaches(self, a: str, b: str) -> bool:
        return b not in self.down and b not in self.paused and frozenset((a, b)) not in self.cut

    def pause(self, name: str) -> None:
        self.paused[name] = []

    def resume(self, name: str) -> None:
        """The blocked loop runs again: it handles what queued up meanwhile."""
        m = self.members[name]
        for sender, updates in self.paused.pop(name):
            self._deliver(m, m.told(self.now, sender, updates))

    def announce(self, name: str) -> None:
        """`name` announces itself to every member it reaches (how it joins)."""
        announcer = self.members[name]
        for other in self.members.values():
            if other.me != name and self.reaches(name, other.me):
                heard = other.announce_received(self.now, name, announcer.full_state())
                self._deliver(other, heard)

    def partition(self, left: set[str], right: set[str]) -> None:
        self.cut = {frozenset((a, b)) for a in left for b in right}

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.step)):
            self.now += self.step
            for name, m in list(self.members.items()):
                if name not in self.down and name not in self.paused:
                    self._deliver(m, m.tick(self.now))

    def settle(self) -> None:
        """Run until every member knows every other member as alive."""
        names = list(self.members)
        self.run_until(lambda: all(everyone_sees(self, n, ALIVE, names) for n in names), 30)

    def run_until(self, condition, limit: float) -> float:
        started = self.now
        while not condition():
            if self.now - started > limit:
                raise AssertionError(f"not reached within {limit} simulated seconds")
            self.run(self.step)
        return self.now - started

    def view(self, of: str) -> dict[str, str]:
        return {n: m.status for n, m in self.members[of].members.items()}

    def _deliver(self, sender: Membership, instructions) -> None:
        for i in instructions:
            if isinstance(i, Changed):
                self.events[sender.me].append(i)
            elif isinstance(i, Ping) and i.to in self.paused:
                self.paused[i.to].append((sender.me, i.updates))
            elif isinstance(i, Ping) and self.reaches(sender.me, i.to):
                target = self.members[i.to]
                answer = target.ping_received(self.now, sender.me, i.updates)
                self._deliver(target, [x for x in answer if not isinstance(x, Reply)])
                [reply] = [x for x in answer if isinstance(x, Reply)]
                self._deliver(sender, sender.ack_received(self.now, i.to, i.seq, reply.updates))
            elif isinstance(i, PingReq) and self.reaches(sender.me, i.via):
                via = self.members[i.via]
                self._deliver(via, via.gossip_received(self.now, sender.me, i.updates))
                if self.reaches(i.via, i.target):
                    target = self.members[i.target]
                    answer = target.ping_received(self.now, i.via, [])
                    [reply] = [x for x in answer if isinstance(x, Reply)]
                    acked = sender.ack_received(self.now, i.via, i.seq, reply.updates)
                    self._deliver(sender, acked)
                else:
                    sender.nack_received(i.seq)
            elif isinstance(i, Tell):
                self._tell(sender.me, i.to, i.updates)
            elif isinstance(i, Announce):
                self.announce(sender.me)
            elif isinstance(i, Broadcast):
                for name in self.members:
                    if name != sender.me:
                        self._tell(sender.me, name, i.updates)
            elif isinstance(i, PushPull) and self.reaches(sender.me, i.to):
                other = self.members[i.to]
                theirs = other.full_state()
                self._deliver(other, other.told(self.now, sender.me, i.state))
                self._deliver(sender, sender.gossip_received(self.now, i.to, theirs))

    def _tell(self, sender: str, to: str, updates) -> None:
        if to in self.paused:
            self.paused[to].append((sender, updates))
        elif self.reaches(sender, to):
            other = self.members[to]
            self._deliver(other, other.told(self.now, sender, updates))


NAMES = [f"n{i}" for i in range(10)]


def everyone_sees(net: Network, node: str, status: str, among: list[str]) -> bool:
    return all(net.view(n).get(node) == status for n in among)


def test_a_group_converges_and_stays_quiet():
    net = Network(NAMES)
    net.run(10)
    for name in NAMES:
        assert net.view(name) == dict.fromkeys(NAMES, ALIVE)
    assert not any(e.status != ALIVE for events in net.events.values() for e in events)


def test_a_dead_member_is_declared_dead_by_every_other_member():
    net = Network(NAMES)
    net.settle()
    net.down.add("n3")
    others = [n for n in NAMES if n != "n3"]
    took = net.run_until(lambda: everyone_sees(net, "n3", DEAD, others), limit=30)
    assert took < 10
    assert all(
        [e.status for e in net.events[n] if e.node == "n3"][-2:] in ([SUSPECT, DEAD], [DEAD])
        for n in others
    )


def test_a_restarted_member_rejoins_with_a_higher_incarnation():
    net = Network(NAMES)
    net.settle()
    net.down.add("n3")
    net.run_until(lambda: everyone_sees(net, "n3", DEAD, NAMES[:3]), limit=30)
    dead_at = net.members["n0"].members["n3"].incarnation
    net.down.discard("n3")
    net.members["n3"] = member("n3", net.now, seed=99)  # lost its state
    net.announce("n3")
    net.run_until(lambda: everyone_sees(net, "n3", ALIVE, NAMES), limit=30)
    assert net.members["n0"].members["n3"].incarnation > dead_at


def test_a_leaving_member_is_left_everywhere_never_dead():
    net = Network(NAMES)
    net.settle()
    net._deliver(net.members["n5"], net.members["n5"].leave(net.now))
    net.run(1)  # it keeps gossiping for a moment before it goes
    net.down.add("n5")
    others = [n for n in NAMES if n != "n5"]
    net.run_until(lambda: everyone_sees(net, "n5", LEFT, others), limit=30)
    net.run(20)
    assert everyone_sees(net, "n5", LEFT, others)
    assert not any(e.node == "n5" and e.status == DEAD for n in others for e in net.events[n])


def test_a_partition_splits_the_views_and_heals_into_one():
    net = Network(NAMES)
    net.settle()
    left, right = set(NAMES[:5]), set(NAMES[5:])
    net.partition(left, right)
    net.run_until(
        lambda: (
            all(everyone_sees(net, r, DEAD, sorted(left)) for r in right)
            and all(everyone_sees(net, x, DEAD, sorted(right)) for x in left)
        ),
        limit=60,
    )
    net.cut.clear()
    net.run_until(lambda: all(everyone_sees(net, n, ALIVE, NAMES) for n in NAMES), limit=60)


def test_a_slow_member_is_suspected_but_refutes_and_never_dies():
    net = Network(NAMES)
    net.settle()
    suspected = set()
    for slow in NAMES:  # each in turn: its loop blocked for 2 s, it neither answers nor ticks
        net.pause(slow)
        net.run(2)
        net.resume(slow)
        net.run(3)
        assert all(net.view(n)[slow] == ALIVE for n in NAMES)
        if any(e.node == slow and e.status == SUSPECT for n in NAMES for e in net.events[n]):
            suspected.add(slow)
    assert len(suspected) >= len(NAMES) // 2  # probed while blocked: suspected, then refuted
    assert not any(e.status == DEAD for events in net.events.values() for e in events)
