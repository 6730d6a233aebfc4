"""A voter's snapshots of its management database: saved to the object store, restored at
start, and the seed a new replica starts from (colony.shared.snapshot is the format).

- **Save** (`save`): the Raft leader writes a snapshot, consistent at one index, to the
  `SNAPSHOT_BUCKET` object store; `colony snapshot save` downloads it from there.
- **Restore** (`restore_at_start`): `colony snapshot restore` (or `colony up --restore`)
  leaves `restore.snapshot` in a stopped voter's consensus folder; at start the voter
  checks it whole, puts its database in place of the replica's files, and starts from it
  (a folder holding only management.db starts its Raft log at the database's index), in
  a term above any the lost history reached (`FIRST_TERM`). `restore.pending` says a
  snapshot is on its way (`colony up --restore replica`): the voter waits for it, until
  it comes or a join (the node promoted: it never restores) deletes both. A bad snapshot
  leaves everything as it was.
- **Seed** (`seed_from_replica`): a newly promoted voter asks its own node's snapshotter
  for the freshest replica and starts from it, catching up from the leader's log after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext

from colony.shared import snapshot, subjects
from colony.shared.bus import Bus, BusError
from colony.shared.config import ConsensusSettings
from colony.shared.messages import SnapshotFetchRequest, SnapshotHeader
from colony.shared.statedir import RESTORE_PENDING as PENDING
from colony.shared.statedir import RESTORE_SNAPSHOT as RESTORE

DATABASE = "management.db"
FIRST_TERM = "restored.term"
"""In the consensus folder, from a restore until its replica's Raft log is written: the
term that log starts at (`restored_term`). A file, so a crash in between keeps it."""
RESTORING = "restoring.db"
"""The restore's database, checked whole, before it replaces the replica's files."""
SEED = "seed.snapshot"
SAVING = "saving"
"""The consensus folder's subfolder where a save writes its file before uploading it."""
WAIT_POLL = 0.2
"""Seconds between looks for the snapshot a pending restore waits for."""
SEED_TIMEOUT = 60.0
"""Seconds the snapshotter has to restore a replica for a seed (else: start empty)."""

log = logging.getLogger("colony.consensus.snapshots")


def cluster_of(settings: ConsensusSettings, secret: bytes) -> str:
    """This cluster's id: the configured one, else the one its secret implies."""
    return settings.cluster_id or snapshot.cluster_id_of(secret)


def drop_replica(state_dir: Path, keep: set[str]) -> None:
    """Delete the replica's files (database, journal, raft snapshot) and folders (what
    litestream keeps beside the database, `.management.db-litestream/`, a save's leftovers):
    everything in the consensus folder but what `keep` names. Litestream's folder holds its
    position in the old database's WAL: left there, it would describe a database that is gone."""
    for path in state_dir.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


# --- save ----------------------------------------------------------------------------


def saved_name(cluster: str, index: int, at: float) -> str:
    """The object name a save gets when the request names none."""
    return f"saved/{cluster}/{index}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}"


async def save(
    js: JetStreamContext,
    db: Path,
    folder: Path,
    *,
    me: str,
    cluster: str,
    replicas: int,
    name: str = "",
) -> tuple[str, SnapshotHeader]:
    """Snapshot the database at `db` (a live one: SQLite's online backup reads one state)
    through a file in `folder`, and put it in the `SNAPSHOT_BUCKET` object store (made if
    missing, on `replicas` servers); (object name, header). Raises BusError."""
    path = folder / f"{os.getpid()}-{time.monotonic_ns()}.snapshot"
    try:
        header = await asyncio.to_thread(_make, db, path, me)
        name = name or saved_name(cluster or header.cluster, header.index, header.made_at)
        await _upload(js, path, name, header, replicas)
    finally:
        path.unlink(missing_ok=True)
    return name, header


def _make(db: Path, path: Path, me: str) -> SnapshotHeader:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.iterdir():  # a crash's (the service saves one at a time)
        stale.unlink()
    return snapshot.make_from_file(db, path, made_by=me, origin="save")


async def _upload(
    js: JetStreamContext, path: Path, name: str, header: SnapshotHeader, replicas: int
) -> None:
    bucket = subjects.SNAPSHOT_BUCKET
    try:
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = ObjectStoreConfig(
                description="snapshots saved with colony snapshot save",
                storage=StorageType.FILE,
                replicas=replicas,
            )
            store = await js.create_object_store(bucket, config=config)
        # The header rides in the object's description: listing shows what each holds.
        meta = ObjectMeta(name=name, description=msgspec.json.encode(header).decode())
        # Read in chunks (nats-py reads each in a thread), never whole.
        with await asyncio.to_thread(open, path, "rb") as f:
            await store.put(name, f, meta=meta)
    except (TimeoutError, nats.errors.Error) as e:
        why = str(e) or type(e).__name__
        raise BusError(f"putting snapshot {name!r} into object store {bucket}: {why}") from None


# --- restore -------------------------------------------------------------------------


