"""End to end: `colony up` a real 3-node cluster, break it, watch it heal, `colony down`.

Everything runs as real processes through the real CLI. To hold a node down
long enough to observe it, its supervisor is paused (SIGSTOP) while its
nats-server is killed, then resumed (SIGCONT) to let it repair the node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cli import colony, status, up

from colony.bootstrapper.supervisor import SERVICES
from colony.cli.local.ports import free_base_port
from colony.harness.processes import wait_for
from colony.shared.statedir import NATS, SUPERVISOR, StateDir

pytestmark = pytest.mark.e2e


@pytest.fixture
def state(tmp_path):
    """A state dir for a test's own cluster, brought down whatever the test did."""
    path = tmp_path / "c"
    yield path
    colony("down", state=path, check=False)


def record(state: Path, node: str, process: str):
    return StateDir(state).node(node).record(process)


def test_three_nodes_report_live_metrics(cluster):
    state, base = cluster
    first = status(state)
    assert sorted(first) == ["node-1", "node-2", "node-3"]
    for i, name in enumerate(sorted(first)):
        node = first[name]
        assert node["state"] == "up"
        assert node["nats_url"] == f"nats://127.0.0.1:{base + i}"
        assert "monitor" in node["services"]
        assert node["metrics"]["capacity"]["cpu"] > 0
        assert node["metrics"]["free"]["memory"] < node["metrics"]["capacity"]["memory"]

    def advanced():
        later = status(state)
        return all(later[n]["metrics"]["ts"] > first[n]["metrics"]["ts"] for n in first)

    wait_for(advanced, timeout=10, what="every node's metrics timestamp to advance")


def test_status_from_just_a_server_url_finds_every_node(cluster, tmp_path):
    _, base = cluster
    result = colony(
        "status", "--json", "--server", f"nats://127.0.0.1:{base + 1}", state=tmp_path / "none"
    )
    nodes = json.loads(result.stdout)["nodes"]
    assert sorted(n["name"] for n in nodes) == ["node-1", "node-2", "node-3"]
    assert all(n["state"] == "up" for n in nodes)


def test_members_from_just_a_server_url_shows_that_servers_node(cluster, tmp_path):
    state, base = cluster
    ids = {n.name: n.read_id() for n in StateDir(state).nodes()}
    nowhere = tmp_path / "none"  # no state dir: everything comes from the server

    def members(*args: str) -> dict:
        return json.loads(colony("members", *args, "--json", state=nowhere).stdout)

    server = f"nats://127.0.0.1:{base + 1}"  # node-2's
    view = wait_for(
        lambda: len((v := members("--server", server))["members"]) == 3 and v,
        20,
        "node-2 to know all three members",
    )
    assert view["observer"] == ids["node-2"]
    assert {m["node"]: m["status"] for m in view["members"]} == dict.fromkeys(ids.values(), "alive")
    assert members("node-3", "--server", server)["observer"] == ids["node-3"]  # by name
    assert members(ids["node-1"], "--server", server)["observer"] == ids["node-1"]  # by id
    missing = colony("members", "node-9", "--server", server, state=nowhere, check=False)
    assert missing.returncode == 1
    assert "no membership service of node 'node-9' answers" in missing.stderr
    assert "node-1, node-2, node-3" in missing.stderr


def test_up_on_a_running_cluster_says_so_and_changes_nothing(cluster):
    state, _ = cluster
    before = [r.pid for n in StateDir(state).nodes() for r in n.records()]
    result = colony("up", "--detach", state=state)
    assert "already running" in result.stdout
    assert [r.pid for n in StateDir(state).nodes() for r in n.records()] == before


def test_a_killed_nats_server_shows_unreachable_then_recovers(cluster):
    state, _ = cluster
    supervisor = record(state, "node-2", SUPERVISOR)
    nats = record(state, "node-2", NATS)
    os.kill(supervisor.pid, signal.SIGSTOP)  # hold the repair until we have looked
    try:
        os.kill(nats.pid, signal.SIGKILL)
        # Its last sample is read from the replicated metrics stream, which may
        # take a few seconds to answer again if node-2 led it: poll for both.
        nodes = wait_for(
            lambda: (
                (s := status(state))["node-2"]["state"] == "unreachable"
                and s["node-2"]["last_heard_seconds"] is not None
                and s
            ),
            timeout=15,
            what="node-2 to show as unreachable, with when it was last heard",
        )
        assert nodes["node-1"]["state"] == nodes["node-3"]["state"] == "up"
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    restarted = wait_for(
        lambda: (r := record(state, "node-2", NATS)) and r.pid != nats.pid and r.alive() and r,
        timeout=15,
        what="node-2's nats-server to be restarted",
    )
    assert restarted.pgid == restarted.pid
    wait_for(lambda: status(state)["node-2"]["state"] == "up", timeout=20, what="node-2 to recover")
    log = colony("logs", "node-2", "supervisor", "-n", "50", state=state).stdout
    assert "child died; restarting" in log
    assert "killed by SIGKILL" in log


