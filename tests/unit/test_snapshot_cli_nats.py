"""`colony snapshot save` and `list`, `colony status`'s replication lines and `colony up
--restore replica`'s fetch, against a real nats-server: JetStream's object store and
key-value bucket hold what consensus and the snapshotters would put there, and small
responders answer on their subjects as they would."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from colony.cli import snapshot as cli_snapshot
from colony.cli.local.plan import ClusterError, plan
from colony.cli.local.write import cluster_id, write_nodes
from colony.cli.main import main
from colony.cli.status import NodeStatus, replication, replication_lines
from colony.shared import snapshot, subjects
from colony.shared.bus import ERROR_CODE_HEADER, ERROR_HEADER, Bus
from colony.shared.config import ConsensusSettings
from colony.shared.config import dumps as dump_config
from colony.shared.messages import (
    ConsensusStatus,
    ReplicaPosition,
    ReplicationStatus,
    SnapshotFetchReply,
    SnapshotFetchRequest,
    SnapshotSaveReply,
    VoterView,
    decode,
    encode,
)
from colony.shared.statedir import RESTORE_PENDING, RESTORE_SNAPSHOT, StateDir

LEADER = "v1"
CLUSTER = "0123456789abcde"


def database(path: Path, cluster: str = CLUSTER, index: int = 42) -> Path:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER)")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    db.execute("INSERT INTO jobs VALUES ('web')")
    meta = {snapshot.APPLIED: index, snapshot.APPLIED_TERM: 3}
    meta[snapshot.CLUSTER] = snapshot.cluster_number(cluster)
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.execute(f"PRAGMA user_version = {snapshot.SCHEMA}")
    db.close()
    return path


async def serve(bus: Bus, subject: str, answer: Callable[[bytes], Awaitable[bytes | tuple]]):
    """Answer requests on `subject` with `answer(data)`: bytes, or (code, description)
    for an error as Colony's services send one."""

    async def reply(msg) -> None:
        try:
            result = await answer(msg.data)
        except Exception as e:  # a bug of the fake shows as an error, not a timeout
            result = (500, f"the fake failed: {e!r}")
        if isinstance(result, tuple):
            code, description = result
            headers = {ERROR_CODE_HEADER: str(code), ERROR_HEADER: description}
            await bus.nc.publish(msg.reply, b"", headers=headers)
        else:
            await bus.nc.publish(msg.reply, result)

    sub = await bus.nc.subscribe(subject, cb=reply)
    await bus.nc.flush()
    return sub