async def restore_at_start(
    state_dir: Path, cluster: str, voter: bool, keep: set[str], waiting=None
) -> SnapshotHeader | None:
    """Carry out a restore the CLI left in `state_dir` (see the module's docstring); the
    header restored, None if there was none. `keep`: files of the folder that are no
    replica's (role.json). `waiting()` is called once if it waits for a pending one.
    Raises BadSnapshot (nothing changed) if the snapshot cannot be restored here."""
    restore, pending = state_dir / RESTORE, state_dir / PENDING
    if not voter:
        for marker in (restore, pending):
            if marker.exists():
                marker.unlink()
                log.warning("not a voter: dropped its restore", extra={"file": marker.name})
        return None
    if pending.exists() and not restore.exists():
        log.warning("waiting for a restore", extra={"file": str(restore)})
        if waiting is not None:
            waiting()
        # The CLI writes the snapshot; a join (this node promoted: it starts from the
        # leader, never from a restore) deletes the marker. Nothing to await either by.
        while pending.exists() and not restore.exists():  # noqa: ASYNC110
            await asyncio.sleep(WAIT_POLL)
    if not restore.exists():
        return None
    began = time.monotonic()
    header = await asyncio.to_thread(_restore, state_dir, cluster, keep)
    log.warning(
        "restored from snapshot",
        extra={
            "index": header.index, "term": header.term, "origin": header.origin,
            "made_by": header.made_by, "seconds": round(time.monotonic() - began, 3),
        },
    )  # fmt: skip
    return header


def _restore(state_dir: Path, cluster: str, keep: set[str]) -> SnapshotHeader:
    source, restoring = state_dir / RESTORE, state_dir / RESTORING
    header = snapshot.read_header(source)
    snapshot.check_fits(header, str(source), cluster)
    check_term(header, str(source))
    # Checked whole (checksum, SQLite's check) before anything of the replica goes.
    snapshot.extract(source, restoring)
    drop_replica(state_dir, keep | {RESTORE, PENDING, RESTORING})
    os.replace(restoring, state_dir / DATABASE)
    # A new history: its terms go above every term the lost one reached (the manifest and
    # elections then prefer it), a later restore's higher still. Seconds since the epoch
    # pass any term elections made; the log's two seeded entries keep the snapshot's term.
    term = state_dir / f"{FIRST_TERM}.tmp"
    term.write_text(str(max(header.term, int(time.time()))))
    os.replace(term, state_dir / FIRST_TERM)
    # The marker goes last: a crash before it does the restore again, from the start.
    (state_dir / PENDING).unlink(missing_ok=True)
    source.unlink(missing_ok=True)  # (a join may have deleted it: it never restores)
    return header


def check_term(header: SnapshotHeader, where: str) -> None:
    """Refuse a snapshot of applied entries that does not say their term: the Raft log a
    replica starts from it would begin at index 1, not at the snapshot's index, and every
    entry up to there would be taken for a replay."""
    if header.index > 0 and header.term <= 0:
        raise snapshot.BadSnapshot(
            f"{where} holds entries up to index {header.index} but no term for them (term "
            f"{header.term}): its database never recorded the term it applied (meta "
            "applied_term), so a Raft log cannot start from it; use a snapshot that says it"
        )


def restored_term(state_dir: Path) -> int:
    """The Raft term a restored replica's log starts at (0: not restored)."""
    try:
        return int((state_dir / FIRST_TERM).read_text())
    except FileNotFoundError:
        return 0


def log_started(state_dir: Path) -> None:
    """The replica's Raft log is written (from its term): the restore is complete."""
    (state_dir / FIRST_TERM).unlink(missing_ok=True)


# --- seed ----------------------------------------------------------------------------


async def seed_from_replica(
    bus: Bus, me: str, state_dir: Path, cluster: str, timeout: float = SEED_TIMEOUT
) -> str | None:
    """Fill a new replica's empty folder with the freshest replica snapshot, fetched by
    this node's snapshotter; where it came from, or None (any failure: the reason is
    logged, and the replica starts empty, fed by the leader)."""
    path = state_dir / SEED
    began = time.monotonic()
    try:
        reply = await bus.request(
            subjects.snapshot_fetch(me), SnapshotFetchRequest(path=str(path)), timeout
        )
        header = await asyncio.to_thread(_seed, path, state_dir / DATABASE, cluster)
    except (BusError, snapshot.BadSnapshot, OSError) as e:
        log.warning(
            "new replica not seeded from a snapshot: it starts empty, fed by the leader",
            extra={"node": me, "reason": str(e)},
        )
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    seconds = round(time.monotonic() - began, 3)
    log.warning(
        "new replica seeded from a snapshot",
        extra={
            "node": me, "replica": reply.replica, "index": header.index, "term": header.term,
            "seconds": seconds,
        },
    )  # fmt: skip
    return f"{reply.replica}'s replica, index {header.index} (term {header.term})"


def _seed(path: Path, db: Path, cluster: str) -> SnapshotHeader:
    header = snapshot.read_header(path)
    where = f"the replica snapshot {path}"
    snapshot.check_fits(header, where, cluster)
    if header.index <= 0:
        raise snapshot.BadSnapshot(f"{where} holds no applied entry")
    check_term(header, where)
    return snapshot.extract(path, db)
