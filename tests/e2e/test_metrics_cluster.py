"""End to end: every node of a real `colony up` cluster serves one Prometheus endpoint
that shows the node, its Raft and its membership, and passes promtool's check."""

from __future__ import annotations

import urllib.request

import pytest
from _cli import status

from colony.harness.processes import wait_for
from colony.harness.promlint import lint, parse, promtool

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """The families at `url` (checked as promtool would): name -> samples."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    assert lint(text) == []
    assert promtool(text) in (None, [])  # None: promtool is not installed here
    return {f.name: f.samples for f in parse(text)[0]}


def one(samples, sample: str = "", **labels: str) -> float:
    """The value of the one sample (named `sample`, if given) with these labels."""
    [value] = [
        v
        for name, have, v in samples
        if name == (sample or name) and labels.items() <= have.items()
    ]
    return value


def test_each_nodes_endpoint_shows_its_raft_and_membership(cluster):
    state, _ = cluster
    nodes = status(state)
    urls = {node["metrics"]["node"]: node["metrics"]["metrics_url"] for node in nodes.values()}

    def settled():
        scrapes = {node: scrape(url) for node, url in urls.items()}
        leaders = [n for n, f in scrapes.items() if one(f["colony_consensus_role"], role="leader")]
        if len(leaders) != 1:
            return None
        lags = scrapes[leaders[0]]["colony_consensus_follower_lag_entries"]
        alive = [one(f["colony_membership_members"], status="alive") for f in scrapes.values()]
        return (leaders[0], scrapes) if len(lags) == 2 and alive == [3, 3, 3] else None

    leader, scrapes = wait_for(settled, 30, "one leader that knows its 2 followers' lag")
    for node, families in scrapes.items():
        assert one(families["colony_host_cpu_cores"], node=node) >= 1
        assert one(families["colony_consensus_term"], node=node) >= 1
        assert one(families["colony_consensus_lease_holder"], holder=leader) == 1
        applied = families["colony_consensus_apply_seconds"]
        assert one(applied, "colony_consensus_apply_seconds_count", node=node) >= 1
        for service in ("consensus", "membership"):
            assert one(families["colony_service_metrics_up"], service=service) == 1
