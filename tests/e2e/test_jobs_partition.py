"""End to end: a real network partition cuts a node running instances away from the
cluster; its instances are replaced on the majority side, and on healing the node stops
its copies that are no longer assigned to it.

Four hosts, each a Linux network namespace running a whole Colony node (supervisor,
nats-server, membership, consensus, curator, agent: `colony.harness.netns_nodes`):
h1, h2 and h3, the Raft voters, on one switch; h4 alone on the other. A job of 4
instances spread across the label `side` puts two on h4. Unplugging the cable between
the switches leaves h4 cut off: the majority must declare it dead and run its two
instances on h1-h3, while h4's copies, cut off, may go on running. With the cable back,
h4 must find them no longer its own and stop them: 4 instances, 4 processes.

Every read is made inside a host, through its own server. Needs root; skipped otherwise.
"""

from __future__ import annotations

import time

import pytest
import yaml

from colony.harness.jobs import all_running, copies, instance_processes, one_process_each, table
from colony.harness.netns_nodes import NetnsNodes
from colony.harness.processes import wait_for

pytestmark = pytest.mark.e2e

MAJORITY, CUT = ["h1", "h2", "h3"], ["h4"]
HOSTS = MAJORITY + CUT
FORM, SPLIT, HEAL = 120, 60, 90
"""Seconds to form the cluster and run the job, to replace the cut-off instances, to heal."""
JOB = "partitioned"


@pytest.fixture
def network(split_network):
    return split_network(MAJORITY, CUT)


@pytest.fixture
def nodes(network, tmp_path):
    colony = NetnsNodes(network, tmp_path, voters=MAJORITY)
    colony.start()  # whatever happens, `network` kills what it started
    return colony


def until(nodes: NetnsNodes, host: str, check, timeout: float, what: str):
    """Read the job's instances inside `host` until `check` is truthy; fail with what was
    last seen, and where the logs are."""
    seen: list = []

    def look():
        nonlocal seen
        nodes.check_running()
        found = nodes.instances(host, JOB)
        if found is None:
            return None
        seen = found
        return check(found)

    try:
        return wait_for(look, timeout, what, every=0.5)
    except TimeoutError as e:
        raise AssertionError(f"{e}; last seen from {host}:\n{table(seen)}\nlogs in "
                             f"{nodes.workdir}") from None  # fmt: skip


def status_of(nodes: NetnsNodes, host: str, node: str) -> str | None:
    found = nodes.nodes(host)
    return found[node].status if found and node in found else None


def test_a_cut_off_node_s_instances_run_on_the_majority_and_it_stops_its_copies_on_heal(
    network, nodes, tmp_path
):
    wait_for(
        lambda: all(status_of(nodes, "h1", h) == "alive" for h in HOSTS),
        FORM,
        "the manager to record every host alive",
        every=1.0,
    )
    for host in HOSTS:
        side = "b" if host in CUT else "a"
        done = nodes.colony("h1", "node", "label", host, f"side={side}")
        assert done.returncode == 0, done.stderr
    spec = {
        "name": JOB,
        "task": {"command": "/bin/sleep", "args": ["3600"]},
        "replicas": 4,
        "resources": {"cpu": 0.05, "memory": "16MiB"},
        "spread": "side",
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    done = nodes.colony("h1", "job", "run", str(tmp_path / "job.yaml"), "--detach")
    assert done.returncode == 0, done.stdout + done.stderr
    placed = until(nodes, "h1", lambda seen: all_running(seen, 4), FORM, "4 instances running")
    cut_off = {i.id: i.pid for i in placed if i.node == "h4"}
    assert len(cut_off) == 2, table(placed)  # spread across side a and side b

    cut = time.monotonic()
    network.partition()
    moved = until(
        nodes,
        "h1",
        lambda seen: all_running(seen, 4, avoid=CUT),
        SPLIT,
        "h4's instances replaced on the majority side",
    )
    replaced = time.monotonic() - cut
    assert status_of(nodes, "h1", "h4") == "dead"
    assert {i.replaces for i in moved if i.replaces} == set(cut_off), table(moved)
    still = [c for c in copies(JOB) if c.node == "h4"]

    healed = time.monotonic()
    network.heal()
    wait_for(lambda: status_of(nodes, "h1", "h4") == "alive", HEAL, "h4 alive again", every=1.0)
    final = until(
        nodes,
        "h1",
        lambda seen: one_process_each(JOB, seen) and seen,
        HEAL,
        "h4's unassigned copies stopped: one process per instance",
    )
    took = time.monotonic() - healed
    assert all_running(final, 4, avoid=CUT), table(final)
    assert not [p for p in instance_processes(JOB) if p.node == "h4"]
    nodes.check_running()  # healed with no restart of any node
    print(
        f"\nh4 cut off: its 2 instances running on the majority {replaced:.1f} s after the cut "
        f"({len(still)} copies still running on h4 while cut off); its copies stopped "
        f"{took:.1f} s after healing"
    )
