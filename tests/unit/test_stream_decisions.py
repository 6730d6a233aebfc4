"""The change stream keeper's decisions: where the replicas may be, and what to do next;
and how it tries a failed step again (against a fake bus: the real one is in
tests/service/test_stream_placement.py)."""

from __future__ import annotations

from colony.consensus import stream as streammod
from colony.consensus.stream import (
    LEADERLESS_GRACE,
    MOVE_GRACE,
    RECREATE_GRACE,
    StreamKeeper,
    next_step,
    placement,
)
from colony.shared.bus import StreamError, StreamPeer, StreamPlacement
from colony.shared.messages import MembersReply, MemberView, NodeMeta

VOTERS = {"v1", "v2", "v3"}
NODES = {"v1", "v2", "v3", "s1", "s2"}
ON_VOTERS = placement(VOTERS, NODES)


def stream(leader: str | None, *peers: str, tags=ON_VOTERS, stale: tuple[str, ...] = ()):
    """A stream view: `leader` first, then `peers`, current unless listed in `stale`."""
    names = ([leader] if leader else []) + list(peers)
    return StreamPlacement(
        leader=leader,
        peers=tuple(StreamPeer(n, n not in stale) for n in names),
        replicas=3,
        tags=tags,
    )


def test_the_placement_excludes_every_known_node_but_the_voters():
    assert placement(VOTERS, NODES) == ("!node:s1", "!node:s2")
    assert placement(["N-1"], ["N-1", "Big-2"]) == ("!node:big-2",)  # tags have no case
    assert placement(VOTERS, VOTERS) == ()


def test_replicas_on_voters_with_the_placement_in_force_need_nothing():
    assert next_step(stream("v1", "v2", "v3"), VOTERS, NODES, 0) is None


def test_a_stream_placed_anywhere_is_placed_on_the_voters():
    step = next_step(stream("v1", "s1", "s2", tags=()), VOTERS, NODES, 0)
    assert step is not None and step.kind == "place"
    assert step.tags == ("!node:s1", "!node:s2")
    assert "['s1', 's2']" in step.reason


def test_a_replaced_voter_is_excluded_and_a_replica_on_an_unknown_server_too():
    # v3 was lost and s1 promoted: v3 is now a node that does not vote
    voters = {"v1", "v2", "s1"}
    step = next_step(stream("v1", "v2", "v3"), voters, NODES, 0)
    assert step is not None and step.tags == ("!node:s2", "!node:v3")
    # membership no longer lists x9, but it holds a replica
    step = next_step(stream("v1", "v2", "x9"), VOTERS, NODES, 0)
    assert step is not None and "!node:x9" in step.tags


def test_nothing_is_placed_while_a_move_is_under_way_or_without_a_membership_view():
    moving = stream("v1", "v2", "v3", "s1", tags=())
    assert next_step(moving, VOTERS, NODES, 0) is None
    assert next_step(stream("v1", "s1", "s2", tags=()), VOTERS, None, 0) is None


def test_a_leaderless_stream_loses_its_lost_non_voter_replicas_one_at_a_time():
    lost = stream(None, "v1", "s1", "s2", stale=("s1", "s2"))
    assert next_step(lost, VOTERS, NODES, LEADERLESS_GRACE - 0.5) is None  # not yet
    step = next_step(lost, VOTERS, NODES, LEADERLESS_GRACE)
    assert step is not None and (step.kind, step.peer) == ("remove", "s1")
    assert "no leader" in step.reason
    # once s1 is gone, s2 is next; even without a membership view
    step = next_step(stream(None, "v1", "s2", stale=("s2",)), VOTERS, None, 10)
    assert step is not None and (step.kind, step.peer) == ("remove", "s2")


