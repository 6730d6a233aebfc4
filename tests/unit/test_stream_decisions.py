"""The change stream keeper's decisions: where the replicas may be, and what to do next."""

from __future__ import annotations

from colony.consensus.stream import LEADERLESS_GRACE, next_step, placement
from colony.shared.bus import StreamPeer, StreamPlacement

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
