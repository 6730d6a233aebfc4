"""The snapshotter with a real nats-server and a real litestream: replication, the manifest,
fetches, and who replicates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import msgspec
import psutil
import pytest
from _snapshotter import Running, VoterDb, gone, keep_writing, snapshotter_config
from _voters import running
from nats.js.api import KeyValueConfig

from colony.harness.processes import poll
from colony.shared import snapshot, subjects, tasks
from colony.shared.bus import NoResponders, RemoteError
from colony.shared.config import SnapshotterSettings
from colony.shared.management import Management
from colony.shared.messages import (
    ConsensusStatus,
    KvPut,
    ReplicaPosition,
    ReplicationStatus,
    ReplicationStatusRequest,
    SnapshotFetchRequest,
    VoterView,
    decode,
    encode,
)
from colony.shared.statedir import ProcessRecord
from colony.snapshotter.service import Snapshotter

NODE = "v1"


async def manifest_entry(bus, node: str = NODE) -> ReplicaPosition | None:
    try:
        kv = await bus.js.key_value(subjects.REPLICAS_BUCKET)
        return decode((await kv.get(node)).value, ReplicaPosition)
    except Exception:
        return None


async def until_replica_holds(bus, index: int, timeout: float = 20) -> ReplicaPosition:
    async def holds() -> ReplicaPosition | None:
        entry = await manifest_entry(bus)
        return entry if entry and entry.healthy and entry.index >= index else None

    return await poll(holds, timeout, f"the manifest to say the replica holds index {index}")


async def status_of(bus, node: str = NODE) -> ReplicationStatus | None:
    """The snapshotter's status (None: not serving yet)."""
    try:
        return await bus.request(
            subjects.replication_status(node), ReplicationStatusRequest(), timeout=2
        )
    except NoResponders:
        return None


def restored_kv(path) -> tuple[int, dict[str, int]]:
    folder = path.parent / "extracted"
    header = snapshot.extract(path, folder / "db")
    conn = sqlite3.connect(folder / "db")
    try:
        return header.index, dict(conn.execute("SELECT key, value FROM kv").fetchall())
    finally:
        conn.close()


@pytest.fixture
def voter(nats_server):
    config = snapshotter_config(nats_server, NODE)
    db = VoterDb(config.node.dir)
    yield config, db
    db.close()


async def test_a_voter_replicates_to_its_bucket_and_a_fetch_restores_it(voter, bus, tmp_path):
    config, db = voter
    for i in range(30):
        db.write(f"k{i}")
    running = Running(config)
    writing = asyncio.create_task(keep_writing(db))
    try:
        entry = await until_replica_holds(bus, 30)
        assert entry.node == NODE and entry.problem == ""
        assert entry.target == f"{config.nats.servers[0]}/{subjects.replica_bucket(NODE)}"
        await tasks.cancel(writing)
        final = db.index
        entry = await until_replica_holds(bus, final)  # an idle database: all of it, in the end
        assert entry.index == final and entry.term == 1 and entry.lag == 0
        assert entry.synced_at > 0 and entry.replica_bytes > 0 and entry.restarts == 0

        status = await bus.request(
            subjects.replication_status(NODE), ReplicationStatusRequest(), timeout=2
        )
        assert status.voter and status.replica is not None and status.replica.index == final
        assert psutil.Process(status.litestream_pid).name() == "litestream"

        path = Path(config.node.dir) / "fetched" / "seed.snapshot"
        reply = await bus.request(
            subjects.snapshot_fetch(NODE), SnapshotFetchRequest(path=str(path)), timeout=30
        )
        assert reply.replica == NODE and reply.path == str(path)
        assert reply.header.origin == "replica" and reply.header.made_by == NODE
        assert reply.header.index == final and reply.header.cluster == "0123456789abcde"
        assert reply.header.counts == {"kv": len(db.kv())}  # litestream's own tables left out
        index, kv = restored_kv(path)
        assert index == final and kv == db.kv()
        assert not any(name.startswith(".fetch-") for name in os.listdir(path.parent))
        config_file = f"{config.node.dir}/snapshotter/litestream.yml"
        assert os.stat(config_file).st_mode & 0o777 == 0o600
    finally:
        await tasks.cancel(writing)
        assert await running.stop() == 0
    assert not psutil.pid_exists(status.litestream_pid) or (
        psutil.Process(status.litestream_pid).status() == psutil.STATUS_ZOMBIE
    )


