"""The snapshotter's faults, with a real nats-server and a real litestream: litestream
killed -9, the replica folder unwritable, the replica bucket deleted. Each time: reported
unhealthy with the reason while the database goes on; back by itself; and a restore
afterwards is the database exactly as it was at the index it says."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import sys

import msgspec
import psutil
import pytest
from _snapshotter import Running, VoterDb, gone, keep_writing, snapshotter_config

from colony.harness.processes import poll
from colony.shared import snapshot, subjects, tasks
from colony.shared.messages import ReplicaPosition, SnapshotFetchRequest, decode

NODE = "v1"


async def entry_now(bus) -> ReplicaPosition | None:
    try:
        kv = await bus.js.key_value(subjects.REPLICAS_BUCKET)
        return decode((await kv.get(NODE)).value, ReplicaPosition)
    except Exception:
        return None


async def until(bus, what: str, check, timeout: float = 20) -> ReplicaPosition:
    async def seen() -> ReplicaPosition | None:
        entry = await entry_now(bus)
        return entry if entry is not None and check(entry) else None

    return await poll(seen, timeout, what)


async def fetched_is_consistent(bus, db: VoterDb, path) -> int:
    """Fetch a snapshot; check it holds exactly the database's content at its index."""
    reply = await bus.request(
        subjects.snapshot_fetch(NODE), SnapshotFetchRequest(path=str(path)), timeout=30
    )
    header = snapshot.extract(path, path.with_suffix(".db"))
    conn = sqlite3.connect(path.with_suffix(".db"))
    try:
        kv = dict(conn.execute("SELECT key, value FROM kv").fetchall())
        (applied,) = conn.execute("SELECT value FROM meta WHERE name = 'last_applied'").fetchone()
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    finally:
        conn.close()
    assert check == "ok"
    assert header.index == applied == reply.header.index
    assert kv == db.kv_at(applied)
    return applied


@pytest.fixture
async def busy(nats_server, tmp_path, request):
    """A voter's database written every 50 ms, with its snapshotter; target per test."""
    target = getattr(request, "param", "nats")
    target = target.replace("TMP", str(tmp_path))
    config = snapshotter_config(nats_server, NODE, target=target)
    db = VoterDb(config.node.dir)
    running = Running(config)
    writing = asyncio.create_task(keep_writing(db))
    yield running, db
    await tasks.cancel(writing)
    db.close()
    assert await running.stop() == 0


async def test_litestream_killed_is_restarted_and_a_restore_is_consistent(busy, bus, tmp_path):
    running, db = busy
    await until(bus, "a healthy replica", lambda e: e.healthy and e.index > 10)
    pid = running.service.sidecar.pid
    os.kill(pid, signal.SIGKILL)
    entry = await until(bus, "litestream restarted", lambda e: e.restarts == 1 and e.healthy)
    assert running.service.sidecar.pid not in (0, pid)
    mark = db.index
    await until(bus, "the replica past the kill", lambda e: e.healthy and e.index > mark)
    applied = await fetched_is_consistent(bus, db, db.path.parent / "after-kill.snapshot")
    assert applied > mark and entry.restarts == 1


@pytest.mark.parametrize("busy", ["file://TMP/replicas"], indirect=True)
async def test_an_unwritable_folder_is_reported_and_replication_resumes(busy, bus, tmp_path):
    _running, db = busy
    folder = tmp_path / "replicas" / NODE
    await until(bus, "a healthy replica", lambda e: e.healthy and e.index > 10)
    # Unwritable even for root: the replica's folder is a plain file for a while.
    shutil.move(folder, tmp_path / "away")
    folder.write_text("not a folder")
    entry = await until(bus, "the replica unhealthy", lambda e: not e.healthy)
    assert "litestream" in entry.problem and "not a directory" in entry.problem
    stuck = entry.index
    written = db.index
    await poll(lambda: db.index > written + 20, 10, "the database to go on meanwhile")
    folder.unlink()
    shutil.move(tmp_path / "away", folder)
    mark = db.index
    entry = await until(bus, "the replica healthy again", lambda e: e.healthy and e.index > mark)
    assert entry.index > stuck
    assert await fetched_is_consistent(bus, db, db.path.parent / "after.snapshot") > mark


async def test_a_deleted_bucket_is_reported_made_again_and_replication_resumes(busy, bus, tmp_path):
    _running, db = busy
    await until(bus, "a healthy replica", lambda e: e.healthy and e.index > 10)
    await bus.js.delete_object_store(subjects.replica_bucket(NODE))
    entry = await until(bus, "the replica unhealthy", lambda e: not e.healthy)
    assert "litestream" in entry.problem or "object store" in entry.problem
    mark = db.index
    await until(bus, "the replica healthy again", lambda e: e.healthy and e.index > mark)
    assert await fetched_is_consistent(bus, db, db.path.parent / "after.snapshot") > mark


SIDECAR = """
import asyncio, logging, sqlite3, sys
from pathlib import Path
from colony.shared.config import SnapshotterSettings
from colony.snapshotter import litestream

async def main(folder):
    sqlite3.connect(folder / "db").execute("CREATE TABLE t (x)")
    config = folder / "litestream.yml"
    litestream.write_config(config, litestream.render(
        folder / "db", f"file://{folder}/replica", SnapshotterSettings()))
    nothing = lambda *args: None
    sidecar = litestream.Sidecar(config, logging.getLogger(), nothing, nothing, nothing,
                                 record=folder / "litestream.json")
    running = asyncio.create_task(sidecar.run())
    while not sidecar.pid:
        await asyncio.sleep(0.02)
    print(sidecar.pid, flush=True)
    await running

asyncio.run(main(Path(sys.argv[1])))
"""


async def test_litestream_dies_with_a_snapshotter_killed_9(tmp_path):
    """The parent-death signal: no litestream outlives its snapshotter (two writers on one
    replica would corrupt it); the record it leaves names it for the next one to check."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIDECAR, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child = int(await asyncio.wait_for(parent.stdout.readline(), 20))
        assert psutil.Process(child).name() == "litestream"
        record = msgspec.json.decode((tmp_path / "litestream.json").read_bytes())
        assert record["pid"] == child and record["pgid"] == child
    finally:
        parent.kill()
        await parent.wait()
    await poll(lambda: gone(child), 10, "litestream to die with its parent")
