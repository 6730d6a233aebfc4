"""End to end, on a real `colony up --nodes 5` cluster: jobs through bad input and faults.

One cluster for the module (its nodes labelled ``host=<name>`` so that a job can be
kept on, or spread across, chosen nodes). Each test runs its own jobs, purges them
when done, and brings back any node it killed, so the next test finds the cluster as
it was. The least destructive tests come first.

What is checked is what the management database committed (`colony.harness.jobs`
reads the instances, jobs and nodes kinds) and, for duplicates and leftovers, this
machine's real processes: every process of an instance carries `COLONY_INSTANCE`,
`COLONY_JOB` and `COLONY_NODE` in its environment, whichever node started it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import psutil
import pytest
import yaml
from _cli import colony
from _colony import SETTLE, labelled_cluster, on_host

from colony.harness import jobs as harness
from colony.harness.jobs import (
    instance_processes,
    one_process_each,
    table,
)
from colony.harness.processes import wait_for
from colony.shared.messages import InstanceRecord
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

NODES = 5
DEAD = 60
"""Seconds for membership to declare a killed node dead and the manager to record it."""
REPLACED_WITHIN = 10.0
"""The issue's bar: instances of a dead node run elsewhere this soon after the verdict."""
STOP_GRACE = 10.0
"""Seconds the process driver gives a workload after SIGTERM before SIGKILL (at most)."""
SLEEPER = {"command": "/bin/sleep", "args": ["3600"]}
SMALL = {"cpu": 0.01, "memory": "16MiB"}
"""Room for 20 and more instances on 4 nodes of this 2-core machine."""


# --- the cluster ----------------------------------------------------------------------


def job(name: str, replicas: int, **fields) -> dict:
    return {"name": name, "task": SLEEPER, "replicas": replicas, "resources": SMALL, **fields}


def history(state: Path, instance: str) -> list[InstanceRecord]:
    """The instance's records, change by change, as `colony events` shows them."""
    shown = colony("events", "--kind", "instance", "--json", state=state).stdout
    changes = [json.loads(line) for line in shown.splitlines() if line.strip()]
    return [msgspec.convert(c["detail"], InstanceRecord) for c in changes if c["id"] == instance]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with labelled_cluster(tmp_path_factory.mktemp("colony") / "state", NODES) as here:
        yield here


# --- bad input --------------------------------------------------------------------------


def test_a_job_larger_than_any_node_is_refused_at_plan_time_and_nothing_is_stored(
    cluster, tmp_path
):
    for name, resources, lacking in (
        ("too-much-cpu", {"cpu": 64, "memory": "16MiB"}, "cpu"),
        ("too-much-memory", {"cpu": 0.01, "memory": "4TiB"}, "memory"),
    ):
        spec = {**job(name, 2), "resources": resources}
        refused = cluster.run(spec, tmp_path, check=False)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode == 1, said
        assert "does not fit" in said and "nothing was stored" in said, said
        # the scheduler's reason, per node count: "5 nodes lack cpu: need 64 ..."
        assert re.search(rf"{NODES} nodes? lack {lacking}", said), said
        assert "Traceback" not in said
        planned = colony("job", "plan", str(tmp_path / f"{name}.yaml"), "--json",
                         state=cluster.state, check=False)  # fmt: skip
        assert planned.returncode == 1 and json.loads(planned.stdout)["fits"] is False
    listed = json.loads(colony("job", "list", "--json", state=cluster.state).stdout)
    assert not {j["name"] for j in listed} & {"too-much-cpu", "too-much-memory"}
    assert cluster.jobs.instances("too-much-cpu") == []
    assert cluster.jobs.instances("too-much-memory") == []