async def test_a_fetch_asking_for_more_than_any_replica_holds_is_refused(voter, bus, tmp_path):
    config, db = voter
    db.write("a")
    running = Running(config)
    try:
        await until_replica_holds(bus, 1)
        path = Path(config.node.dir) / "seed.snapshot"
        request = SnapshotFetchRequest(path=str(path), min_index=1000)
        with pytest.raises(RemoteError, match=r"no healthy replica .* index 1000 or more"):
            await bus.request(subjects.snapshot_fetch(NODE), request, timeout=30)
        assert not path.exists()
    finally:
        assert await running.stop() == 0


async def test_a_file_target_gets_a_folder_per_node(nats_server, bus, tmp_path):
    config = snapshotter_config(nats_server, NODE, target=f"file://{tmp_path}/replicas")
    db = VoterDb(config.node.dir)
    running = Running(config)
    writing = asyncio.create_task(keep_writing(db))
    try:
        entry = await until_replica_holds(bus, 10)
        assert entry.target == f"file://{tmp_path}/replicas/{NODE}"
        assert (tmp_path / "replicas" / NODE / "ltx").is_dir()
        await tasks.cancel(writing)
        entry = await until_replica_holds(bus, db.index)
        assert entry.replica_bytes > 0
        path = Path(config.node.dir) / "seed.snapshot"
        reply = await bus.request(
            subjects.snapshot_fetch(NODE), SnapshotFetchRequest(path=str(path)), timeout=30
        )
        assert restored_kv(path) == (db.index, db.kv()) and reply.header.index == db.index
    finally:
        await tasks.cancel(writing)
        db.close()
        assert await running.stop() == 0


async def test_a_node_that_is_no_voter_runs_no_litestream(nats_server, bus, tmp_path):
    config = snapshotter_config(nats_server, NODE, voters=["someone-else"])
    db = VoterDb(config.node.dir)  # a database left behind: still not to be replicated
    db.write("a")
    running = Running(config)
    try:
        status = await poll(lambda: status_of(bus), 10, "a status")
        assert not status.voter and status.replica is None and status.litestream_pid == 0
    finally:
        db.close()
        assert await running.stop() == 0


async def test_a_promoted_node_replicates_and_once_retired_stops_and_says_it_is_stale(
    nats_server, bus, tmp_path
):
    config = snapshotter_config(nats_server, NODE, voters=["someone-else"])
    db = VoterDb(config.node.dir)
    role = db.path.parent / "role.json"
    role.write_text(json.dumps({"voter": True, "voters": [NODE]}))  # promoted since
    running = Running(config)
    writing = asyncio.create_task(keep_writing(db))
    try:
        await until_replica_holds(bus, 5)
        pid = running.service.sidecar.pid
        role.write_text(json.dumps({"voter": False, "voters": []}))  # retired

        async def retired() -> ReplicaPosition | None:
            entry = await manifest_entry(bus)
            return entry if entry and not entry.healthy else None

        entry = await poll(retired, 10, "the manifest to mark the replica stale")
        assert "not a voter" in entry.problem
        await poll(lambda: not psutil.pid_exists(pid) or gone(pid), 10, "litestream to stop")
    finally:
        await tasks.cancel(writing)
        db.close()
        assert await running.stop() == 0


async def test_a_replaced_database_is_replicated_from_a_snapshot_of_it(voter, bus, tmp_path):
    """A restore renames another database in (here: an older copy, as from a snapshot):
    the replica then holds that one, not a mix of both."""
    config, db = voter
    older = tmp_path / "older.db"
    for i in range(10):
        db.write(f"k{i}")
    db.conn.execute(f"VACUUM INTO '{older}'")
    older_kv, older_index = db.kv(), db.index
    running = Running(config)
    try:
        for i in range(10, 40):
            db.write(f"k{i}")
        await until_replica_holds(bus, 40)
        db.close()
        for suffix in ("-wal", "-shm"):
            (db.path.parent / f"management.db{suffix}").unlink(missing_ok=True)
        os.replace(older, db.path)

        async def back_to_older() -> ReplicaPosition | None:
            entry = await manifest_entry(bus)
            return entry if entry and entry.healthy and entry.index == older_index else None

        await poll(back_to_older, 20, "the replica to hold the replaced database")
        path = Path(config.node.dir) / "after.snapshot"
        await bus.request(
            subjects.snapshot_fetch(NODE), SnapshotFetchRequest(path=str(path)), timeout=30
        )
        assert restored_kv(path) == (older_index, older_kv)
    finally:
        assert await running.stop() == 0


