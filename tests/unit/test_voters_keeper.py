"""The voter keeper carrying out its decisions, against a fake Raft replica and a fake bus:
what it asks of the nodes, in which order, signed how, and what it logs (the decisions
themselves: tests/unit/test_consensus_voters.py)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from colony.consensus.voters import VoterKeeper
from colony.shared.bus import NoResponders
from colony.shared.clock import FakeClock
from colony.shared.logs import JsonFormatter
from colony.shared.messages import (
    ConsensusStatus,
    JoinReply,
    MemberView,
    NodeMeta,
    Resources,
    RetireReply,
)
from colony.shared.signing import verify

SECRET = b"a-cluster-secret-for-the-keeper"
GiB = 2**30


def member(node: str, status: str = "alive", cpu: float = 1.0, since: float = 60.0):
    meta = NodeMeta(free=Resources(cpu=cpu, memory=4 * GiB))
    return MemberView(node=node, status=status, incarnation=1, meta=meta, since=since)


class Cluster:
    """The Raft group as the leader `a` sees it, and every other node's consensus service."""

    def __init__(self, voters: list[str], roles: dict[str, str]) -> None:
        self.me = "a"
        self.group = list(voters)
        self.roles = roles
        """node -> what its consensus status says: standby, follower, candidate."""
        self.calls: list[tuple] = []
        self.is_leader = True
        self.log_len = 500

    # --- the replica -----------------------------------------------------------------

    @property
    def voters(self) -> list[str]:
        return [self.me, *sorted(v for v in self.group if v != self.me)]

    async def add_voter(self, node: str) -> None:
        self.calls.append(("add", node))
        self.group.append(node)

    async def remove_voter(self, node: str) -> None:
        self.calls.append(("remove", node))
        self.group.remove(node)

    async def commit(self, entry: bytes, timeout: float):
        return 1, []

    def status(self) -> dict:
        return {"match_index": dict.fromkeys(self.group, 9), "commit_index": 9}

    async def transfer_leadership(self, node: str, patience: float) -> bool:
        self.calls.append(("transfer", node))
        return True

    def compact(self) -> None:
        self.calls.append(("compact", self.me))
        self.log_len = 2

    def log_length(self) -> int:
        return self.log_len

    # --- the bus ---------------------------------------------------------------------

    async def request(self, subject, msg, timeout: float):
        verb, node = subject.name.split(".")[-2:]
        if node not in self.roles:
            raise NoResponders(f"no service answers on {subject.name}")
        if verb == "status":
            return ConsensusStatus(
                node=node, role=self.roles[node], leader=None, term=7, commit_index=0,
                applied_index=0, has_quorum=False, voters=[],
            )  # fmt: skip
        self.calls.append((verb, node, msg))
        if verb == "retire":
            self.roles[node] = "standby"
            return RetireReply(node=node, retired=True)
        assert verb == "join"
        self.roles[node] = "follower"
        return JoinReply(node=node, started=True)


class Role:
    applied = SimpleNamespace(transferred_at=None)

    async def release(self, reason, also=(), hold_off=0.0) -> bool:
        return True


def keeper(
    cluster: Cluster, target: int, heard: dict[str, float] | None = None, clock=None
) -> VoterKeeper:
    fake = cluster  # the replica and the bus at once
    return VoterKeeper(fake, fake, Role(), target, secret=SECRET, heard=heard or {}, clock=clock)


def settled(cluster: Cluster, clock: FakeClock) -> VoterKeeper:
    """A keeper on a fake clock, leading for a minute already."""
    kept = keeper(cluster, target=3, clock=clock)
    assert kept.keeping.leading(clock.monotonic() - 60, leader=True)
    return kept


async def at(clock: FakeClock, seconds: float) -> None:
    await clock.advance(seconds - clock.monotonic())


def steps(cluster: Cluster) -> list[tuple[str, str]]:
    return [(verb, node) for verb, node, *_ in cluster.calls]


async def test_a_removed_voter_back_with_its_old_replica_retires_before_it_is_added_again():
    cluster = Cluster(list("abcd"), {"b": "follower", "c": "follower", "d": "follower"})
    cluster.roles["e"] = "candidate"  # restarted on its old journal, campaigning
    members = {n: member(n) for n in "abcde"}
    await keeper(cluster, target=5).keep(members)
    # Compacted first: e is sent a snapshot with today's voters, not the log's history.
    assert steps(cluster) == [("retire", "e"), ("compact", "a"), ("add", "e"), ("join", "e")]
    retire, join = cluster.calls[0][2], cluster.calls[3][2]
    assert verify(SECRET, retire).node == "e"  # signed, and addressed to e alone
    assert verify(SECRET, join).voters == list("abcde")


