"""End to end: a real network partition splits the membership group in two, then heals.

Four hosts, each a Linux network namespace with its own nats-server (routed
to the other three) and its own membership service, hang off two switches
joined by a patch cable (`colony.harness.netns`): h1 and h2 on one, h3 and h4
on the other. Unplugging the cable splits them 2 | 2: each side must find the
other suspect, then dead, while still seeing its own side alive. With the
cable back, all four must see all four alive again, with no restart.

Every view is read by `colony members --server` run inside a host, and the
change events by a subscriber inside each host: nothing here talks to the
hosts' addresses from the root namespace (that traffic would leave the
machine). Needs root; skipped otherwise.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from colony.harness import netns, probe
from colony.harness.processes import wait_for
from colony.shared import natsd
from colony.shared.config import Config, NatsSettings, NodeSettings, dumps
from colony.shared.messages import MemberChanged, decode

pytestmark = pytest.mark.e2e

_script = Path(sys.executable).with_name("colony")
COLONY = [str(_script)] if _script.exists() else [sys.executable, "-m", "colony.cli"]
SIDE_A, SIDE_B = ["h1", "h2"], ["h3", "h4"]
HOSTS = SIDE_A + SIDE_B
PORTS = natsd.ServerPorts(client=4222, cluster=6222, http=8222)
"""The same on every host: each has its own network namespace."""
ROUTE_PING = 1.0
"""Seconds between route pings: a cut route is closed within ~3 s (nats' default: ~4 min),
and re-dialled until the cable is back."""

FORM, SPLIT, HEAL = 30, 40, 60
"""Seconds allowed to form the group, to split it, to heal it."""


class Group(netns.HostProcesses):
    """One nats-server, one membership service and one change watcher on every host.

    `processes`: (host, what) -> the process: nats, membership, changes.
    """

    def __init__(self, net: netns.SplitNetwork, workdir: Path) -> None:
        super().__init__(net, workdir, PORTS)

    def start(self) -> None:
        self.start_nats(ROUTE_PING)
        for host in HOSTS:
            config = Config(
                node=NodeSettings(id=host, name=host, dir=str(self.workdir / host / "node")),
                nats=NatsSettings(servers=[self.url(host)], connect_timeout=1.0, ping_interval=1.0),
            )
            (self.workdir / host / "node.toml").write_text(dumps(config))
            argv = [sys.executable, "-m", "colony.membership", "--config"]
            self.spawn(host, [*argv, str(self.workdir / host / "node.toml")], "membership")
            watch = [*probe.ARGV, "watch", self.url(host), "colony.changes.member.*"]
            self.spawn(host, watch, "changes")
        for host in HOSTS:
            wait_for(lambda h=host: self._lines(h)[:1] == ["ready"], 20, f"{host}'s watcher")

    # --- what the members see --------------------------------------------------------

    def view(self, host: str) -> dict[str, dict] | None:
        """Node -> its entry in `host`'s view (status, incarnation...), read inside `host`."""
        argv = [*COLONY, "members", host, "--server", self.url(host), "--json", "--timeout", "2"]
        done = self.net.run(host, argv, timeout=30)
        if done.returncode != 0:
            return None  # not answering yet (or any more): the caller polls
        reply = json.loads(done.stdout)
        assert reply["observer"] == host
        return {m["node"]: m for m in reply["members"]}

    def views(self) -> dict[str, dict[str, dict] | None]:
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            return dict(zip(HOSTS, pool.map(self.view, HOSTS), strict=True))

    def await_views(self, expected: dict[str, dict[str, str]], timeout: float, what: str):
        """Poll every view until each host sees what `expected[host]` says (node -> status)."""
        seen: dict[str, dict[str, dict] | None] = {}

        def matches() -> dict[str, dict[str, dict]] | None:
            nonlocal seen
            self.check_running()
            seen = self.views()
            for host, statuses in expected.items():
                view = seen[host]
                if view is None or {n: view[n]["status"] for n in view} != statuses:
                    return None
            return seen  # type: ignore[return-value]

        try:
            return wait_for(matches, timeout, what, every=0.25)
        except TimeoutError as e:
            shown = {
                h: v and {n: (m["status"], m["incarnation"]) for n, m in v.items()}
                for h, v in seen.items()
            }
            raise AssertionError(f"{e}; last views: {shown}; logs in {self.workdir}") from None

    def _lines(self, host: str) -> list[str]:
        """The watcher's complete lines (the last may be half written)."""
        return self.log(host, "changes").read_text().split("\n")[:-1]

    def changes(self, host: str, after: int = 0) -> list[MemberChanged]:
        """Change events of `host`'s own view, from line `after` of its watcher's output."""
        events = [decode(line.encode(), MemberChanged) for line in self._lines(host)[1:][after:]]
        return [e for e in events if e.observer == host]

    def change_count(self, host: str) -> int:
        return len(self._lines(host)[1:])


@pytest.fixture
def network(split_network):
    return split_network(SIDE_A, SIDE_B)


@pytest.fixture
def group(network, tmp_path):
    members = Group(network, tmp_path)
    members.start()  # whatever happens, `network` kills what it started
    return members


def everyone(status: str = "alive", hosts: list[str] = HOSTS) -> dict[str, str]:
    return dict.fromkeys(hosts, status)


def test_a_partition_splits_the_group_and_it_heals_without_restarts(network, group):
    formed = group.await_views(
        {h: everyone() for h in HOSTS}, FORM, "all four hosts to see all four alive"
    )
    before = {h: {n: m["incarnation"] for n, m in formed[h].items()} for h in HOSTS}

    mark = {h: group.change_count(h) for h in HOSTS}
    network.partition()
    split = {
        **{h: {**everyone("alive", SIDE_A), **everyone("dead", SIDE_B)} for h in SIDE_A},
        **{h: {**everyone("dead", SIDE_A), **everyone("alive", SIDE_B)} for h in SIDE_B},
    }
    group.await_views(split, SPLIT, "each side to see the other dead and its own side alive")

    # Each member's own history: the far side went suspect first, then dead.
    for host in HOSTS:
        far = SIDE_B if host in SIDE_A else SIDE_A
        events = group.changes(host, after=mark[host])
        for node in far:
            statuses = [e.status for e in events if e.node == node]
            assert "dead" in statuses, f"{host} saw {node}: {statuses}"
            assert "suspect" in statuses[: statuses.index("dead")], f"{host} saw {node}: {statuses}"

    network.heal()
    healed = group.await_views(
        {h: everyone() for h in HOSTS}, HEAL, "all four hosts to see all four alive again"
    )
    group.check_running()  # healed by gossip alone: every process is the one started
    for host in HOSTS:
        far = SIDE_B if host in SIDE_A else SIDE_A
        for node in far:
            # Declared dead at some incarnation, it came back only by refuting it with a higher one.
            assert healed[host][node]["incarnation"] > before[host][node], (host, node)