async def test_a_real_voter_database_is_replicated_and_fetched_whole(nats_server, bus, tmp_path):
    """The consensus service's own database (one voter): what a fetch brings back holds
    every key written, at an index the voter applied, with its term and cluster."""
    async with running(nats_server, tmp_path, ["v1"]):
        client = Management(bus, ["v1"])
        for i in range(25):
            await client.propose(KvPut(f"key-{i}", str(i)))
        live = sqlite3.connect(
            f"file:{nats_server.workdir}/v1/consensus/management.db?mode=ro", uri=True
        )
        try:
            meta = dict(live.execute("SELECT name, value FROM meta").fetchall())
            kv = live.execute("SELECT key, value, version FROM kv ORDER BY key").fetchall()
        finally:
            live.close()
        snapshotter = Running(snapshotter_config(nats_server, "v1"))
        try:
            entry = await until_replica_holds(bus, meta["last_applied"])
            path = nats_server.workdir / "v1" / "v1.snapshot"
            reply = await bus.request(
                subjects.snapshot_fetch("v1"), SnapshotFetchRequest(path=str(path)), timeout=30
            )
        finally:
            assert await snapshotter.stop() == 0
    assert reply.header.index >= entry.index >= meta["last_applied"]
    assert reply.header.term >= entry.term >= meta["applied_term"] >= 1
    assert reply.header.cluster == snapshot.cluster_name(meta["cluster"])
    db = tmp_path / "fetched.db"
    snapshot.extract(path, db)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT key, value, version FROM kv ORDER BY key").fetchall() == kv
    finally:
        conn.close()


async def stream_replicas(bus, stream: str) -> int:
    return (await bus.js.stream_info(stream)).config.num_replicas


async def test_buckets_get_a_replica_per_voter_up_to_3_in_a_cluster(nats_cluster, cluster_bus):
    config = snapshotter_config(nats_cluster.servers[0], NODE, voters=[NODE, "v2", "v3"])
    db = VoterDb(config.node.dir)
    db.write("a")
    running = Running(config)
    try:
        await until_replica_holds(cluster_bus, 1, timeout=30)
        assert await stream_replicas(cluster_bus, f"OBJ_{subjects.replica_bucket(NODE)}") == 3
        assert await stream_replicas(cluster_bus, f"KV_{subjects.REPLICAS_BUCKET}") == 3
    finally:
        db.close()
        assert await running.stop() == 0


async def test_a_lone_server_gets_single_replica_buckets(nats_server, bus):
    config = snapshotter_config(nats_server, NODE, voters=[NODE, "v2", "v3"])
    db = VoterDb(config.node.dir)
    db.write("a")
    running = Running(config)
    try:
        await until_replica_holds(bus, 1)
        assert await stream_replicas(bus, f"OBJ_{subjects.replica_bucket(NODE)}") == 1
        assert await stream_replicas(bus, f"KV_{subjects.REPLICAS_BUCKET}") == 1
    finally:
        db.close()
        assert await running.stop() == 0


async def test_delete_markers_are_swept_and_objects_put_again_are_kept(nats_server, bus):
    """Litestream names every sync's file anew and deletes old ones: each deletion leaves
    a marker in the object store, swept so an idle bucket does not grow for good."""
    service = Snapshotter()
    service.ctx = SimpleNamespace(bus=bus, log=logging.getLogger("test"))
    service.settings = SnapshotterSettings(target="nats")
    service.bucket = subjects.replica_bucket(NODE)
    store = await bus.js.create_object_store(service.bucket)
    for name in ("ltx/0/a", "ltx/0/b", "ltx/0/c"):
        await store.put(name, b"x" * 100)
    await store.delete("ltx/0/a")
    await store.delete("ltx/0/b")
    await store.put("ltx/0/b", b"again")  # after a reset litestream may use a name again
    stream = f"OBJ_{service.bucket}"
    before = (await bus.js.stream_info(stream)).state.messages
    await service._sweep()
    assert (await bus.js.stream_info(stream)).state.messages == before - 1  # a's marker
    names = {i.name: i.deleted for i in await store.list(ignore_deletes=False)}
    assert names == {"ltx/0/b": False, "ltx/0/c": False}
    assert (await store.get("ltx/0/b")).data == b"again"