def test_bad_commands_fail_with_their_reason_and_the_agent_keeps_serving(cluster, tmp_path):
    here, there = cluster.others()[:2]
    quick = {"attempts": 2, "interval": "1m", "delay": "200ms", "backoff": 1, "then": "fail"}
    steady = job("steady", 2, constraints=on_host(here))
    cluster.run(steady, tmp_path, "--timeout", str(SETTLE))
    before = {i.id: i.pid for i in cluster.running("steady", 2)}

    broken = {
        "no-such-command": {
            "task": {"command": "/nonexistent/colony-no-such-command"},
            "restart": {**quick, "then": "reschedule"},
            "constraints": on_host(here, there),
        },
        "bad-workdir": {
            "task": {**SLEEPER, "workdir": "/nonexistent/colony-workdir"},
            "restart": quick,
            "constraints": on_host(here),
        },
        "memory-too-small": {
            # a 2 MiB limit for a process that needs 64 MiB more: the host cannot honour it
            "task": {
                "command": sys.executable,
                "args": ["-c", "b = bytearray(64 * 2**20); import time; time.sleep(3600)"],
            },
            "resources": {"cpu": 0.01, "memory": "2MiB"},
            "restart": quick,
            "constraints": on_host(here),
        },
    }
    try:
        for name, fields in broken.items():
            cluster.run({**job(name, 1), **fields}, tmp_path, "--detach")
        why = {
            "no-such-command": re.compile(r"not found|no such file|does not exist", re.I),
            "bad-workdir": re.compile(r"/nonexistent/colony-workdir"),
            "memory-too-small": re.compile(r"memory", re.I),
        }
        # then: reschedule -> failed where it was placed, then a replacement elsewhere
        # (the failed one is removed at once: the change stream tells its story)
        [replacement] = cluster.jobs.until(
            lambda seen: [i for i in seen if i.replaces][:1],
            "no-such-command",
            SETTLE,
            "a replacement of no-such-command's first instance",
        )
        first = wait_for(
            lambda: [r for r in history(cluster.state, replacement.replaces)
                     if r.state == "failed"][-1:],
            30,
            f"the change stream to show {replacement.replaces} failed",
        )[0]  # fmt: skip
        assert replacement.node != first.node and replacement.slot == first.slot == 0
        failed = {"no-such-command": first}
        for name in ("bad-workdir", "memory-too-small"):
            [failed[name]] = cluster.jobs.until(
                lambda seen: [i for i in seen if i.state == "failed"],
                name,
                SETTLE,
                f"{name}'s instance to fail",
            )
        for name, reason in why.items():
            shown = table([failed[name]])
            assert failed[name].restarts == 2, shown  # the policy's attempts, then failed
            assert reason.search(failed[name].reason), shown
            assert "Traceback" not in failed[name].reason
            print(f"\n{name} failed after {failed[name].restarts} restarts: {failed[name].reason}")

        # then: fail -> left failed, desired to run, its reason in `colony job status`
        for name in ("bad-workdir", "memory-too-small"):
            [only] = cluster.jobs.instances(name)
            assert only.desired == "run" and only.state == "failed", table([only])
            shown = json.loads(colony("job", "status", name, "--json",
                                      state=cluster.state).stdout)  # fmt: skip
            assert [i["reason"] for i in shown["instances"]] == [failed[name].reason]

        # The agent on `here` kept serving: its steady instances untouched, and it starts
        # a new one.
        colony("job", "scale", "steady", "3", state=cluster.state)
        after = {i.id: i.pid for i in cluster.running("steady", 3)}
        assert {k: after[k] for k in before} == before
        wait_for(lambda: one_process_each("steady", cluster.jobs.instances("steady")), 10,
                 "one process per steady instance")  # fmt: skip
    finally:
        cluster.purge("steady", *broken)


def test_a_forking_workload_that_ignores_sigterm_is_stopped_with_nothing_left(cluster, tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "for _ in range(2):\n"
        "    if os.fork() == 0:\n"
        "        os.fork()  # a grandchild too\n"
        "        break\n"
        "time.sleep(3600)\n"
    )
    spec = {**job("stubborn", 1), "task": {"command": sys.executable, "args": [str(script)]}}
    cluster.run(spec, tmp_path, "--timeout", str(SETTLE))
    try:
        [instance] = cluster.running("stubborn", 1)
        # its two children and their two children
        wait_for(lambda: len(psutil.Process(instance.pid).children(recursive=True)) == 4,
                 10, "the workload's 4 children and grandchildren")  # fmt: skip
        sessions = {p.sid for p in instance_processes("stubborn")}
        assert len(sessions) == 1, instance_processes("stubborn")

        stopped = time.monotonic()
        colony("job", "stop", "stubborn", state=cluster.state)
        wait_for(
            lambda: not instance_processes("stubborn") and not harness.in_session(*sessions),
            STOP_GRACE + 5,
            "every process of the stubborn workload gone",
            every=0.1,
        )
        took = time.monotonic() - stopped
        # (then removed: the change stream tells how it ended)
        wait_for(
            lambda: [r for r in history(cluster.state, instance.id) if r.state == "exited"],
            30,
            f"the change stream to show {instance.id} exited",
        )
        print(
            f"\nstubborn workload (it and 4 forked processes, all ignoring SIGTERM) gone "
            f"{took:.1f} s after stop"
        )
    finally:
        cluster.purge("stubborn")


# --- faults ---------------------------------------------------------------------------


def test_an_agent_killed_with_kill_9_adopts_the_same_instances_on_restart(cluster, tmp_path):
    name = cluster.others()[0]
    node_dir = StateDir(cluster.state).node(name)
    cluster.run(job("adopted", 4, constraints=on_host(name)), tmp_path, "--timeout", str(SETTLE))
    try:
        before = {i.id: (i.pid, i.restarts) for i in cluster.running("adopted", 4)}
        assert one_process_each("adopted", cluster.jobs.instances("adopted"))

        agent = node_dir.record("agent")
        assert agent is not None and agent.alive(), [r.name for r in node_dir.records()]
        os.kill(agent.pid, signal.SIGKILL)
        wait_for(
            lambda: (r := node_dir.record("agent")) and r.pid != agent.pid and r.alive(),
            30,
            f"{name}'s supervisor to restart its agent",
        )
        # The new agent serves: it starts a fifth instance (kept on the same node).
        colony("job", "scale", "adopted", "5", state=cluster.state)
        after = {i.id: (i.pid, i.restarts) for i in cluster.running("adopted", 5)}
        assert {k: after[k] for k in before} == before, "the instances were not adopted as is"
        assert wait_for(lambda: one_process_each("adopted", cluster.jobs.instances("adopted")),
                        10, "one process per instance")  # fmt: skip
    finally:
        cluster.purge("adopted")


