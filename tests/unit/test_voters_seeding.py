"""Whether a joining voter may seed from a replica snapshot or the leader compacts its log
first: the decision (keeper.may_seed, on the voters the log's removal entries name: read
from pysyncobj's own entries by keeper.membership_change) and the keeper carrying it out
(the JoinRequest's `seed`, the compaction skipped)."""

from __future__ import annotations

import pickle

from pysyncobj.node import Node
from pysyncobj.syncobj import _COMMAND_TYPE
from test_voters_keeper import SECRET, Cluster, Role, member, steps

from colony.consensus import keeper as keeping
from colony.consensus.voters import VoterKeeper
from colony.shared.signing import verify


def membership(change: str, node: str) -> bytes:
    """A log entry's command as pysyncobj's addNodeToCluster / removeNodeFromCluster
    write it."""
    return bytes([_COMMAND_TYPE.MEMBERSHIP]) + pickle.dumps([change, node, Node(node)])


REGULAR = bytes([_COMMAND_TYPE.REGULAR]) + b"\x00some batch"
NO_OP = bytes([_COMMAND_TYPE.NO_OP])


def test_the_membership_command_type_is_pysyncobjs():
    assert keeping.MEMBERSHIP == _COMMAND_TYPE.MEMBERSHIP
    assert keeping.membership_change(membership("rem", "c")) == ("rem", "c")
    assert keeping.membership_change(membership("add", "d")) == ("add", "d")
    assert keeping.membership_change(REGULAR) is None
    assert keeping.membership_change(NO_OP) is None
    assert keeping.membership_change(b"") is None
    assert keeping.membership_change(bytes([_COMMAND_TYPE.MEMBERSHIP]) + b"garbage") is None


def test_a_log_without_removals_of_todays_voters_may_be_replayed_after_a_seed():
    assert keeping.may_seed(frozenset(), "abcd")
    # A voter removed for good (replaced by another) makes no set of today's voters unsafe.
    assert keeping.may_seed({"x"}, "abcd")


def test_a_log_that_removes_one_of_todays_voters_is_compacted_instead():
    assert not keeping.may_seed({"b"}, "abc")
    # Nor the joining node itself, removed before and back now.
    assert not keeping.may_seed({"x", "e"}, ["a", "b", "c", "e"])


def keeper(cluster: Cluster, removed: set[str] | None) -> VoterKeeper:
    return VoterKeeper(
        cluster, cluster, Role(), 5, secret=SECRET, heard={},
        removed_in_log=None if removed is None else (lambda: removed),
    )  # fmt: skip


def joining(cluster: Cluster):
    [join] = [call[2] for call in cluster.calls if call[0] == "join"]
    return verify(SECRET, join)


async def test_a_safe_log_seeds_the_new_voter_without_compacting():
    cluster = Cluster(list("abcd"), {"b": "follower", "c": "follower", "e": "standby"})
    members = {n: member(n) for n in "abcde"}
    await keeper(cluster, {"x"}).keep(members)
    assert steps(cluster) == [("add", "e"), ("join", "e")]
    assert joining(cluster).seed


async def test_a_log_removing_a_voter_is_compacted_and_the_new_voter_not_seeded():
    cluster = Cluster(list("abcd"), {"b": "follower", "c": "follower", "e": "standby"})
    members = {n: member(n) for n in "abcde"}
    await keeper(cluster, {"b"}).keep(members)
    assert steps(cluster) == [("compact", "a"), ("add", "e"), ("join", "e")]
    assert not joining(cluster).seed


async def test_with_no_log_to_read_the_keeper_compacts_as_before():
    cluster = Cluster(list("abcd"), {"b": "follower", "c": "follower", "e": "standby"})
    await keeper(cluster, None).keep({n: member(n) for n in "abcde"})
    assert steps(cluster) == [("compact", "a"), ("add", "e"), ("join", "e")]
    assert not joining(cluster).seed
