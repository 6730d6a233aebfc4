"""End to end, in a real `colony up --nodes 5` cluster (3 voters, 2 standing by):
one manager at a time, lost voters replaced, leadership drawn to free resources.

The story of one cluster, step by step: kill -9 the manager's node (a new
manager acts at a higher epoch, the lost voter is replaced, acknowledged
writes survive); kill a second voter's node (replaced again: three voters,
the three nodes left); raise one voter's declared capacity (leadership and
the manager move to it, once, and stay, however the capacities flap after);
bring the killed nodes back (they stand by: someone replaced them).
Everything goes through the real CLI: `colony status --json`, `colony kv`,
`colony capacity`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats.errors
import pytest
from _cli import colony, status, up

from colony.cli.local.ports import free_base_port
from colony.harness.processes import wait_for
from colony.shared import subjects
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.messages import Change, decode
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

REPLACED = 60
"""Seconds for membership to declare a killed node dead and the leader to promote another."""
FLAPPING = 15
"""Seconds the declared capacities flap after leadership moved: it must not move again."""


def consensus(state: Path) -> dict | None:
    """The Raft leader's view in `colony status --json`: voters, manager, acting."""
    asked = colony("status", "--json", state=state, check=False)
    return json.loads(asked.stdout)["consensus"] if asked.returncode == 0 else None


def kill_node(state: Path, node_id: str) -> None:
    next(n for n in StateDir(state).nodes() if n.read_id() == node_id).crash()


async def change_stream(url: str) -> list[Change] | None:
    """Every change the Raft leaders relayed to the change stream, in order; None while
    the stream cannot answer (its replicas on the killed nodes are still catching up)."""
    bus = await connect(NatsSettings(servers=[url]), "test-changes", reconnect=False)
    try:
        info = await bus.js.stream_info(subjects.CHANGES_STREAM)
        found = []
        for seq in range(1, info.state.last_seq + 1):
            found.append(decode((await bus.js.get_msg(subjects.CHANGES_STREAM, seq)).data, Change))
        return found
    except nats.errors.Error:
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


def settled(state: Path, without: set[str]) -> dict | None:
    """The leader's view once there are 3 voters, all connected, none of `without`,
    and a manager acting at the leader."""
    view = consensus(state)
    if not view or not view["acting"] or view["manager"]["holder"] != view["node"]:
        return None
    voters = {v["node"] for v in view["voters"] if v["connected"]}
    ok = len(view["voters"]) == 3 and len(voters) == 3 and not voters & without
    return view if ok else None


def test_managers_fail_over_voters_are_replaced_and_leadership_follows_capacity(tmp_path):
    state = tmp_path / "state"
    up(state, free_base_port(5), nodes=5)
    try:
        story(state)
    finally:
        colony("down", state=state, check=False)


def story(state: Path) -> None:
    first = wait_for(lambda: settled(state, set()), 30, "a first acting manager")
    for i in range(10):
        assert "version 1" in colony("kv", "put", f"k{i}", str(i), state=state).stdout

    # 1. The manager's node dies: a new manager, at a higher epoch, and a new voter.
    killed, killed_order = {first["node"]}, [first["node"]]
    kill_node(state, first["node"])
    cut = time.monotonic()
    second = wait_for(
        lambda: (
            (v := consensus(state))
            and v["acting"]
            and v["manager"]["holder"] not in killed
            and v["manager"]["epoch"] > first["manager"]["epoch"]
            and v
        ),
        30,
        "a new manager at a higher epoch",
    )
    took = time.monotonic() - cut
    assert "version 1" in colony("kv", "put", "after-manager", "yes", state=state).stdout
    wait_for(lambda: settled(state, killed), REPLACED, "the killed voter to be replaced")
    replaced = time.monotonic() - cut

    # 2. Another voter's node dies (not the leader's): replaced too, from the last standby.
    view = settled(state, killed)
    follower = next(v["node"] for v in view["voters"] if v["node"] != view["node"])
    killed.add(follower)
    killed_order.append(follower)
    kill_node(state, follower)
    third = wait_for(lambda: settled(state, killed), REPLACED, "the second voter to be replaced")
    assert "version 1" in colony("kv", "put", "after-voter", "yes", state=state).stdout
    for i in range(10):  # every acknowledged write, through whoever leads now
        assert colony("kv", "get", f"k{i}", state=state).stdout.strip() == str(i)
    table = colony("status", state=state).stdout
    assert "manager: " in table and f"epoch {third['manager']['epoch']}" in table

    # 3. A follower declares far more capacity: leadership, and the manager, move to it once.
    chosen = next(v["node"] for v in third["voters"] if v["node"] != third["node"])
    others = [v["node"] for v in third["voters"] if v["node"] != chosen]
    by_name = names(state)
    colony("capacity", by_name[chosen], "--cpu", "64", "--memory", "256GiB", state=state)
    moved = wait_for(
        lambda: (v := settled(state, killed)) and v["node"] == chosen and v,
        30,
        f"leadership to move to {by_name[chosen]}, which now has the most free resources",
    )
    assert moved["manager"]["epoch"] > third["manager"]["epoch"]

    # 4. Capacities flap: no further move (one transfer a minute at most).
    leaders = set()
    flapping_until = time.monotonic() + FLAPPING
    high = True
    while time.monotonic() < flapping_until:
        for node in others:
            size = ["--cpu", "128", "--memory", "512GiB"] if high else ["--reset"]
            colony("capacity", by_name[node], *size, state=state)
        high = not high
        view = consensus(state)
        if view:
            leaders.add(view["node"])
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
    assert settled(state, killed)["node"] == chosen

    # 6. The change stream tells the whole story, with epochs and reasons.
    url = StateDir(state).node(by_name[chosen]).nats_url()
    changes = wait_for(
        lambda: relayed_up_to(url, moved["manager"]["epoch"]), 30, "the change stream to catch up"
    )
    voters = [(c.detail["change"], c.id) for c in changes if c.kind == "voter"]
    assert [v for v in voters if v[0] == "removed"] == [("removed", n) for n in killed_order]
    assert len([v for v in voters if v[0] == "added"]) == 2
    [moved_to] = [c for c in changes if c.kind == "transfer"]
    assert moved_to.id == chosen and "more free resources" in moved_to.detail["reason"]
    grants = [c.version for c in changes if c.kind == "lease" and c.detail["event"] == "granted"]
    assert grants == list(range(1, len(grants) + 1)) and grants[-1] == moved["manager"]["epoch"]
    ended = {c.detail["event"] for c in changes if c.kind == "lease"} - {"granted"}
    assert ended == {"expired", "released"}  # the killed manager's, the handed-over one's
    print(
        f"\nmanager failover seen by `colony status` in {took:.1f} s (epoch "
        f"{first['manager']['epoch']} -> {second['manager']['epoch']}); voter replaced "
        f"{replaced:.1f} s after the kill; leadership moved to {by_name[chosen]} once"
    )