async def colony(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in a thread (it runs its own event loop), this loop serving meanwhile."""

    def run() -> int:
        try:
            main(list(argv))
        except SystemExit as e:
            return e.code
        return 0

    code = await asyncio.to_thread(run)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def state(tmp_path, nats_server) -> StateDir:
    """A state dir whose one node (the voter LEADER) talks to `nats_server`."""
    state = StateDir(tmp_path / "state")
    node = state.node("node-1")
    node.create()
    (node.path / "node-id").write_text(LEADER + "\n")
    config = nats_server.node_config(LEADER)
    config.consensus = ConsensusSettings(voters=[LEADER], cluster_id=CLUSTER)
    node.config_file.write_text(dump_config(config))
    return state


async def fake_leader(bus: Bus, tmp_path: Path, *refusals: tuple):
    """A voter that leads, and saves snapshots as consensus does: into SNAPSHOT_BUCKET;
    its first answers are `refusals` ((code, description) each), if any."""
    refusals = list(refusals)
    status = ConsensusStatus(
        node=LEADER, role="leader", leader=LEADER, term=3, commit_index=42,
        applied_index=42, has_quorum=True, voters=[VoterView(LEADER, True)],
    )  # fmt: skip
    store = await bus.js.create_object_store(subjects.SNAPSHOT_BUCKET)
    db = database(tmp_path / "leader.db")
    saves = 0

    async def save(_data: bytes):
        nonlocal saves
        if refusals:
            return refusals.pop(0)
        saves += 1
        out = tmp_path / "made.snapshot"
        header = snapshot.make_from_file(db, out, made_by=LEADER, origin="save")
        name = f"saved/{header.cluster}/{header.index}-20261206T00000{saves}Z"
        await store.put(name, out.read_bytes())
        return encode(SnapshotSaveReply(node=LEADER, name=name, header=header, seconds=0.1))

    async def answer_status(_data: bytes):
        return encode(status)

    await serve(bus, subjects.consensus_status(LEADER).name, answer_status)
    await serve(bus, subjects.snapshot_save(LEADER).name, save)


# --- save ---------------------------------------------------------------------------------


async def test_save_downloads_the_leader_s_snapshot_and_verifies_it(
    capsys, bus, state, tmp_path, monkeypatch
):
    await fake_leader(bus, tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = await colony(capsys, "snapshot", "save", "--state-dir", str(state.path))
    assert (code, err) == (0, ""), err
    saved = tmp_path / f"colony-{CLUSTER}-42.snapshot"
    assert snapshot.verify(saved).index == 42
    assert "saved index 42 (term 3)" in out and f"saved/{CLUSTER}/42-" in out
    assert "jobs 1" in out
    assert not list(tmp_path.glob(".colony-*"))  # the download's temporary file is gone

    # the same again: the file is not written over
    code, _, err = await colony(capsys, "snapshot", "save", "--state-dir", str(state.path))
    assert code == 1 and "exists" in err and "--force" in err

    code, out, _ = await colony(
        capsys, "snapshot", "save", "b.snapshot", "--json", "--state-dir", str(state.path)
    )
    shown = json.loads(out)
    assert code == 0 and shown["file"] == "b.snapshot" and shown["node"] == LEADER
    assert shown["header"]["index"] == 42 and shown["header"]["counts"] == {"jobs": 1}


async def test_save_says_why_the_leader_could_not(capsys, bus, state, tmp_path):
    await fake_leader(bus, tmp_path, (500, "disk full"))
    target = tmp_path / "x.snapshot"
    code, _, err = await colony(
        capsys, "snapshot", "save", str(target), "--state-dir", str(state.path)
    )
    assert code == 1 and f"{LEADER} could not make the snapshot: disk full" in err
    assert not target.exists()


async def test_save_asks_again_when_the_leader_moved_meanwhile(capsys, bus, state, tmp_path):
    await fake_leader(bus, tmp_path, (409, f"not the leader: {LEADER} leads"))
    target = tmp_path / "y.snapshot"
    code, out, err = await colony(
        capsys, "snapshot", "save", str(target), "--state-dir", str(state.path)
    )
    assert (code, err) == (0, "") and "saved index 42" in out
    assert snapshot.verify(target).index == 42


async def test_save_without_a_leader_says_so_in_time(capsys, bus, state, tmp_path):
    began = time.monotonic()
    code, _, err = await colony(
        capsys, "snapshot", "save", "--timeout", "1", "--state-dir", str(state.path)
    )
    assert code == 1 and "no Raft leader" in err
    assert time.monotonic() - began < 10


# --- list ---------------------------------------------------------------------------------


async def manifest_of(bus: Bus, *positions: ReplicaPosition) -> None:
    kv = await bus.js.create_key_value(bucket=subjects.REPLICAS_BUCKET)
    for position in positions:
        await kv.put(position.node, encode(position))


async def test_list_shows_replicas_and_saved_snapshots(capsys, bus, state, tmp_path):
    now = time.time()
    await manifest_of(
        bus,
        ReplicaPosition(
            node=LEADER, target="nats://COLONY_REPLICA_v1", index=40, term=3, synced_at=now - 2
        ),
        ReplicaPosition(
            node="v2", target="file:///backups/v2", index=30, term=3, synced_at=now - 90,
            lag=12.5, healthy=False, problem="target unwritable: permission denied",
        ),
    )  # fmt: skip
    store = await bus.js.create_object_store(subjects.SNAPSHOT_BUCKET)
    await store.put(f"saved/{CLUSTER}/41-20261206T000000Z", b"x" * 3000)

    code, out, err = await colony(capsys, "snapshot", "list", "--state-dir", str(state.path))
    assert (code, err) == (0, "")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "node-1" in rows and "40" in rows["node-1"].split() and "healthy" in rows["node-1"]
    assert "unhealthy: target unwritable: permission denied" in rows["v2"]
    assert "12.5 s" in rows["v2"] and "1m30s ago" in rows["v2"]
    saved = rows[f"saved/{CLUSTER}/41-20261206T000000Z"].split()
    assert saved[1:3] == ["41", "2.9"]

    code, out, _ = await colony(
        capsys, "snapshot", "list", "--json", "--state-dir", str(state.path)
    )
    shown = json.loads(out)
    assert [(r["name"], r["index"], r["healthy"]) for r in shown["replicas"]] == [
        ("node-1", 40, True),
        ("v2", 30, False),
    ]
    [entry] = shown["saved"]
    assert entry["index"] == 41 and entry["size"] == 3000 and entry["age_seconds"] < 60


async def test_list_of_a_cluster_without_any_says_what_to_do(capsys, bus, state):
    code, out, _ = await colony(capsys, "snapshot", "list", "--state-dir", str(state.path))
    assert code == 0
    assert "replicas: none reported" in out and "colony snapshot save" in out


# --- colony status: replication problems ------------------------------------------------


async def test_status_shows_each_unhealthy_replica_and_why(bus):
    problem = "object store unavailable: stream COLONY_REPLICA_v1 has no leader"
    live = ReplicaPosition(node=LEADER, target="nats", index=9, healthy=False, problem=problem)

    async def answer(_data: bytes):
        return encode(ReplicationStatus(node=LEADER, voter=True, replica=live))

    await serve(bus, subjects.replication_status(LEADER).name, answer)
    # v2's snapshotter does not answer: its last manifest entry stands in
    await manifest_of(bus, ReplicaPosition(node="v2", target="nats", index=7), live)
    nodes = [
        NodeStatus(LEADER, "node-1", services=["consensus", "snapshotter"], raft="leader"),
        NodeStatus("v2", "node-2", services=["consensus"], raft="follower"),
        NodeStatus("n3", "node-3", services=["monitor"]),
    ]
    await replication(bus, nodes, timeout=1.0)
    assert [n.replica and n.replica.index for n in nodes] == [9, 7, None]
    assert [str(line) for line in replication_lines(nodes)] == [
        f"replication: node-1 unhealthy: {problem}"
    ]
    assert nodes[0].to_json()["replica"]["problem"] == problem


# --- colony up --restore replica: the fetch ---------------------------------------------------


@pytest.fixture
def stopped(tmp_path) -> StateDir:
    state = StateDir(tmp_path / "stopped")
    write_nodes(state, plan(3, 20000))
    return state


async def fake_snapshotter(bus: Bus, node: str, write: Callable[[Path], None] | None, code=0):
    async def fetch(data: bytes):
        if code:
            return code, "no replica in the manifest"
        request = decode(data, SnapshotFetchRequest)
        path = Path(request.path)
        write(path)
        header = snapshot.read_header(path)
        reply = SnapshotFetchReply(
            node=node, path=str(path), replica=node, header=header, seconds=0.1
        )
        return encode(reply)

    await serve(bus, subjects.snapshot_fetch(node).name, fetch)


def restore_files(state: StateDir) -> list[Path]:
    return sorted(state.path.glob(f"nodes/*/consensus/{RESTORE_SNAPSHOT}"))


async def test_fetch_delivers_the_freshest_replica_to_the_nodes_still_waiting(
    bus, stopped, tmp_path
):
    cli_snapshot.mark_pending(stopped.nodes())
    # node-3 stands by: its consensus gave the marker up, and must never get the file (a
    # later start as a voter would restore it over what it acknowledged meanwhile)
    (cli_snapshot.consensus_dir(stopped.node("node-3")) / RESTORE_PENDING).unlink()
    made = tmp_path / "replica.snapshot"
    snapshot.make_from_file(
        database(tmp_path / "r.db", cluster_id(stopped), 77), made, made_by="v2", origin="replica"
    )
    # node-1's snapshotter is not up (no responders): node-2's answers
    node_2 = stopped.node("node-2").node_id
    await fake_snapshotter(bus, node_2, lambda path: path.write_bytes(made.read_bytes()))
    steps = []
    header = await cli_snapshot.fetch_replica(
        bus, stopped, stopped.nodes(), time.monotonic() + 10, steps.append
    )
    assert header.index == 77
    delivered = restore_files(stopped)
    assert [p.parent.parent.name for p in delivered] == ["node-1", "node-2"]
    assert all(p.read_bytes() == made.read_bytes() for p in delivered)
    assert not list(stopped.path.glob(f"nodes/*/consensus/{cli_snapshot.FETCHED}"))
    assert any("index 77" in step for step in steps)


async def test_fetch_when_no_node_waits_any_more_says_so_and_delivers_nothing(
    bus, stopped, tmp_path
):
    made = tmp_path / "replica.snapshot"
    snapshot.make_from_file(
        database(tmp_path / "r.db", cluster_id(stopped), 5), made, made_by="v1", origin="replica"
    )
    node_1 = stopped.node("node-1").node_id
    await fake_snapshotter(bus, node_1, lambda path: path.write_bytes(made.read_bytes()))
    with pytest.raises(ClusterError, match="no node waits for the restore any more"):
        await cli_snapshot.fetch_replica(
            bus, stopped, stopped.nodes(), time.monotonic() + 10, lambda _: None
        )
    assert restore_files(stopped) == []
    assert not list(stopped.path.glob(f"nodes/*/consensus/{cli_snapshot.FETCHED}"))


async def test_fetch_refuses_a_damaged_or_foreign_replica_and_delivers_nothing(
    bus, stopped, tmp_path
):
    foreign = tmp_path / "foreign.snapshot"
    snapshot.make_from_file(database(tmp_path / "f.db", "fedcba987654321"), foreign,
                            made_by="x", origin="replica")  # fmt: skip
    node_1 = stopped.node("node-1").node_id
    await fake_snapshotter(bus, node_1, lambda path: path.write_bytes(foreign.read_bytes()))
    with pytest.raises(ClusterError, match="is from another cluster"):
        await cli_snapshot.fetch_replica(
            bus, stopped, stopped.nodes(), time.monotonic() + 10, lambda _: None
        )
    assert restore_files(stopped) == []
    assert not list(stopped.path.glob(f"nodes/*/consensus/{cli_snapshot.FETCHED}"))


async def test_fetch_without_a_replica_fails_after_a_grace_saying_why(bus, stopped, monkeypatch):
    monkeypatch.setattr(cli_snapshot, "MANIFEST_GRACE", 0.5)
    await fake_snapshotter(bus, stopped.node("node-1").node_id, None, code=404)
    began = time.monotonic()
    with pytest.raises(ClusterError, match="no replica in the manifest"):
        await cli_snapshot.fetch_replica(
            bus, stopped, stopped.nodes(), time.monotonic() + 30, lambda _: None
        )
    assert time.monotonic() - began < 5


async def test_fetch_with_no_snapshotter_gives_up_at_the_deadline(bus, stopped):
    with pytest.raises(ClusterError, match="no snapshotter answered"):
        await cli_snapshot.fetch_replica(
            bus, stopped, stopped.nodes(), time.monotonic() + 1, lambda _: None
        )