async def test_a_node_whose_consensus_does_not_answer_is_not_added_yet():
    cluster = Cluster(list("abcd"), {"b": "follower", "c": "follower", "d": "follower"})
    await keeper(cluster, target=5).keep({n: member(n) for n in "abcde"})
    assert cluster.calls == []  # e is alive to membership, but its consensus is not up


async def test_at_the_floor_the_replacement_joins_first_and_the_lost_voter_goes_right_after():
    cluster = Cluster(list("abc"), {"b": "follower", "d": "standby"})
    members = {"a": member("a"), "b": member("b"), "c": member("c", "dead"), "d": member("d")}
    await keeper(cluster, target=3).keep(members)
    assert steps(cluster) == [("compact", "a"), ("add", "d"), ("join", "d"), ("remove", "c")]
    assert cluster.voters == list("abd")


async def test_a_voter_the_leader_still_hears_is_not_removed_whatever_membership_says():
    cluster = Cluster(list("abcde"), dict.fromkeys("bcde", "follower"))
    members = {n: member(n) for n in "abcd"} | {"e": member("e", "dead", since=10)}
    clock = FakeClock()
    now = clock.monotonic()
    await keeper(cluster, target=5, heard={"e": now - 0.3}, clock=clock).keep(members)
    assert cluster.calls == []
    await keeper(cluster, target=5, heard={"e": now - 10}, clock=clock).keep(members)
    assert steps(cluster) == [("remove", "e")]


async def test_voter_changes_are_logged_with_the_voter_apart_from_the_writers_node(caplog):
    cluster = Cluster(list("abcde"), dict.fromkeys("bcd", "follower"))
    members = {n: member(n) for n in "abcd"} | {"e": member("e", "dead")}
    with caplog.at_level(logging.WARNING, logger="colony.consensus.voters"):
        await keeper(cluster, target=5).keep(members)
    [record] = [r for r in caplog.records if r.getMessage() == "voter removed"]
    line = json.loads(JsonFormatter({"service": "consensus", "node": "a"}).format(record))
    assert line["node"] == "a" and line["voter"] == "e"


async def test_leadership_moves_only_after_three_looks_two_seconds_apart_agree():
    clock = FakeClock()
    cluster = Cluster(list("abc"), {"b": "follower", "c": "follower"})
    members = {"a": member("a"), "b": member("b", cpu=8.0), "c": member("c")}
    kept = settled(cluster, clock)
    for second in (0.0, 1.0, 2.0):  # a look a second: only two count so far
        await at(clock, second)
        await kept.keep(members)
    assert cluster.calls == []
    await at(clock, 4.0)
    await kept.keep(members)
    assert steps(cluster) == [("transfer", "b")]


async def test_leadership_waits_for_its_target_to_hold_every_committed_entry():
    clock = FakeClock()
    cluster = Cluster(list("abc"), {"b": "follower", "c": "follower"})
    cluster.status = lambda: {"match_index": {"b": 8, "c": 9}, "commit_index": 9}
    members = {"a": member("a"), "b": member("b", cpu=8.0), "c": member("c")}
    kept = settled(cluster, clock)
    for second in (0.0, 2.0, 4.0, 6.0):
        await at(clock, second)
        await kept.keep(members)
    assert cluster.calls == []  # b lags: it would lose the election
    del cluster.status
    await kept.keep(members)  # the streak held meanwhile
    assert steps(cluster) == [("transfer", "b")]


@pytest.mark.parametrize("spoofed", [{"c": 8.0}, {}])
async def test_one_odd_sample_between_looks_does_not_move_leadership(spoofed):
    clock = FakeClock()
    cluster = Cluster(list("abc"), {"b": "follower", "c": "follower"})
    rich = {"a": member("a"), "b": member("b", cpu=8.0), "c": member("c")}
    odd = {"a": member("a"), "b": member("b")} | {
        n: member(n, cpu=cpu) for n, cpu in ({"c": 1.0} | spoofed).items()
    }
    kept = settled(cluster, clock)
    for second, members in [(0, rich), (2, rich), (3, odd), (4, rich), (6, rich)]:
        await at(clock, second)
        await kept.keep(members)
    assert cluster.calls == []  # the odd look broke the streak: only two since
