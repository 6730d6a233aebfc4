"""Backup and disaster recovery on a real `colony up` cluster, as a user would try it.

One 4-node cluster (3 voters, a standby) running a job and holding acknowledged keys:
a snapshot is saved and inspected; a follower voter's node is killed for good and its
replacement is seeded from a replica snapshot; every node is killed with -9 and the
cluster restarted on the same state (nothing lost); every node is killed again, every
voter's database and Raft journal deleted, and the cluster brought back from the
object store (`colony up --restore replica`). The saved file then starts a new cluster
(`colony up --restore FILE`). Each time the keys and the job come back, and on the
cluster's own nodes the job's instances are reconciled with what really runs: one
process per instance.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import colony, down, on_cluster
from _colony import FORM, SETTLE, Colony, labelled_cluster

from colony.cli.local.ports import free_base_port
from colony.harness import jobs as harness
from colony.harness.processes import wait_for
from colony.shared.cluster import Cluster
from colony.shared.management import Management
from colony.shared.messages import KvPut
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

SLEEPER = {"command": "/bin/sleep", "args": ["3600"]}
SMALL = {"cpu": 0.05, "memory": "16MiB"}
JOB = {"name": "keeper", "task": SLEEPER, "replicas": 2, "resources": SMALL}
REPLACED = 90
"""Seconds for a killed voter's node to be declared dead and a standby promoted."""


def put_keys(state: Path, prefix: str, count: int) -> int:
    """Commit `count` keys in one entry (acknowledged once applied); its log index."""

    async def put(cluster: Cluster) -> int:
        leader = await cluster.wait_leader(FORM)
        puts = [KvPut(f"{prefix}{i}", f"value {i}") for i in range(count)]
        reply = await Management(cluster.bus, leader.voters).propose(*puts)
        assert all(outcome.ok for outcome in reply.outcomes), reply.outcomes
        return reply.index

    return on_cluster(state, put)


def keys_there(state: Path, prefix: str, count: int) -> None:
    """Each key read back, linearizably."""

    async def read(cluster: Cluster) -> list[str | None]:
        leader = await cluster.wait_leader(FORM)
        management = Management(cluster.bus, leader.voters)
        return [(await management.get(f"{prefix}{i}")).value for i in range(count)]

    assert on_cluster(state, read) == [f"value {i}" for i in range(count)]


def kill_every_node(state: Path) -> None:
    for node in StateDir(state).nodes():
        node.crash()
    wait_for(
        lambda: not any(r.alive() for n in StateDir(state).nodes() for r in n.records()),
        20,
        "every process of every node gone",
    )


def reconciled(here: Colony) -> None:
    """The job's instances running, one process each, as recorded."""
    here.running("keeper", 2)
    wait_for(
        lambda: harness.one_process_each("keeper", here.jobs.instances("keeper")),
        SETTLE,
        "one process per instance of keeper, on its recorded node",
        every=0.5,
    )


def replicas(state: Path) -> list[dict]:
    return json.loads(colony("snapshot", "list", "--json", state=state).stdout)["replicas"]


def replicated_past(state: Path, index: int) -> None:
    """Until the freshest replica holds Raft index `index` (what a restore takes)."""
    seen: list[dict] = []

    def fresh() -> bool:
        seen[:] = replicas(state)
        return max((r["index"] for r in seen if r["healthy"]), default=0) >= index

    try:
        wait_for(fresh, 30, f"a replica past index {index}", every=0.5)
    except TimeoutError as e:
        raise AssertionError(f"{e}; the manifest: {seen}") from None


