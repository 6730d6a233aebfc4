"""End to end, in a real `colony up --nodes 5` cluster (3 voters, 2 standing by):
one manager at a time, lost voters replaced, leadership drawn to free resources.

The story of one cluster, step by step: kill -9 the manager's node (a new
manager acts at a higher epoch, the lost voter is replaced, acknowledged
writes survive); kill a second voter's node (replaced again: three voters,
the three nodes left); raise one voter's declared capacity (leadership and
the manager move to it, once, and stay, however the capacities flap after);
bring the killed nodes back (they stand by: someone replaced them).
The cluster is changed through the real CLI (`colony kv`, `colony capacity`,
`colony up`) and watched through the cluster client (`colony.shared.cluster`) and
`colony status`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from _cli import colony, on_cluster, status, up

from colony.cli.local.ports import free_base_port
from colony.harness.processes import wait_for
from colony.shared import subjects
from colony.shared.bus import BusError, connect
from colony.shared.cluster import Manager, Statuses
from colony.shared.config import NatsSettings
from colony.shared.messages import Change, decode
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

REPLACED = 60
"""Seconds for membership to declare a killed node dead and the leader to promote another."""
FLAPPING = 15
"""Seconds the declared capacities flap after leadership moved: it must not move again."""


def kill_node(state: Path, node_id: str) -> None:
    next(n for n in StateDir(state).nodes() if n.read_id() == node_id).crash()


async def change_stream(url: str) -> list[Change] | None:
    """Every change the Raft leaders relayed to the change stream, in order; None while
    the stream cannot answer (its replicas on the killed nodes are still catching up)."""
    bus = await connect(NatsSettings(servers=[url]), "test-changes", reconnect=False)
    try:
        state = await bus.stream_state(subjects.CHANGES_STREAM)
        found = []
        for seq in range(1, state.last_seq + 1):
            stored = await bus.stored(subjects.CHANGES_STREAM, seq)
            if stored is None:
                return None  # not on this replica yet
            found.append(decode(stored.data, Change))
        return found
    except BusError:
        return None
    finally:
        await bus.close()


def relayed_up_to(url: str, epoch: int) -> list[Change] | None:
    """The change stream once it holds the grant at `epoch` (the relay may be behind)."""
    changes = asyncio.run(change_stream(url))
    grants = [
        c.version for c in changes or () if c.kind == "lease" and c.detail["event"] == "granted"
    ]
    return changes if epoch in grants else None


def names(state: Path) -> dict[str, str]:
    return {n.read_id(): n.name for n in StateDir(state).nodes()}


def settled(
    state: Path, without: set[str], timeout: float, what: str, leader: str | None = None
) -> Manager:
    """The manager once it acts at the leader (`leader`, if given) of 3 connected,
    caught-up voters, none of `without`."""

    def found(statuses: Statuses) -> Manager | None:
        top, chief = statuses.settled(3), statuses.manager()
        if not top or not chief or chief.node != top.node or set(top.voters) & without:
            return None
        return chief if leader is None or top.node == leader else None

    return on_cluster(state, lambda c: c.until(found, timeout, what))


def group_of(manager: Manager) -> list[str]:
    return [v.node for v in manager.status.voters]


def test_managers_fail_over_voters_are_replaced_and_leadership_follows_capacity(tmp_path):
    state = tmp_path / "state"
    up(state, free_base_port(5), nodes=5)
    try:
        story(state)
    finally:
        colony("down", state=state, check=False)


def story(state: Path) -> None:
    first = settled(state, set(), 30, "first acting manager")
    for i in range(10):
        assert "version 1" in colony("kv", "put", f"k{i}", str(i), state=state).stdout

    # 1. The manager's node dies: a new manager, at a higher epoch, and a new voter.
    killed, killed_order = {first.node}, [first.node]
    kill_node(state, first.node)
    cut = time.monotonic()
    second = on_cluster(state, lambda c: c.wait_manager(30, above_epoch=first.epoch))
    took = time.monotonic() - cut
    assert second.node not in killed
    assert "version 1" in colony("kv", "put", "after-manager", "yes", state=state).stdout
    view = settled(state, killed, REPLACED, "settled group without the killed voter")
    replaced = time.monotonic() - cut

    # 2. Another voter's node dies (not the leader's): replaced too, from the last standby.
    follower = next(v for v in group_of(view) if v != view.node)
    killed.add(follower)
    killed_order.append(follower)
    kill_node(state, follower)
    third = settled(state, killed, REPLACED, "settled group without the second killed voter")
    assert "version 1" in colony("kv", "put", "after-voter", "yes", state=state).stdout
    for i in range(10):  # every acknowledged write, through whoever leads now
        assert colony("kv", "get", f"k{i}", state=state).stdout.strip() == str(i)
    table = colony("status", state=state).stdout
    assert "manager: " in table and f"epoch {third.epoch}" in table

    # 3. A follower declares far more capacity: leadership, and the manager, move to it once.
    chosen = next(v for v in group_of(third) if v != third.node)
    others = [v for v in group_of(third) if v != chosen]
    by_name = names(state)
    colony("capacity", by_name[chosen], "--cpu", "64", "--memory", "256GiB", state=state)
    # leadership moves to it, which now has the most free resources
    moved = settled(state, killed, 30, f"manager at {by_name[chosen]}", leader=chosen)
    assert moved.epoch > third.epoch

    # 4. Capacities flap: no further move (one transfer a minute at most).
    leaders = set()
    flapping_until = time.monotonic() + FLAPPING
    high = True
    while time.monotonic() < flapping_until:
        for node in others:
            size = ["--cpu", "128", "--memory", "512GiB"] if high else ["--reset"]
            colony("capacity", by_name[node], *size, state=state)
        high = not high
        if leader := on_cluster(state, lambda c: c.leader()):
            leaders.add(leader.node)
        time.sleep(1.0)  # one flap a second: the rhythm being tested, not a wait for a result
    assert leaders == {chosen}, f"leadership moved again while capacities flapped: {leaders}"

    # 5. The killed nodes come back (`colony up` restarts what is down): no longer voters,
    # they are told to stand by, and the three voters stay as they are.
    colony("up", "--detach", state=state)
    wait_for(
        lambda: all(status(state)[by_name[n]]["raft"] == "standby" for n in killed),
        REPLACED,
        "the nodes that were voters to come back standing by",
    )
    assert settled(state, killed, 30, "the group as it was").node == chosen

    # 6. The change stream tells the whole story, with epochs and reasons.
    url = StateDir(state).node(by_name[chosen]).nats_url()
    changes = wait_for(lambda: relayed_up_to(url, moved.epoch), 30, "the change stream to catch up")
    voters = [(c.detail["change"], c.id) for c in changes if c.kind == "voter"]
    assert [v for v in voters if v[0] == "removed"] == [("removed", n) for n in killed_order]
    assert len([v for v in voters if v[0] == "added"]) == 2
    [moved_to] = [c for c in changes if c.kind == "transfer"]
    assert moved_to.id == chosen and "more free resources" in moved_to.detail["reason"]
    grants = [c.version for c in changes if c.kind == "lease" and c.detail["event"] == "granted"]
    assert grants == list(range(1, len(grants) + 1)) and grants[-1] == moved.epoch
    ended = {c.detail["event"] for c in changes if c.kind == "lease"} - {"granted"}
    assert ended == {"expired", "released"}  # the killed manager's, the handed-over one's
    print(
        f"\nmanager failover seen in {took:.1f} s (epoch "
        f"{first.epoch} -> {second.epoch}); voter replaced "
        f"{replaced:.1f} s after the kill; leadership moved to {by_name[chosen]} once"
    )
