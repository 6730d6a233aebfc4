"""End to end: a real network partition cuts one Raft voter off from the other two, then heals.

Three hosts, each a Linux network namespace with its own nats-server (routed
to the other two) and one consensus voter, hang off a switch
(`colony.harness.netns`). Once they agree on a leader, one host is re-plugged
alone into the second switch and the cable between the switches is pulled:
the cut-off voter is either the leader (it must step down, and the two
others elect a new leader) or a follower (the leader carries on). Either way
the lone voter must refuse writes clearly and still answer stale reads, while
the majority keeps taking writes. With the cable back it must catch up by
itself, with no restart, to the very same database.

The hosts, their voters and the probes that ask them from inside:
`colony.harness.netns_voters`. Needs root; skipped otherwise.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from colony.harness.netns_voters import HOSTS, NetnsVoters, arrange, parallel
from colony.harness.processes import wait_for

pytestmark = pytest.mark.e2e

FORM, STEP_DOWN, ELECT, CATCH_UP = 30, 10, 15, 30
"""Seconds allowed to elect a first leader, for a cut-off leader to step down, for the
majority to have a leader after the cut, for the healed voter to catch up."""
NO_QUORUM = re.compile(r"no quorum|no leader")
LOST = re.compile(r"no quorum|no leader|the leader changed")
"""A proposal caught by the cut may also learn that the leader it was handed to is gone."""


@pytest.fixture
def network(split_network):
    # All on switch a to start with; the one to be cut off is moved to b once a leader is known.
    return split_network(HOSTS, [])


@pytest.fixture
def voters(network, tmp_path):
    group = NetnsVoters(network, tmp_path)
    group.start()  # whatever happens, `network` kills what it started
    return group


@pytest.mark.parametrize("cut_off", ["leader", "follower"])
def test_a_cut_off_voter_refuses_writes_serves_stale_reads_and_catches_up_on_healing(
    network, voters, cut_off
):
    timeline: dict[str, float] = {}
    started = time.monotonic()
    voters.await_leader(HOSTS, FORM, "all three voters to agree on a first leader")
    timeline["formed"] = time.monotonic() - started

    # Written before the cut, and applied everywhere (the lone voter must hold it).
    voters.put(HOSTS[0], "before", "the cut")
    wait_for(
        lambda: parallel(lambda h: voters.get(h, "before", stale=True), HOSTS) == ["the cut"] * 3,
        10,
        "every voter to hold what was written before the cut",
    )

    lone, leader, term = arrange(network, voters, cut_off)
    majority = [h for h in HOSTS if h != lone]
    assert network.side("b") == [lone] and network.side("a") == majority

    # Proposed the instant the cable is pulled, while the lone voter still takes itself for
    # the leader (or a follower of one): the entry may be appended, it must not commit.
    propose_at_the_cut = voters.proposer(lone, "at-the-cut", "refused")
    with ThreadPoolExecutor(1) as pool:
        cut = time.monotonic()
        network.partition()
        at_the_cut = pool.submit(propose_at_the_cut)
        if lone == leader:
            wait_for(
                lambda: (v := voters.status(lone)) and v["role"] != "leader",
                STEP_DOWN,
                f"the cut-off leader {lone} to step down",
                every=0.1,
            )
            timeline["stepped down"] = time.monotonic() - cut
        chief, chief_term = voters.await_leader(majority, ELECT, f"{majority} to agree on a leader")
        timeline["majority led"] = time.monotonic() - cut
        if lone != leader:  # its campaigns reach no one: the leader carries on, in its term
            assert (chief, chief_term) == (leader, term), "the cut-off follower disturbed the lead"
        else:
            assert chief_term > term
        wait_for(lambda: voters.routes(lone) == 0, 15, f"{lone}'s nats-server to close its routes")
        timeline["routes closed"] = time.monotonic() - cut
        answer = at_the_cut.result()
    assert answer.get("code") == 503 and LOST.search(answer["error"]), answer
    timeline["refused at the cut"] = answer["seconds"]

    # The lone voter, settled: writes and linearizable reads refused, saying why; stale
    # reads answer.
    asked = time.monotonic()
    errors = parallel(
        lambda args: voters.refused(lone, *args), [("put", "during", "refused"), ("get", "before")]
    )
    timeline["refused"] = time.monotonic() - asked
    for error in errors:
        assert NO_QUORUM.search(error), error
    assert voters.get(lone, "before", stale=True) == "the cut"

    # The majority: writes through either of its servers, read back through both.
    written = {f"after-{i}": f"value {i}" for i in range(4)}
    for i, (key, value) in enumerate(written.items()):
        voters.put(majority[i % 2], key, value)
    for key in [*written, "during", "at-the-cut"]:
        expected = written.get(key)  # and none of what the lone voter refused
        assert parallel(lambda h, k=key: voters.get(h, k), majority) == [expected] * 2, key
    assert voters.get(lone, "after-0", stale=True) is None  # it really is cut off
    view = voters.status(lone)
    assert view is not None and view["role"] != "leader" and not view["has_quorum"], view

    healed = time.monotonic()
    network.heal()
    wait_for(
        lambda: voters.get(lone, "after-3", stale=True) == "value 3",
        CATCH_UP,
        f"{lone} to catch up with the majority's writes",
        every=0.1,
    )
    timeline["caught up"] = time.monotonic() - healed
    after, after_term = voters.await_leader(HOSTS, ELECT, "all three voters to agree again")
    timeline["all led"] = time.monotonic() - healed
    keys = [*written, "during", "at-the-cut"]
    held = dict(zip(keys, parallel(lambda k: voters.get(lone, k, stale=True), keys), strict=True))
    assert held == {**written, "during": None, "at-the-cut": None}  # not what it refused
    assert voters.get(lone, "after-0") == "value 0"  # linearizable through it again

    def identical() -> dict | None:
        found = voters.digests()
        same = None not in found.values() and len({sha for _, sha in found.values()}) == 1
        return found if same else None

    wait_for(identical, CATCH_UP, "the three databases to be identical", every=0.2)
    voters.check_running()  # healed by Raft alone: every process is the one started
    timings = {k: round(v, 2) for k, v in timeline.items()}
    print(
        f"\n{cut_off} {lone} cut off; leaders (terms) {leader} ({term}) -> {chief} ({chief_term})"
        f" -> {after} ({after_term}); {lone}'s term while cut off {view['term']}; "
        f"seconds: {timings}; refused at the cut: {answer['error']}"
    )


def test_a_cut_off_manager_stops_acting_before_a_new_one_starts_and_its_epoch_is_refused(
    network, voters
):
    voters.await_leader(HOSTS, FORM, "all three voters to agree on a first leader")
    wait_for(lambda: voters.manager(HOSTS), FORM, "one acting manager")
    lone, _leader, _term = arrange(network, voters, "leader")  # the manager is the leader
    holder, epoch = wait_for(lambda: voters.manager(HOSTS), ELECT, "the manager after the move")
    assert holder == lone
    majority = [h for h in HOSTS if h != lone]
    heard_alone, heard_by_majority = voters.watch_manager(lone), voters.watch_manager(majority[0])
    stale_during = voters.proposer(lone, "stale-during", "refused", epoch)

    network.partition()
    chief, new_epoch = wait_for(lambda: voters.manager(majority), ELECT, "a majority manager")
    assert chief in majority and new_epoch > epoch
    during = stale_during()
    assert during.get("code") == 503 and LOST.search(during["error"]), during

    stopped = [e for e in heard_alone() if e["node"] == lone and not e["acting"]]
    started = [e for e in heard_by_majority() if e["node"] == chief and e["acting"]]
    assert stopped and stopped[0]["epoch"] == epoch, heard_alone()
    assert started and started[0]["epoch"] == new_epoch, heard_by_majority()
    # One kernel clock for every namespace: the wall times compare.
    gap = started[0]["ts"] - stopped[0]["ts"]
    assert gap > 0, f"{chief} acted {-gap:.3f} s before {lone} stopped"

    network.heal()
    wait_for(
        lambda: (v := voters.status(lone)) and v["role"] == "follower" and v["leader"] == chief,
        CATCH_UP,
        f"{lone} to rejoin as a follower of {chief}",
        every=0.2,
    )
    stale_after = answered(voters, lone, "stale-after", "refused", epoch)
    [refused] = stale_after["reply"]["outcomes"]
    assert not refused["ok"]
    assert refused["error"].startswith(f"stale epoch {epoch}: the manager lease is at epoch")
    current = answered(voters, lone, "current", "applied", new_epoch)
    assert current["reply"]["outcomes"][0]["ok"]  # through the old manager, at the new epoch
    for key in ("stale-during", "stale-after"):
        assert voters.get(chief, key) is None
    print(
        f"\nmanager {lone} (epoch {epoch}) cut off: it stopped acting {gap:.2f} s before "
        f"{chief} started (epoch {new_epoch})"
    )


def answered(voters, host: str, key: str, value: str, epoch: int) -> dict:
    """The voter's reply to a proposal, retried as a client does while it is refused with
    503: the cut-off voter campaigned alone at ever higher terms, and rejoining may cost
    the group an election (pysyncobj has no pre-vote)."""
    for attempt in range(10):
        # a proposer of its own each time (its log is named after the key)
        answer = voters.proposer(host, f"{key}-{attempt}" if attempt else key, value, epoch)()
        if "reply" in answer or answer.get("code") != 503:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"{host} kept refusing {key}: {answer}")