def inspect(path: Path) -> dict:
    """`colony snapshot inspect FILE --json` (a file's command: no cluster, no state dir)."""
    argv = [sys.executable, "-m", "colony.cli", "snapshot", "inspect", str(path), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def consensus_log(state: Path, name: str) -> str:
    path = Path(state) / "nodes" / name / "logs" / "consensus.log"
    return path.read_text() if path.exists() else ""


@pytest.mark.timeout(900)
def test_save_seed_crash_and_restore(tmp_path):
    state = tmp_path / "cluster"
    with labelled_cluster(state, 4) as here:
        colony("job", "run", str(_write_job(tmp_path)), state=state)
        reconciled(here)
        put_keys(state, "a", 30)

        # a snapshot of the live cluster, inspected as a file
        saved = tmp_path / "backup.snapshot"
        colony("snapshot", "save", str(saved), state=state)
        header = inspect(saved)
        assert header["counts"]["kv"] >= 30 and header["counts"]["jobs"] == 1
        listed = json.loads(colony("snapshot", "list", "--json", state=state).stdout)
        assert any(s["index"] == header["index"] for s in listed["saved"])

        # a follower voter's node lost for good: the standby replaces it, seeded
        leader = on_cluster(state, lambda c: c.wait_leader(FORM)).node
        names = here.ids()
        voters = [n for n in ("node-1", "node-2", "node-3") if names[n] != leader]
        lost = voters[0]
        here.crash(names[lost], instances=True)
        wait_for(
            lambda: "new replica seeded from a snapshot" in consensus_log(state, "node-4"),
            REPLACED,
            "node-4 promoted and seeded from a replica snapshot",
            every=1,
        )
        here.running("keeper", 2, avoid={names[lost]})
        put_keys(state, "b", 30)

        # every node killed with -9, restarted on the same state: nothing lost
        kill_every_node(state)
        colony("up", "--detach", state=state)
        keys_there(state, "a", 30)
        keys_there(state, "b", 30)
        reconciled(here)

        # every node killed again, every voter's database and journal gone: back from the
        # object store, with every write the replicas held
        replicated_past(state, put_keys(state, "c", 20))
        kill_every_node(state)
        for node in StateDir(state).nodes():
            for item in (node.path / "consensus").iterdir():
                if item.name != "role.json":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        colony("up", "--restore", "replica", "--detach", state=state)
        for prefix, count in (("a", 30), ("b", 30), ("c", 20)):
            keys_there(state, prefix, count)
        reconciled(here)

    # the saved file into a new cluster: its keys and its job, instances reconciled
    restored = tmp_path / "restored"
    colony("up", "--restore", str(saved), "--detach", "--base-port",
           str(free_base_port(3)), state=restored)  # fmt: skip
    try:
        keys_there(restored, "a", 30)
        assert colony("kv", "get", "b0", state=restored, check=False).returncode != 0
        # its instances name the old cluster's nodes: they are replaced once those are
        # taken for dead (a minute unknown to membership), as any absent node's
        assert "keeper" in Colony(restored).jobs.jobs()
    finally:
        ids = Colony(restored).ids().values()
        down(restored)
        for node in ids:
            harness.kill_instances_of(node)


def test_restore_refuses_a_running_cluster_and_a_damaged_file(tmp_path):
    state = tmp_path / "cluster"
    with labelled_cluster(state, 1):
        saved = tmp_path / "one.snapshot"
        colony("snapshot", "save", str(saved), state=state)
        refused = colony("snapshot", "restore", str(saved), state=state, check=False)
        assert refused.returncode == 1
        assert "restore into a running cluster is refused" in refused.stderr
        consensus = state / "nodes" / "node-1" / "consensus"
        assert not (consensus / "restore.snapshot").exists()
    damaged = tmp_path / "damaged.snapshot"
    damaged.write_bytes(saved.read_bytes()[:-4096])
    fresh = tmp_path / "fresh"
    refused = colony("up", "--restore", str(damaged), "--detach", state=fresh, check=False)
    assert refused.returncode == 1
    assert "truncated" in refused.stderr
    assert not StateDir(fresh).nodes()  # nothing was started or written


def _write_job(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "keeper.yaml"
    path.write_text(yaml.safe_dump(JOB, sort_keys=False))
    return path