def test_a_leaderless_stream_keeps_its_voters_replicas_and_its_current_ones():
    # two voters' servers lost: the voter keeper replaces them first, then they go
    assert next_step(stream(None, "v1", "v2", "v3", stale=("v2", "v3")), VOTERS, NODES, 60) is None
    # a non-voter that is current (the one left) is never removed
    assert next_step(stream(None, "s1", "v2", "v3", stale=("v2", "v3")), VOTERS, NODES, 60) is None


def test_a_placement_is_fixed_first_even_on_a_leaderless_stream():
    lost = stream(None, "v1", "s1", "s2", stale=("s1", "s2"), tags=())
    step = next_step(lost, VOTERS, NODES, 60)
    assert step is not None and step.kind == "place"


def test_a_single_replica_is_left_alone():
    single = StreamPlacement(leader="s1", peers=(StreamPeer("s1", True),), replicas=1, tags=())
    assert next_step(single, VOTERS, NODES, 60) is None


# A move under way when the stream leader's server died: x1 (a voter, replaced since by v1)
# was being moved off to v2, and x2 (the leader, a voter replaced since by v3) is lost too.
MID_MOVE = stream(None, "x2", "x1", "v1", "v2", stale=("x1", "x2", "v2"), tags=("!node:x1",))
KNOWN = NODES | {"x1", "x2"}


def test_a_failed_removal_waits_while_the_other_lost_replica_is_removed():
    step = next_step(MID_MOVE, VOTERS, KNOWN, LEADERLESS_GRACE)
    assert step is not None and (step.kind, step.peer, step.key) == ("remove", "x2", "remove x2")
    step = next_step(MID_MOVE, VOTERS, KNOWN, LEADERLESS_GRACE, waiting={"remove x2"})
    assert step is not None and (step.kind, step.peer) == ("remove", "x1")
    assert next_step(MID_MOVE, VOTERS, KNOWN, 10, waiting={"remove x1", "remove x2"}) is None


def test_a_refused_placement_waits_while_lost_replicas_are_removed():
    lost = stream(None, "v1", "s1", "s2", stale=("s1", "s2"), tags=())
    place = next_step(lost, VOTERS, NODES, 60)
    assert place is not None and place.key == "place !node:s1,!node:s2"
    step = next_step(lost, VOTERS, NODES, 60, waiting={place.key})
    assert step is not None and (step.kind, step.peer) == ("remove", "s1")
    # a placement with other tags (the voters changed since) is tried at once
    step = next_step(lost, VOTERS - {"v3"} | {"s2"}, NODES, 60, waiting={place.key})
    assert step is not None and step.kind == "place"


def test_a_stream_leaderless_for_long_is_recreated_on_the_voters_once_they_are_alive():
    step = next_step(MID_MOVE, VOTERS, KNOWN, RECREATE_GRACE, alive=VOTERS | {"s1"})
    assert step is not None and step.kind == "recreate"
    assert step.tags == ("!node:s1", "!node:s2", "!node:x1", "!node:x2")
    assert "v1, v2, v3" in step.reason and "no leader for 30 s" in step.reason
    # not before the grace, nor while a voter is not alive (its replica could not be placed),
    # nor without a membership view, nor while a failed re-creation waits: removals instead
    assert next_step(MID_MOVE, VOTERS, KNOWN, RECREATE_GRACE - 1, alive=VOTERS).kind == "remove"
    assert next_step(MID_MOVE, VOTERS, KNOWN, 60, alive={"v1", "v2", "s1"}).kind == "remove"
    assert next_step(MID_MOVE, VOTERS, None, 60, alive=VOTERS).kind == "remove"
    waiting = {step.key}
    assert next_step(MID_MOVE, VOTERS, KNOWN, 60, alive=VOTERS, waiting=waiting).kind == "remove"
    # a stream with its leader is never re-created
    assert next_step(stream("v1", "v2", "v3"), VOTERS, NODES, 60, alive=VOTERS) is None