def test_a_killed_monitor_is_restarted_and_metrics_resume(cluster):
    state, _ = cluster
    monitor = record(state, "node-3", "monitor")
    os.kill(monitor.pid, signal.SIGKILL)
    killed_at = time.time()
    wait_for(
        lambda: (r := record(state, "node-3", "monitor")) and r.pid != monitor.pid,
        timeout=15,
        what="node-3's monitor to be restarted",
    )

    def fresh_metrics():
        node = status(state)["node-3"]
        return node["state"] == "up" and node["metrics"]["ts"] > killed_at + 1

    wait_for(fresh_metrics, timeout=20, what="node-3's metrics to resume")


def test_up_with_taken_ports_names_them_and_starts_nothing(cluster, tmp_path):
    _, base = cluster
    other = tmp_path / "other"
    result = colony("up", "--detach", "--base-port", str(base), state=other, check=False)
    assert result.returncode == 1
    assert f"127.0.0.1:{base} (node-1 client)" in result.stderr
    assert StateDir(other).nodes() == []


def test_status_with_nothing_running_fails_clearly(state):
    up(state, free_base_port(1), nodes=1)
    colony("down", state=state)
    result = colony("status", state=state, check=False)
    assert result.returncode == 1
    assert "no nats server answers" in result.stderr


def test_down_leaves_nothing_even_after_a_supervisor_kill_9(state):
    up(state, free_base_port(2), nodes=2)
    records = [r for n in StateDir(state).nodes() for r in n.records()]
    by_node = {n.name: sorted(r.name for r in n.records()) for n in StateDir(state).nodes()}
    assert by_node == {  # node-1 is the one voter of a 2-node cluster; node-2 stands by
        "node-1": sorted([*SERVICES, "nats", "supervisor"]),
        "node-2": sorted([*SERVICES, "nats", "supervisor"]),
    }
    os.kill(record(state, "node-1", SUPERVISOR).pid, signal.SIGKILL)  # orphans its children
    result = colony("down", state=state)
    assert "stopped" in result.stdout
    assert [r for r in records if r.group_alive()] == []  # no process of any recorded group
    assert [r for n in StateDir(state).nodes() for r in n.records()] == []
    again = colony("down", state=state)
    assert "Nothing is running" in again.stdout


def test_up_in_the_foreground_stops_everything_on_ctrl_c(state, tmp_path):
    base = free_base_port(1)
    argv = [sys.executable, "-m", "colony.cli", "up", "--nodes", "1", "--base-port", str(base)]
    said = tmp_path / "up.out"
    with open(said, "w") as out:
        process = subprocess.Popen([*argv, "--state-dir", str(state)], stdout=out)
    try:
        wait_for(lambda: "Ctrl-C stops" in said.read_text(), 60, "colony up to say it runs")
        records = [r for n in StateDir(state).nodes() for r in n.records()]
        # supervisor, nats and every service
        assert len(records) == 2 + len(SERVICES)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert [r for r in records if r.group_alive()] == []
    finally:
        if process.poll() is None:
            process.kill()


def test_a_killed_node_is_dead_to_every_other_member_and_up_brings_it_back(state):
    up(state, free_base_port(3), nodes=3)
    victim = StateDir(state).node("node-3")
    victim_id = victim.read_id()

    def view(of: str) -> dict[str, tuple[str, int]]:
        asked = colony("members", of, "--json", state=state, check=False)
        if asked.returncode:  # not answering yet (just restarted): poll on
            return {}
        reply = json.loads(asked.stdout)
        return {m["node"]: (m["status"], m["incarnation"]) for m in reply["members"]}

    wait_for(lambda: len(view("node-1")) == 3, 20, "node-1 to know all three members")
    victim.crash()
    wait_for(
        lambda: view("node-1").get(victim_id, ("",))[0] == "dead" == view("node-2")[victim_id][0],
        20,
        "node-1 and node-2 to mark node-3 dead",
    )
    nodes = status(state)
    assert nodes["node-3"]["member"] == "dead"
    assert nodes["node-1"]["member"] == nodes["node-2"]["member"] == "alive"
    _, died_at = view("node-1")[victim_id]

    restarted = colony("up", state=state)  # starts the down node, leaves the rest alone
    assert "restarted node-3" in restarted.stdout
    wait_for(
        lambda: all(
            view(n).get(victim_id, ("",))[0] == "alive" for n in ("node-1", "node-2", "node-3")
        ),
        30,
        "every member to see node-3 alive again",
    )
    assert view("node-1")[victim_id][1] > died_at  # it came back outbidding its death