def test_a_killed_node_s_instances_run_elsewhere_soon_after_the_verdict_and_not_twice(
    cluster, tmp_path
):
    # The job may run in pool "rescue", at first its victim alone (not the manager's
    # node); the pool grows before the victim dies: its replacements have room elsewhere.
    name = cluster.others()[0]
    victim = cluster.ids()[name]
    spec = job("rescued", 4, constraints=[{"label": "pool", "op": "=", "value": "rescue"}])
    try:
        colony("node", "label", name, "pool=rescue", state=cluster.state)
        cluster.run(spec, tmp_path, "--timeout", str(SETTLE))
        placed = cluster.running("rescued", 4)
        assert {i.node for i in placed} == {victim}, table(placed)
        old = {i.id: i.pid for i in placed}
        for other in cluster.ids():
            colony("node", "label", other, "pool=rescue", state=cluster.state)

        cluster.crash(victim, instances=False)  # its workloads keep running, cut off
        verdict = wait_for(
            lambda: (n := cluster.jobs.nodes().get(victim)) and n.status == "dead" and n,
            DEAD,
            f"the manager to record {victim} dead",
            every=0.25,
        )
        moved = cluster.running("rescued", 4, avoid={victim}, timeout=DEAD)
        late = max(i.started_at for i in moved) - verdict.changed
        assert late <= REPLACED_WITHIN, (
            f"the last replacement started {late:.1f} s after the verdict:\n{table(moved)}"
        )
        assert {i.replaces for i in moved} == set(old), table(moved)

        # The node comes back: its agent finds its old instances unassigned, stops them.
        colony("up", "--detach", state=cluster.state)
        cluster.nodes_alive([victim])
        wait_for(
            lambda: one_process_each("rescued", cluster.jobs.instances("rescued")),
            SETTLE,
            f"the old copies on {victim} stopped, one process per instance",
            every=0.5,
        )
        assert not [p for p in instance_processes("rescued") if p.pid in old.values()]
        print(f"\n4 instances of dead {victim} running elsewhere {late:.1f} s after the verdict")
    finally:
        cluster.purge("rescued")
        for other in cluster.ids():
            colony("node", "label", other, "pool-", state=cluster.state, check=False)


@pytest.mark.parametrize("moment", ["stored", "placed"])
def test_the_manager_s_node_killed_while_placing_20_instances_the_next_manager_finishes(
    cluster, tmp_path, moment
):
    """Killed the moment the job is committed (the next manager places it all), or the
    moment its first placements are (the instances are starting)."""
    first = cluster.manager()
    path = tmp_path / "twenty.yaml"
    path.write_text(yaml.safe_dump(job("twenty", 20, spread="host")))
    argv = [sys.executable, "-m", "colony.cli", "job", "run", str(path), "--detach", "--json"]
    with subprocess.Popen([*argv, "--state-dir", str(cluster.state)], stdout=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True) as submit:  # fmt: skip
        assert submit.stdout is not None
        stored = submit.stdout.readline()  # the moment the job is committed, not its exit
        if moment == "placed":
            wait_for(lambda: cluster.jobs.instances("twenty"), 10, "a placement", every=0.01)
        # a machine failure: everything on the manager's node dies, its instances too
        cluster.crash(first.node, instances=True)
        killed, killed_at = time.monotonic(), time.time()
        stored += submit.stdout.read()
    assert submit.returncode == 0 and json.loads(stored)["stored"], stored
    try:
        second = cluster.manager(above_epoch=first.epoch)
        assert second.node != first.node
        done = cluster.running("twenty", 20, avoid={first.node}, timeout=SETTLE + DEAD)
        took = time.monotonic() - killed
        assert wait_for(lambda: one_process_each("twenty", cluster.jobs.instances("twenty")),
                        30, "one process per instance")  # fmt: skip
        # every node's real processes: as many as the instances placed on it
        by_node = Counter(c.node for c in harness.copies("twenty"))
        assert by_node == Counter(i.node for i in done), (by_node, table(done))

        # The old manager's node comes back: it restarts nothing of what it ran.
        colony("up", "--detach", state=cluster.state)
        cluster.nodes_alive([first.node])
        assert wait_for(lambda: one_process_each("twenty", cluster.jobs.instances("twenty")),
                        30, "still one process per instance")  # fmt: skip
        again = cluster.running("twenty", 20)
        assert {i.id: i.pid for i in again} == {i.id: i.pid for i in done}
        placed = [i for i in done if i.placed < killed_at]
        running = [i for i in placed if i.started_at and i.started_at < killed_at]
        print(
            f"\n20 instances all running {took:.1f} s after the manager's node was killed "
            f"once the job was {moment} "
            f"(epoch {first.epoch} -> {second.epoch}); of them, placed before the kill: "
            f"{len(placed)}, running before it: {len(running)}"
        )
    finally:
        cluster.purge("twenty")
