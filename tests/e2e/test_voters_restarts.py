"""End to end, in a real `colony up --nodes 5 --voters 5` cluster: voters lost to kill -9 are
removed only down to three, and come back without disturbing the leader.

Two followers' nodes are killed: the leader removes them (3 voters left, still one loss
to spare). A third follower's node is killed: it is *not* removed (2 voters would stop
at the next loss); writes go on through the two left. `colony up` restarts the three:
the two removed ones come back on their old journals, campaigning at ever higher terms
among themselves; each is told to retire and is added back afresh, and the one never
removed simply catches up. Through all of it one leader, at one term.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from _cli import colony

from colony.cli.local.ports import free_base_port
from colony.harness.processes import wait_for
from colony.shared.bus import connect
from colony.shared.cluster import Cluster, Leader, Statuses
from colony.shared.config import NatsSettings
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

REMOVED = 60
"""Seconds for membership to declare a killed node dead and the leader to remove it."""
HELD = 12
"""Seconds the third loss is watched: well past membership's verdict and the grace."""


class Watch:
    """Every node's consensus status, asked five times a second on a thread of its own;
    keeps every (leader, term) any node claimed."""

    def __init__(self, state: Path) -> None:
        self.nodes = {n.read_id(): n for n in StateDir(state).nodes()}
        self.urls = [n.nats_url() for n in self.nodes.values()]
        self.statuses = Statuses({})
        self.leaders: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        wait_for(lambda: self.statuses.of, 30, "a first look at the voters")
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        bus = await connect(NatsSettings(servers=self.urls), "test-watch")
        cluster = Cluster(bus, list(self.nodes))
        try:
            while not self._stop.is_set():
                self.statuses = looked = await cluster.statuses()
                claims = looked.answered.values()
                self.leaders |= {(v.node, v.term) for v in claims if v.role == "leader"}
                await asyncio.sleep(0.2)
        finally:
            await bus.close()

    def leader(self) -> Leader | None:
        return self.statuses.leader()

    def voters(self, connected: bool = True) -> set[str] | None:
        """The leader's voters (only those connected and caught up, with `connected`)."""
        top = self.leader()
        if top is None:
            return None
        return set(top.in_step if connected else top.voters)

    def settled(self, count: int) -> set[str] | None:
        """The voters, once the leader has `count` of them, all connected, caught up and
        following it."""
        top = self.statuses.settled(count)
        return set(top.voters) if top else None


def test_lost_voters_are_removed_down_to_three_and_come_back_without_an_election(tmp_path):
    state = tmp_path / "state"
    base = str(free_base_port(5))
    colony("up", "--nodes", "5", "--voters", "5", "--detach", "--base-port", base, state=state)
    try:
        with Watch(state) as watch:
            story(state, watch)
    finally:
        colony("down", state=state, check=False)


def story(state: Path, watch: Watch) -> None:
    wait_for(lambda: watch.settled(5), 60, "five connected voters")
    top = watch.leader()
    leader, term = top.node, top.term
    followers = sorted(watch.voters() - {leader})

    # 1. Two followers' nodes die: both removed, three voters left.
    for node in followers[:2]:
        watch.nodes[node].crash()
    wait_for(lambda: watch.settled(3), REMOVED, "the two lost voters to be removed")
    assert "version 1" in colony("kv", "put", "after-two", "yes", state=state).stdout

    # 2. A third follower's node dies: removing it would leave two, so it stays.
    third = followers[2]
    watch.nodes[third].crash()
    held_until = time.monotonic() + HELD
    while time.monotonic() < held_until:
        group = watch.voters(connected=False)
        assert group is None or third in group, f"{third} was removed: voters {group}"
        time.sleep(0.5)  # the rhythm of the check, not a wait for a result
    assert watch.voters(connected=False) == {leader, followers[3], third}
    assert "version 1" in colony("kv", "put", "after-three", "yes", state=state).stdout

    # 3. `colony up` restarts the three: all five vote again, under the same leader.
    colony("up", "--detach", state=state)
    wait_for(lambda: watch.settled(5), 90, "the three to be voters again")
    assert watch.leaders == {(leader, term)}, f"leaders and terms seen: {watch.leaders}"
    for key in ("after-two", "after-three"):
        assert colony("kv", "get", key, state=state).stdout.strip() == "yes"