def test_a_move_that_waits_on_a_lost_replica_has_it_removed():
    # x1 was replaced by v3: its replica moves to v3, which is current, but x1 is lost
    stalled = stream("v1", "v2", "x1", "v3", stale=("x1",), tags=placement(VOTERS, KNOWN))
    assert next_step(stalled, VOTERS, KNOWN, 0, moving_for=MOVE_GRACE - 1) is None
    step = next_step(stalled, VOTERS, KNOWN, 0, moving_for=MOVE_GRACE)
    assert step is not None and (step.kind, step.peer) == ("remove", "x1")
    assert "move" in step.reason
    # the new replica, catching up, is on a voter: never removed; nor a current old one
    catching_up = stream("v1", "v2", "x1", "v3", stale=("v3",), tags=placement(VOTERS, KNOWN))
    assert next_step(catching_up, VOTERS, KNOWN, 0, moving_for=60) is None


class FakeBus:
    """The stream stays as `view` (leaderless mid-move); a removal of a peer in `refuse`
    fails."""

    def __init__(self, refuse: set[str], view: StreamPlacement = MID_MOVE) -> None:
        self.refuse = refuse
        self.view = view
        self.removals: list[str] = []

    async def stream_placement(self, stream: str) -> StreamPlacement:
        return self.view

    async def request(self, subject, msg, timeout: float) -> MembersReply:
        members = [MemberView(n, "alive", 1, NodeMeta(), 0.0) for n in sorted(KNOWN)]
        return MembersReply(observer="v1", members=members)

    async def remove_stream_peer(self, stream: str, server: str) -> None:
        self.removals.append(server)
        if server in self.refuse:
            raise StreamError(f"removing {server}'s replica", 503, "peer remap failed")


async def test_the_keeper_tries_a_failed_removal_again_with_a_growing_backoff(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(streammod.time, "monotonic", lambda: now[0])
    bus = FakeBus(refuse={"x2", "x1"})
    keeper = StreamKeeper(bus, "v1", lambda: True, lambda: VOTERS)  # type: ignore[arg-type]

    async def look(at: float) -> None:
        now[0] = 100.0 + at
        assert await keeper.keep() is None  # every removal fails

    await look(0)  # leaderless from now
    for at in (LEADERLESS_GRACE, LEADERLESS_GRACE + 0.5, LEADERLESS_GRACE + 0.6):
        await look(at)
    # x2 refused, then x1 (the other lost one) at the next look, then both wait 1 s
    assert bus.removals == ["x2", "x1"]
    await look(LEADERLESS_GRACE + 1)
    await look(LEADERLESS_GRACE + 1.6)
    assert bus.removals == ["x2", "x1", "x2", "x1"]
    await look(LEADERLESS_GRACE + 2.5)  # each now waits 2 s
    assert len(bus.removals) == 4
    await look(LEADERLESS_GRACE + 3.1)
    assert bus.removals[-1] == "x2"

    await look(LEADERLESS_GRACE + 3.5)  # both wait: their counts are kept
    await look(LEADERLESS_GRACE + 3.7)
    assert bus.removals[-1] == "x1" and len(bus.removals) == 6

    bus.refuse.clear()  # once it works, the step is taken
    now[0] += 10
    assert (await keeper.keep()).peer in ("x1", "x2")


async def test_a_refused_removal_from_a_stalled_move_waits_its_backoff_too(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(streammod.time, "monotonic", lambda: now[0])
    stalled = stream("v1", "v2", "x1", "v3", stale=("x1",), tags=placement(VOTERS, KNOWN))
    bus = FakeBus(refuse={"x1"}, view=stalled)
    keeper = StreamKeeper(bus, "v1", lambda: True, lambda: VOTERS)  # type: ignore[arg-type]
    for at in (0, MOVE_GRACE, MOVE_GRACE + 0.5, MOVE_GRACE + 0.9, MOVE_GRACE + 1):
        now[0] = 100.0 + at
        await keeper.keep()
    assert bus.removals == ["x1", "x1"]  # at the grace, then after a 1 s backoff
