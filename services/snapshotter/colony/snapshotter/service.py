"""The snapshotter service: litestream beside every voter, the replica manifest, fetches.

Every node runs it. While its node is a voter with a management database
(consensus/role.json says so, or the config's voters when there is none), it
runs `litestream replicate` (`Sidecar`) on that database, to the configured
target: its own object store bucket in the cluster's JetStream (`nats`), a
folder (`file:///DIR`, DIR/<node>) or S3. Litestream's own log tells how far the
replica got (`Tracker`); every `report_interval`, and whenever its health
changes, the voter's `ReplicaPosition` goes into the manifest (the
`REPLICAS_BUCKET` key-value bucket, key = node id).

It stops litestream when the node stops being a voter or the database goes, and
restarts it when the database is replaced (a restore, a seed: another file).

`snapshot_fetch` restores the freshest healthy replica in the manifest (by Raft
term, then index; any voter's) with `litestream restore` and writes it as a
snapshot file (colony.shared.snapshot) where asked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import msgspec
import nats.js.errors
from nats.js.api import KeyValueConfig, ObjectStoreConfig

from colony.shared import snapshot, statedir, subjects, tasks
from colony.shared.bus import BusError
from colony.shared.messages import (
    ConsensusStatus,
    ConsensusStatusRequest,
    ReplicaPosition,
    ReplicationStatus,
    ReplicationStatusRequest,
    SnapshotFetchReply,
    SnapshotFetchRequest,
    decode,
    encode,
)
from colony.shared.runner import Context, Refused
from colony.snapshotter import litestream
from colony.snapshotter.fetching import choose, restore
from colony.snapshotter.position import Tracker

READY, MADE = "ready", "made"
SWEEP_EVERY = 60.0
"""Seconds between sweeps of the replica bucket's delete markers."""
LOOK_EVERY = 1.0
"""Seconds between looks at the replica bucket (while it is missing or unhealthy)."""
TICK = 0.1
"""Seconds between reads of the database's position (and checks of the role)."""
LITESTREAM_RECORD = "litestream.json"
"""In the snapshotter's folder: the running litestream's process record (pid, start time)."""
STATUS_TIMEOUT = 2.0
"""Seconds this node's consensus gets to say who the voters are."""
BEHIND = 30.0
"""Seconds changes may wait for the replica (beyond 10 sync intervals) before it is
reported unhealthy even without an error from litestream."""


