"""`colony node label` on a real cluster: replicated, shown by `colony status`, bad input
refused with a clear message and nothing changed."""

from __future__ import annotations

import json

import pytest
from _cli import colony, on_cluster, status

pytestmark = pytest.mark.e2e


def test_labels_set_and_removed_show_in_status(cluster):
    state, _ = cluster
    on_cluster(state, lambda c: c.wait_leader(30))
    done = colony("node", "label", "node-2", "disk=ssd", "example.com/zone=eu-1", state=state)
    assert "disk=ssd" in done.stdout and "labels version 1" in done.stdout
    done = colony("node", "label", "node-2", "disk-", "gpu=", "--json", state=state)
    reply = json.loads(done.stdout)
    assert reply["outcomes"][0]["version"] == 2 and reply["node"].startswith("node-2-")

    nodes = status(state)
    assert nodes["node-2"]["labels"] == {"example.com/zone": "eu-1", "gpu": ""}
    assert nodes["node-1"]["labels"] == {} and nodes["node-3"]["labels"] == {}
    table = colony("status", state=state).stdout
    assert "LABELS" in table and "example.com/zone=eu-1, gpu=" in table


def test_bad_labels_and_unknown_nodes_are_refused_clearly(cluster):
    state, _ = cluster
    for args, says in (
        (["node-1", "Bad Key=x"], "the key's name 'Bad Key' must be 1-63 letters"),
        (["node-1", "UPPER.example.com/k=v"], "prefix 'UPPER.example.com' must be a DNS"),
        (["node-1", "k=" + "v" * 64], "must be empty or 1-63"),
        (["node-1", "k"], "neither KEY=VALUE (set) nor KEY- (remove)"),
        (["node-9", "k=v"], "no node 'node-9'"),
    ):
        result = colony("node", "label", *args, state=state, check=False)
        assert result.returncode != 0 and says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert status(state)["node-1"]["labels"] == {}