async def test_a_voter_without_its_database_yet_leaves_its_last_entry_alone(nats_server, bus):
    """Started before consensus wrote (or restored) its database: the replica still holds
    what the manifest says, and a fetch may want it."""
    config = snapshotter_config(nats_server, NODE)
    kv = await bus.js.create_key_value(KeyValueConfig(bucket=subjects.REPLICAS_BUCKET))
    before = ReplicaPosition(node=NODE, target="nats://x/B", index=50, term=3)
    await kv.put(NODE, encode(before))
    running = Running(config)
    try:

        async def waiting():
            status = await status_of(bus)
            return status and status.replica and "database yet" in status.replica.problem

        await poll(waiting, 10, "the snapshotter to wait for the database")
        for _ in range(3):  # several reports' worth
            await asyncio.sleep(config.snapshotter.report_interval)
        assert await manifest_entry(bus) == before
    finally:
        assert await running.stop() == 0


async def test_a_fetch_writes_only_inside_its_node_state_folder(voter, bus, tmp_path):
    config, db = voter
    db.write("a")
    running = Running(config)
    try:
        await poll(lambda: status_of(bus), 10, "the snapshotter to serve")
        inside = Path(config.node.dir)
        for path in (tmp_path / "elsewhere.snapshot", inside / ".." / "v2" / "x.snapshot"):
            request = SnapshotFetchRequest(path=str(path))
            with pytest.raises(RemoteError, match="only inside this node's state folder") as e:
                await bus.request(subjects.snapshot_fetch(NODE), request, timeout=10)
            assert e.value.code == 400
            assert not path.exists()
    finally:
        assert await running.stop() == 0


def raft_status(role: str, voters: list[str]) -> ConsensusStatus:
    return ConsensusStatus(
        node=NODE, role=role, leader=NODE if role == "leader" else "v2", term=3,
        commit_index=1, applied_index=1, has_quorum=True,
        voters=[VoterView(node=v, connected=True) for v in voters],
    )  # fmt: skip


async def test_replicas_of_nodes_that_are_no_voters_are_never_fetched_and_marked_stale(
    voter, bus, tmp_path
):
    """A lost history's replica (a higher term, a node no longer a voter) is passed over
    by a fetch, and the leader's snapshotter marks it stale in the manifest."""
    config, db = voter
    said = {"status": raft_status("follower", [NODE, "v2"])}

    async def consensus(msg) -> None:
        await msg.respond(encode(said["status"]))

    sub = await bus.nc.subscribe(subjects.consensus_status(NODE).name, cb=consensus)
    for i in range(10):
        db.write(f"k{i}")
    running = Running(config)
    try:
        entry = await until_replica_holds(bus, db.index)
        kv = await bus.js.key_value(subjects.REPLICAS_BUCKET)
        # the same replica under another name: a fetch that picked it would succeed
        gone = msgspec.structs.replace(entry, node="gone", term=99)
        await kv.put("gone", encode(gone))
        path = Path(config.node.dir) / "seed.snapshot"
        reply = await bus.request(
            subjects.snapshot_fetch(NODE), SnapshotFetchRequest(path=str(path)), timeout=30
        )
        assert reply.replica == NODE
        assert (await manifest_entry(bus, "gone")).healthy  # a follower marks nothing

        said["status"] = raft_status("leader", [NODE, "v2"])

        async def marked() -> ReplicaPosition | None:
            found = await manifest_entry(bus, "gone")
            return found if found and not found.healthy else None

        found = await poll(marked, 10, "the leader's snapshotter to mark the entry stale")
        assert "not a voter any more" in found.problem and found.term == 99
        assert (await manifest_entry(bus)).healthy  # its own entry stays as it was
    finally:
        await sub.unsubscribe()
        assert await running.stop() == 0


async def test_a_litestream_left_running_by_a_killed_snapshotter_is_killed_at_start(
    nats_server, bus, tmp_path
):
    config = snapshotter_config(nats_server, "standby", voters=["someone-else"])
    # not this test's child (as a leftover is not the new snapshotter's): its own group
    starter = await asyncio.create_subprocess_exec(
        "setsid", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!", stdout=asyncio.subprocess.PIPE
    )
    pid = int((await starter.communicate())[0])
    try:
        record = Path(config.node.dir) / "snapshotter" / "litestream.json"
        record.parent.mkdir(parents=True)
        found = ProcessRecord.of("litestream", pid, ["litestream", "replicate"])
        record.write_bytes(msgspec.json.encode(found))
        running = Running(config)
        try:
            await poll(lambda: gone(pid) and not record.exists(), 10, "the leftover killed")
        finally:
            assert await running.stop() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