class Snapshotter:
    name = "snapshotter"
    description = "Continuous replication of the management database with litestream; fetches"

    def __init__(self) -> None:
        self.me = ""
        self.sidecar: litestream.Sidecar | None = None
        self.running: asyncio.Task[None] | None = None
        self.tracker = Tracker()
        self.voter = False
        self.url = ""
        self.problem = ""
        """Why litestream cannot run ('' : it can); litestream's own problems are the
        tracker's."""

    async def run(self, ctx: Context) -> None:
        node, self.settings = ctx.config.node, ctx.config.snapshotter
        self.ctx, self.me = ctx, node.id
        self.consensus = Path(node.dir) / "consensus"
        self.db = self.consensus / "management.db"
        self.own = Path(node.dir) / "snapshotter"
        self.own.mkdir(parents=True, exist_ok=True)
        self.state = await asyncio.to_thread(Path(node.dir).resolve)
        leftover = await asyncio.to_thread(litestream.kill_leftover, self.own / LITESTREAM_RECORD)
        if leftover is not None:
            ctx.log.warning(
                "killed a litestream left running by an earlier snapshotter",
                extra={"pid": leftover.pid},
            )
        self.bucket = subjects.replica_bucket(self.me)
        try:
            self.url = litestream.replica_url(
                self.settings.target, self.me, ctx.config.nats.servers[0], self.bucket
            )
        except litestream.TargetError as e:
            self.problem = str(e)
            ctx.log.error("cannot replicate", extra={"reason": self.problem})
        await ctx.serve(subjects.replication_status(self.me), self._on_status)
        await ctx.serve(subjects.snapshot_fetch(self.me), self._on_fetch, concurrent=True)
        reader = _Reader(self.db)
        self.reported: tuple[bool, str] | None = None
        self.last_report = 0.0
        try:
            while True:
                await self._step(reader)
                await asyncio.sleep(TICK)
        finally:
            await self._stop()
            await tasks.cancel(self._marking)
            reader.close()

    async def _step(self, reader: _Reader) -> None:
        """Look at the role and the database; start, stop or reset litestream; report."""
        self.voter = self._is_voter()
        held = await asyncio.to_thread(reader.read) if self.voter else None
        if held is not None:
            self.tracker.read(time.time(), *held)
        wanted = self.voter and held is not None and not self.problem
        if self.running is not None and not wanted:
            self.ctx.log.info("stopping litestream", extra={"reason": "no voter database"})
            await self._stop()
        if self.running is not None and reader.replaced:
            # a restore or a seed renamed another database in: litestream's local state
            # is the old one's, so it starts again from a snapshot of the new one
            self.ctx.log.info("the database was replaced: replicating it from a snapshot")
            await self._stop()
            await self._reset()
        reader.replaced = False
        if wanted and self.running is None and await self._target_ready():
            await self._start()
        now = time.time()
        entry = self.position(now)
        if entry is None and self.reported is not None:
            entry = self._retired()
        if entry is None or (
            entry.index == 0 and not self.problem and (entry.healthy or self.sidecar is None)
        ):
            # nothing known to be replicated yet in this run: the entry from before (a
            # replica still holds what it held) is worth more than an empty one
            return
        health = (entry.healthy, entry.problem)
        if health != self.reported or now - self.last_report >= self.settings.report_interval:
            if health != self.reported:
                self.ctx.log.log(
                    logging.INFO if entry.healthy else logging.WARNING,
                    "replica healthy" if entry.healthy else "replica unhealthy",
                    extra={"problem": entry.problem, "index": entry.index},
                )
            if await self._report(entry):
                self.reported, self.last_report = (health if self.voter else None), now
        marking = self._marking is not None and not self._marking.done()
        due = time.monotonic() - self._marked_at >= self.settings.report_interval
        if self.voter and due and not marking:
            # beside the loop: consensus may be slow to answer
            self._marked_at = time.monotonic()
            self._marking = asyncio.create_task(self._mark_stale(), name="mark-stale")
        if self.running is not None and time.monotonic() - self._swept_at >= SWEEP_EVERY:
            self._swept_at = time.monotonic()
            await self._sweep()
        # The bucket deleted? Made again, it is empty, and litestream's local history may
        # no longer reach back to what it lacks: litestream starts it with a snapshot.
        lost = not entry.healthy and self.running is not None and self.settings.target == "nats"
        if lost and await self._target_ready() == MADE:
            self.ctx.log.warning("the replica bucket was gone: replicating again from a snapshot")
            await self._stop()
            await self._reset()
            await self._start()

    def _is_voter(self) -> bool:
        """consensus/role.json once the leader promoted or retired this node, else the
        config's voters (the file consensus keeps; read here, never written)."""
        try:
            role = json.loads((self.consensus / "role.json").read_text())
            return bool(role.get("voter"))
        except FileNotFoundError:
            return self.me in self.ctx.config.consensus.voters
        except (OSError, ValueError, AttributeError):
            return False

    # --- litestream -----------------------------------------------------------------

    async def _start(self) -> None:
        self.tracker = Tracker()
        self.sidecar = sidecar = litestream.Sidecar(
            self._config(),
            self.ctx.log,
            on_event=self.tracker.line,
            on_exit=self.tracker.failed,
            on_start=self.tracker.restarted,
            record=self.own / LITESTREAM_RECORD,
        )
        self.ctx.log.info(
            "replicating the management database",
            extra={"target": litestream.shown(self.url), "db": str(self.db)},
        )
        self.running = asyncio.create_task(sidecar.run(), name="litestream")

    def _config(self) -> Path:
        config = self.own / "litestream.yml"
        litestream.write_config(
            config,
            litestream.render(self.db, self.url, self.settings, replica=self._replica_options()),
        )
        return config

    async def _stop(self) -> None:
        if self.sidecar is not None:
            await self.sidecar.close()
        await tasks.cancel(self.running)
        self.sidecar = self.running = None

    async def _reset(self) -> None:
        """Clear litestream's local state: it then starts the replica with a snapshot."""
        process = await asyncio.create_subprocess_exec(
            litestream.binary(), "reset", "-config", str(self._config()), str(self.db),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        if process.returncode != 0:
            self.ctx.log.warning(
                "litestream reset failed", extra={"output": output.decode(errors="replace")}
            )

    async def _target_ready(self) -> str:
        """READY: the target can be written (an object store bucket: it exists); MADE: the
        bucket was missing and was made; '': it cannot be made now (said in the manifest)."""
        if self.settings.target != "nats":
            return READY
        now = time.monotonic()
        if now - self._looked_at < LOOK_EVERY:
            return READY if self._looked == MADE else self._looked  # made once, said once
        self._looked_at, self._looked = now, await self._look_at_bucket()
        return self._looked

    _looked_at, _looked = -LOOK_EVERY, ""

    async def _look_at_bucket(self) -> str:
        js = self.ctx.bus.js
        try:
            try:
                await js.object_store(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                await self._made(
                    lambda n: js.create_object_store(
                        self.bucket, ObjectStoreConfig(bucket=self.bucket, replicas=n)
                    ),
                    f"the replica bucket {self.bucket}",
                )
                return MADE
        except Exception as e:  # JetStream unavailable: said in the manifest, tried again
            self.tracker.failed(f"the object store bucket {self.bucket} is unavailable: {e!r}")
            return ""
        return READY

    def _replica_options(self) -> dict:
        nats_target = self.url.startswith("nats://")
        return litestream.nats_options(self.ctx.config.nats) if nats_target else {}

    _swept_at = 0.0

    async def _sweep(self) -> None:
        """Remove the delete markers litestream's deletions leave in the object store.

        A deleted object keeps a marker message under its name, and litestream names every
        sync's file anew: without this, an idle cluster's bucket grows ~2 MB an hour for
        good. A marker is purged only up to its own sequence: an object put again under
        that name since (litestream reset numbers from 1 again) is kept."""
        if self.settings.target != "nats":
            return
        js, stream = self.ctx.bus.js, f"OBJ_{self.bucket}"
        swept = 0
        try:
            store = await js.object_store(self.bucket)
            for info in await store.list(ignore_deletes=False):
                if not info.deleted:
                    continue
                name = base64.urlsafe_b64encode(info.name.encode()).decode()
                subject = f"$O.{self.bucket}.M.{name}"
                marker = await js.get_last_msg(stream, subject)
                if json.loads(marker.data or b"{}").get("deleted"):
                    await js.purge_stream(stream, seq=marker.seq + 1, subject=subject)
                    swept += 1
        except Exception as e:  # the bucket unavailable: litestream says so; next time
            self.ctx.log.debug("delete markers not swept", extra={"reason": repr(e)})
        if swept:
            self.ctx.log.debug("delete markers swept", extra={"count": swept})

    async def _made(self, make, what: str):
        """`make(replicas)` with as many replicas as voters, at most 3; fewer if JetStream
        refuses (a lone server, servers down): a bucket with fewer copies beats none."""
        want = min(3, max(1, len(self.ctx.config.consensus.voters)))
        for replicas in range(want, 0, -1):
            try:
                made = await make(replicas)
            except nats.js.errors.APIError as e:
                if replicas == 1:
                    raise
                self.ctx.log.info(
                    f"{what}: {replicas} replicas refused, trying fewer", extra={"reason": str(e)}
                )
                continue
            self.ctx.log.info(f"made {what}", extra={"replicas": replicas})
            return made

    # --- the voters -----------------------------------------------------------------

    async def _raft(self) -> ConsensusStatus | None:
        """This node's consensus's view of the Raft group (None: it runs no replica now,
        or does not answer)."""
        try:
            status = await self.ctx.bus.request(
                subjects.consensus_status(self.me), ConsensusStatusRequest(), STATUS_TIMEOUT
            )
        except BusError:
            return None
        return status if status.role != "standby" and status.voters else None

    async def _voters(self) -> set[str] | None:
        """Whose replicas belong to the current history (None: not known here; the
        manifest's health marks decide). The Raft group as this node's consensus sees it;
        else a joining voter's role.json (the voters the leader named just now), unless a
        restore is pending (the whole cluster comes back: role.json may be older than the
        group was)."""
        status = await self._raft()
        if status is not None:
            return {voter.node for voter in status.voters}
        if (self.consensus / statedir.RESTORE_PENDING).exists():
            return None
        try:
            role = json.loads((self.consensus / "role.json").read_text())
        except (OSError, ValueError):
            return None
        voters = role.get("voters") if isinstance(role, dict) and role.get("voter") else None
        return set(voters) if isinstance(voters, list) and voters else None

    _marked_at = 0.0
    _marking: asyncio.Task[None] | None = None

    async def _mark_stale(self) -> None:
        """On the Raft leader: mark the manifest entries of nodes that are no voters any
        more (removed, retired, replaced after dying) unhealthy, so no fetch restores a
        replica nobody updates (after a restore: one of a lost history)."""
        status = await self._raft()
        if status is None or status.role != "leader" or not status.has_quorum:
            return
        voters = {voter.node for voter in status.voters}
        try:
            entries = await self._entries()
            kv = await self._manifest()
            for entry in entries:
                if entry.node in voters or not entry.healthy:
                    continue
                await kv.put(entry.node, encode(stale(entry)))
                self.ctx.log.info("a replica of a node that is no voter marked stale",
                                  extra={"replica": entry.node, "index": entry.index})  # fmt: skip
        except Exception as e:  # the manifest unavailable: next time
            self.ctx.log.debug("stale replicas not marked", extra={"reason": repr(e)})

    # --- the manifest ---------------------------------------------------------------

    def position(self, now: float) -> ReplicaPosition | None:
        """This voter's manifest entry (None when the node is no voter)."""
        if not self.voter:
            return None
        held = self.tracker.position()
        lag = self.tracker.lag(now)
        problem = self.problem or self.tracker.problem
        if not problem and self.running is None:
            problem = "litestream is not running: no management database yet"
        behind = max(BEHIND, 10 * self.settings.sync_interval)
        if not problem and lag > behind:
            problem = f"the replica is {lag:.0f} s behind the database (no sync since)"
        return ReplicaPosition(
            node=self.me,
            target=litestream.shown(self.url),
            index=held.index,
            term=held.term,
            synced_at=self.tracker.synced_at,
            lag=round(lag, 3),
            replica_bytes=self._bytes,
            healthy=not problem,
            problem=problem,
            restarts=self.sidecar.restarts if self.sidecar else 0,
        )

    _bytes = 0
    """The replica's size, as last measured (at a report)."""

    def _retired(self) -> ReplicaPosition:
        """The last word of a node that is no voter any more: its replica is stale."""
        held = self.tracker.position()
        return stale(
            ReplicaPosition(
                node=self.me,
                target=litestream.shown(self.url),
                index=held.index,
                term=held.term,
                synced_at=self.tracker.synced_at,
            )
        )

    async def _report(self, entry: ReplicaPosition) -> bool:
        try:
            kv = await self._manifest()
            await kv.put(self.me, encode(entry))
        except Exception as e:
            self.ctx.log.warning("manifest not updated", extra={"reason": repr(e)})
            return False
        await self._measure()
        return True

    async def _measure(self) -> None:
        """The replica's bytes, for the next report: a folder's files, a bucket's size."""
        if self.url.startswith("file://"):
            self._bytes = await asyncio.to_thread(litestream.replica_bytes, self.url) or 0
        elif self.settings.target == "nats":
            with contextlib.suppress(Exception):  # the bucket gone: litestream says so
                store = await self.ctx.bus.js.object_store(self.bucket)
                self._bytes = (await store.status()).size

    async def _manifest(self):
        js = self.ctx.bus.js
        try:
            return await js.key_value(subjects.REPLICAS_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return await self._made(
                lambda n: js.create_key_value(
                    KeyValueConfig(bucket=subjects.REPLICAS_BUCKET, history=1, replicas=n)
                ),
                f"the manifest {subjects.REPLICAS_BUCKET}",
            )

    async def _entries(self) -> list[ReplicaPosition]:
        kv = await self._manifest()
        entries = []
        with contextlib.suppress(nats.js.errors.NoKeysError):
            for key in await kv.keys():
                with contextlib.suppress(Exception):
                    got = await kv.get(key)
                    if got.value:
                        entries.append(decode(got.value, ReplicaPosition))
        return entries

    # --- requests -------------------------------------------------------------------

    async def _on_status(self, _request: ReplicationStatusRequest) -> ReplicationStatus:
        return ReplicationStatus(
            node=self.me,
            voter=self.voter,
            replica=self.position(time.time()),
            litestream_pid=self.sidecar.pid if self.sidecar else 0,
        )

    async def _on_fetch(self, request: SnapshotFetchRequest) -> SnapshotFetchReply:
        started = time.monotonic()
        out = Path(request.path)
        if not out.is_absolute():
            raise Refused(400, f"{request.path!r}: give an absolute path")
        if not await asyncio.to_thread(inside, out, self.state):
            raise Refused(400, f"{request.path!r}: a fetch writes only inside this node's "
                          f"state folder {self.state}")  # fmt: skip
        voters = await self._voters()
        candidates = choose(await self._entries(), request.min_index, voters)
        if not candidates:
            among = f" among the voters {sorted(voters)}" if voters is not None else ""
            raise Refused(404, f"no healthy replica in the manifest{among} holds index "
                          f"{request.min_index} or more")  # fmt: skip
        failures = []
        for entry in candidates:
            url = self._reachable(entry.target)
            try:
                header = await restore(
                    url,
                    out,
                    made_by=self.me,
                    min_index=request.min_index,
                    replica=litestream.nats_options(self.ctx.config.nats)
                    if url.startswith("nats://")
                    else {},
                )
            except Exception as e:
                failures.append(f"{entry.node}: {e}")
                self.ctx.log.warning(
                    "restore from a replica failed", extra={"replica": entry.node, "reason": str(e)}
                )
                continue
            seconds = time.monotonic() - started
            self.ctx.log.info(
                "snapshot fetched from a replica",
                extra={"replica": entry.node, "index": header.index, "term": header.term,
                       "path": str(out), "seconds": round(seconds, 2)},
            )  # fmt: skip
            return SnapshotFetchReply(
                node=self.me, path=str(out), replica=entry.node, header=header, seconds=seconds
            )
        raise Refused(404, "no replica could be restored: " + "; ".join(failures))

    def _reachable(self, target: str) -> str:
        """A replica URL as this node reaches it: an object store bucket through its own
        NATS server (the cluster's JetStream is one), anything else as it is."""
        if target.startswith("nats://"):
            bucket = target.rsplit("/", 1)[-1]
            return litestream.replica_url("nats", self.me, self.ctx.config.nats.servers[0], bucket)
        return target


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` (symbolic links followed, '..' resolved) is inside `folder`."""
    return path.resolve().is_relative_to(folder)


def stale(entry: ReplicaPosition) -> ReplicaPosition:
    """`entry` marked as the replica of a node that is no voter any more."""
    return msgspec.structs.replace(
        entry, healthy=False, problem="not a voter any more: this replica is no longer updated"
    )


class _Reader:
    """Reads (last_applied, applied_term) from the database, read-only; notices when the
    file is replaced by another (a restore renames a new one in)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.inode = 0
        self.replaced = False

    def read(self) -> tuple[int, int] | None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            self.close()
            return None
        if self.conn is not None and inode != self.inode:
            self.replaced = True
            self.close()
        try:
            if self.conn is None:
                self.conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                    check_same_thread=False,
                )  # fmt: skip
                self.inode = inode
            rows = dict(
                self.conn.execute(
                    f"SELECT name, value FROM {snapshot.META} WHERE name IN (?, ?)",
                    (snapshot.APPLIED, snapshot.APPLIED_TERM),
                ).fetchall()
            )
        except sqlite3.Error:
            self.close()  # not a database yet (being made), or no meta table yet
            return None
        return rows.get(snapshot.APPLIED, 0), rows.get(snapshot.APPLIED_TERM, 0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
