"""`colony snapshot`: save, list, inspect and restore snapshots of the management database.

A snapshot is one file (the format is colony.shared.snapshot's): a header, then the
database as every voter held it at one Raft index. Where they come from and go:

    save      the Raft leader writes one into the cluster's object store
              (`SNAPSHOT_BUCKET`) after a read barrier; this downloads it
    list      what each voter's litestream replica holds (the manifest, kept in the
              `REPLICAS_BUCKET` key-value bucket) and the snapshots saved so far
    inspect   a file's header, its checksum checked
    restore   a stopped cluster's nodes get the file as consensus/restore.snapshot:
              at the next `colony up` each voter replaces its database with it

`colony up --restore FILE|replica` (`UpRestore`) does a restore for a new or stopped
state dir as it starts the cluster; with `replica`, every node waits (a
consensus/restore.pending marker) while a snapshotter restores the freshest
replica, which is then delivered as above to the nodes still waiting (a node
standing by gives its marker up).

Nothing is replaced before a snapshot is checked whole (header, length, checksum,
schema, cluster), and a file is delivered to every node or to none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from colony.cli.args import add_management_options, sub_verbs
from colony.cli.kv import cluster_bus, management
from colony.cli.local import write
from colony.cli.local.plan import ClusterError
from colony.cli.output import err, fail, human_age, human_bytes, out, print_json
from colony.shared import snapshot, subjects
from colony.shared.bus import Bus, BusError, NoResponders, RemoteError
from colony.shared.cluster import Cluster, WaitTimeout
from colony.shared.messages import (
    DecodeError,
    ReplicaPosition,
    SnapshotFetchRequest,
    SnapshotHeader,
    SnapshotSaveRequest,
    decode,
    to_builtins,
)
from colony.shared.snapshot import BadSnapshot
from colony.shared.statedir import (
    RESTORE_PENDING,
    RESTORE_SNAPSHOT,
    NodeDir,
    StateDir,
    make_private_dir,
)

FETCHED = "restore.fetched"
"""In a node's consensus folder: where its snapshotter writes the replica it restores
for `colony up --restore replica`, before it is checked and delivered."""
REPLICA = "replica"
"""`colony up --restore replica`: the freshest replica, not a file."""
REFUSED_RUNNING = "restore into a running cluster is refused: stop it with colony down first"
SLOW = 0.5
"""Seconds a copy or check may take before a progress bar shows."""
MANIFEST_GRACE = 15.0
"""Seconds `colony up --restore replica` keeps asking while snapshotters answer that the
manifest holds no usable replica (they report as they start)."""
SAVED_INDEX = re.compile(r"(?:^|/)(\d+)-[^/]*$")
"""The Raft index in a saved snapshot's name (saved/<cluster>/<index>-<time>)."""

EXAMPLES = {
    "save": """examples:
  colony snapshot save                     ./colony-<cluster>-<index>.snapshot
  colony snapshot save backup.snapshot     to that file
  colony snapshot save --json | jq .header.index

The Raft leader commits a read barrier, writes the snapshot into the cluster's
object store (COLONY_SNAPSHOTS, listed by `colony snapshot list`) and this
downloads it: every write acknowledged before the command is in it.""",
    "list": """examples:
  colony snapshot list              each voter's replica (index, term, age, lag, health)
                                    and the snapshots saved in the cluster
  colony snapshot list --json""",
    "inspect": """examples:
  colony snapshot inspect backup.snapshot          header, objects per kind, checksum
  colony snapshot inspect backup.snapshot --json

Exits 1, saying why, if the file is not a whole, intact Colony snapshot.""",
    "restore": """examples:
  colony down
  colony snapshot restore backup.snapshot   every node gets it; nothing starts yet
  colony up                                 each voter restores it, then starts

  colony up --restore backup.snapshot --state-dir /tmp/new   a new cluster from it
  colony up --restore replica      bring a stopped cluster back from its replicas

The cluster must be stopped, and the snapshot this cluster's (see `colony
snapshot inspect`); a snapshot of another cluster goes into a new state dir with
`colony up --restore FILE`. What was committed after the snapshot's index is lost.""",
}


def add_parser(verb) -> None:
    group = verb(
        "snapshot", "Save, list, inspect and restore snapshots of the management database."
    )
    group.epilog = """examples:
  colony snapshot save                   download a snapshot of the live cluster
  colony snapshot list                   what the replicas and the object store hold
  colony snapshot inspect FILE           check a snapshot file, show what it holds
  colony snapshot restore FILE           put it back into a stopped cluster
  colony up --restore FILE|replica       start a cluster from a file or its replicas

Run `colony snapshot <verb> --help` for each verb's options."""
    verbs = group.add_subparsers(
        dest="snapshot_verb", required=True, metavar="save|list|inspect|restore"
    )

    sub = sub_verbs(verbs, EXAMPLES)

    save = sub(
        "save", "Save a snapshot of the live cluster, consistent at one Raft index.", cmd_save
    )
    save.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="where to write it (default: ./colony-<cluster>-<index>.snapshot)",
    )
    save.add_argument("--force", action="store_true", help="replace FILE if it exists")
    save.add_argument(
        "--name", default="", help="its name in the object store (default: saved/<cluster>/...)"
    )
    add_management_options(save, 60.0, "seconds the leader may take to make it")

    listing = sub("list", "Show what each voter's replica holds and the snapshots saved.", cmd_list)
    add_management_options(listing, 5.0, "seconds to wait for the cluster")

    inspect = sub("inspect", "Check a snapshot file whole and show its header.", cmd_inspect)
    inspect.add_argument("file", type=Path, help="a snapshot file (from colony snapshot save)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")

    restore = sub(
        "restore",
        "Put a snapshot into a stopped cluster; it is restored at `colony up`.",
        cmd_restore,
    )
    restore.add_argument("file", type=Path, help="a snapshot file (from colony snapshot save)")
    restore.add_argument(
        "--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


# --- progress -----------------------------------------------------------------------


@contextlib.contextmanager
def progress_bar(what: str, show: bool = True) -> Iterator[snapshot.Progress]:
    """A progress callback (bytes done, bytes in all) that draws a bar on stderr once the
    work has taken SLOW seconds (a quick one shows nothing), on a terminal only, unless
    not `show` (a spinner is already there: rich shows one live display at a time)."""
    began = time.monotonic()
    bar: Progress | None = None
    task: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar, task
        if bar is None:
            if not show or not err.is_terminal or time.monotonic() - began < SLOW:
                return
            bar = Progress(
                TextColumn(what, markup=False),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            bar.start()
            task = bar.add_task(what, total=total)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


def checked(path: Path, cluster: str | None, where: str = "", show: bool = True) -> SnapshotHeader:
    """The header of the snapshot at `path`, once it is read whole (header, length,
    checksum) and fits this Colony and `cluster` (None: any); BadSnapshot says why not."""
    with progress_bar(f"checking {path.name}", show) as bar:
        header = snapshot.verify(path, bar)
    snapshot.check_fits(header, where or str(path), cluster)
    return header


# --- files in the nodes' folders -----------------------------------------------------


def consensus_dir(node_dir: NodeDir) -> Path:
    """The node's consensus folder (its database, journal and restore markers)."""
    return node_dir.path / "consensus"


def deliver(source: Path, node_dirs: list[NodeDir], show: bool = True) -> list[Path]:
    """Copy `source` to every node's consensus/restore.snapshot: each copy is written
    whole beside its target, then all are renamed into place, so every node gets it or
    (a full disk, a folder it cannot write) none does."""
    size = source.stat().st_size
    staged: list[tuple[Path, Path]] = []
    try:
        with progress_bar(f"copying to {len(node_dirs)} nodes", show) as bar:
            for i, node_dir in enumerate(node_dirs):
                folder = consensus_dir(node_dir)
                make_private_dir(folder)
                fd, name = tempfile.mkstemp(prefix=".restore-", suffix=".snapshot", dir=folder)
                staged.append((Path(name), folder / RESTORE_SNAPSHOT))
                with os.fdopen(fd, "wb") as sink, open(source, "rb") as f:
                    for chunk in iter(lambda: f.read(snapshot.CHUNK), b""):
                        sink.write(chunk)
                        bar(i * size + sink.tell(), size * len(node_dirs))
                    sink.flush()
                    os.fsync(sink.fileno())
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, target in staged:
        os.replace(temporary, target)
    return [target for _, target in staged]


def mark_pending(node_dirs: list[NodeDir]) -> None:
    """Tell every node's voter a restore is coming: it waits for it as it starts."""
    for node_dir in node_dirs:
        folder = consensus_dir(node_dir)
        make_private_dir(folder)
        (folder / RESTORE_PENDING).write_text(
            f"colony up --restore replica, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: "
            f"the voter waits for {RESTORE_SNAPSHOT}\n"
        )


def unmark_pending(node_dirs: list[NodeDir]) -> None:
    for node_dir in node_dirs:
        (consensus_dir(node_dir) / RESTORE_PENDING).unlink(missing_ok=True)


def still_pending(node_dirs: list[NodeDir]) -> list[NodeDir]:
    """The nodes whose consensus still waits for the restore (its marker is there): a
    node that gave the marker up (it stands by, or joined as a voter since) never gets
    the file, which a later start as a voter would restore over what it holds."""
    return [n for n in node_dirs if (consensus_dir(n) / RESTORE_PENDING).exists()]


def refuse_if_running(state: StateDir) -> None:
    """Exit with REFUSED_RUNNING if any process of the state dir's nodes runs."""
    live = [n.name for n in state.nodes() if any(r.group_alive() for r in n.records())]
    if live:
        fail(f"{REFUSED_RUNNING} ({', '.join(live)} of {state.path}/ run)", "then run this again")


# --- save ---------------------------------------------------------------------------


def cmd_save(args: argparse.Namespace) -> int:
    if args.file is not None:
        _refuse_to_overwrite(args.file, args.force)
    began = time.monotonic()
    try:
        saved, target = asyncio.run(_save(args))
    except BadSnapshot as e:
        fail(f"the downloaded snapshot is not usable: {e}", "try again; the file was removed")
    except ClusterError as e:
        fail(str(e), "is a majority of the voters up? see `colony status`")
    header = saved["header"]
    if args.json:
        print_json({"file": str(target), **saved, "header": header_json(header)})
        return 0
    out.print(
        Text.assemble(
            ("✓", "green"),
            f" saved index {header.index} (term {header.term}) of cluster {header.cluster} "
            f"to {target} ({human_bytes(target.stat().st_size)}) in "
            f"{time.monotonic() - began:.1f} s",
        )
    )
    leader = node_names(StateDir(args.state_dir)).get(saved["node"], saved["node"])
    out.print(f"  made by {leader} (the Raft leader); checksum verified")
    out.print(f"  in the cluster's object store as {saved['name']} (`colony snapshot list`)")
    out.print(f"  objects: {counts_line(header)}")
    out.print(f"  inspect it: colony snapshot inspect {target}")
    return 0


def _refuse_to_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        fail(f"{path} exists; a snapshot is not written over a file", "name another, or --force")


async def _save(args: argparse.Namespace) -> tuple[dict, Path]:
    async with management(args, "colony-snapshot") as client:
        deadline = time.monotonic() + args.timeout
        node, reply = await _ask_leader(client.bus, client.voters, args.name, deadline)
        header = reply.header
        target = args.file or Path(f"colony-{header.cluster or 'cluster'}-{header.index}.snapshot")
        if args.file is None:
            _refuse_to_overwrite(target, args.force)
        await download(client.bus, reply.name, target, max(1.0, deadline - time.monotonic()))
    try:
        got = checked(target, None)
        if got.sha256 != header.sha256:
            raise BadSnapshot(
                f"{target} is not the snapshot {node} made (checksum {got.sha256[:16]}…, "
                f"it said {header.sha256[:16]}…)"
            )
    except BadSnapshot:
        target.unlink(missing_ok=True)
        raise
    saved = {"name": reply.name, "node": node, "seconds": reply.seconds, "header": got}
    return saved, target


async def _ask_leader(bus: Bus, voters: list[str], name: str, deadline: float):
    """The Raft leader's answer to snapshot_save, asked again of a new leader if it moved."""
    cluster = Cluster(bus, voters)
    while True:
        left = deadline - time.monotonic()
        try:
            with err.status(Text("finding the Raft leader")):
                leader = await cluster.wait_leader(max(0.1, left))
        except WaitTimeout as e:
            raise ClusterError(f"no Raft leader to make the snapshot: {e}") from None
        try:
            with err.status(Text(f"{leader.node} (the leader) makes the snapshot")):
                reply = await bus.request(
                    subjects.snapshot_save(leader.node),
                    SnapshotSaveRequest(name=name),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
            return leader.node, reply
        except RemoteError as e:
            if e.code != 409 or time.monotonic() > deadline:  # 409: no longer the leader
                raise ClusterError(
                    f"{leader.node} could not make the snapshot: {e.description}"
                ) from None
        except NoResponders:
            raise ClusterError(
                f"{leader.node} does not make snapshots (its consensus serves no "
                f"{subjects.snapshot_save(leader.node).name}): is it an older Colony?"
            ) from None
        except BusError as e:
            raise ClusterError(f"{leader.node} did not make the snapshot: {e}") from None


class _Sink:
    """A file nats-py writes an object's chunks into, telling the progress bar."""

    def __init__(self, f, total: int, bar: snapshot.Progress) -> None:
        self.f, self.total, self.bar, self.done = f, total, bar, 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.done += len(data)
        self.bar(self.done, self.total)
        return len(data)


async def download(bus: Bus, name: str, target: Path, timeout: float) -> None:
    """Copy the object `name` of SNAPSHOT_BUCKET to `target` (atomically: written whole
    beside it, then renamed)."""
    bucket = subjects.SNAPSHOT_BUCKET
    where = f"{name} in the object store {bucket}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".colony-", suffix=".snapshot", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f, progress_bar(f"downloading {target.name}") as bar:
            store = await bus.js.object_store(bucket)
            info = await store.get_info(name)
            # a stalled stream must not hang the command: 1 MiB/s at the least
            async with asyncio.timeout(timeout + (info.size or 0) / 2**20):
                await store.get(name, writeinto=_Sink(f, info.size or 0, bar))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except nats.js.errors.BucketNotFoundError:
        raise ClusterError(f"the object store {bucket} does not exist") from None
    except nats.js.errors.ObjectNotFoundError:
        raise ClusterError(f"{where} is gone (deleted meanwhile?)") from None
    except nats.js.errors.DigestMismatchError:
        raise ClusterError(f"{where} arrived damaged (its digest does not match)") from None
    except TimeoutError:
        raise ClusterError(f"downloading {where} stalled") from None
    except nats.errors.Error as e:
        raise ClusterError(f"cannot download {where}: {e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):  # renamed into place
            os.unlink(temporary)


# --- list ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    try:
        replicas, saved = asyncio.run(_list(args))
    except ClusterError as e:
        fail(str(e), "is the cluster running? see `colony status`")
    names = node_names(StateDir(args.state_dir)) if not args.server else {}
    now = time.time()
    if args.json:
        print_json(
            {
                "replicas": [
                    {"name": names.get(p.node, p.node), **to_builtins(p)} for p in replicas.values()
                ],
                "saved": [
                    {**entry, "age_seconds": _round(now - entry["made_at"])} for entry in saved
                ],
            }
        )
        return 0
    if replicas:
        out.print(replicas_table(replicas.values(), names, now))
    else:
        out.print(
            f"replicas: none reported (no {subjects.REPLICAS_BUCKET} entries: the voters' "
            "snapshotters report there once they replicate)"
        )
    out.print()
    if saved:
        out.print(saved_table(saved, now))
    else:
        out.print("saved snapshots: none yet (take one with `colony snapshot save`)")
    return 0


async def _list(args: argparse.Namespace):
    async with cluster_bus(args, "colony-snapshot") as bus:
        try:
            async with asyncio.timeout(args.timeout):
                return await manifest(bus), await saved_snapshots(bus)
        except TimeoutError:
            raise ClusterError(f"JetStream did not answer within {args.timeout:g} s") from None


async def manifest(bus: Bus) -> dict[str, ReplicaPosition]:
    """The replica manifest: each voter's node id -> what its replica holds (an entry that
    cannot be read is left out; no bucket yet: none)."""
    found = {}
    try:
        kv = await bus.js.key_value(subjects.REPLICAS_BUCKET)
        for key in sorted(await kv.keys()):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, DecodeError):
                entry = await kv.get(key)
                found[key] = decode(entry.value or b"", ReplicaPosition)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NoKeysError):
        return {}
    except nats.errors.Error as e:
        raise ClusterError(f"cannot read the replica manifest: {e}") from None
    return found


async def saved_snapshots(bus: Bus) -> list[dict]:
    """The snapshots in SNAPSHOT_BUCKET, oldest first: name, index, size, made_at."""
    try:
        store = await bus.js.object_store(subjects.SNAPSHOT_BUCKET)
        objects = await store.list(ignore_deletes=True)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        return []
    except nats.errors.Error as e:
        raise ClusterError(f"cannot list {subjects.SNAPSHOT_BUCKET}: {e}") from None
    found = []
    for info in objects:
        if info.deleted:
            continue
        index = SAVED_INDEX.search(info.name)
        found.append(
            {
                "name": info.name,
                "index": int(index[1]) if index else None,
                "size": info.size or 0,
                "made_at": _timestamp(info.mtime),
            }
        )
    return sorted(found, key=lambda e: (e["made_at"] or 0, e["name"]))


def _timestamp(mtime: str | None) -> float | None:
    """An object's RFC 3339 time (nanoseconds and all) as seconds since the epoch."""
    if not mtime:
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", mtime).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def node_names(state: StateDir) -> dict[str, str]:
    """Node id -> name, for the nodes of the state dir."""
    return {node_id: n.name for n in state.nodes() if (node_id := n.read_id())}


def health(position: ReplicaPosition) -> Text:
    if position.healthy:
        return Text("healthy", "green")
    return Text.assemble(("unhealthy", "red"), f": {position.problem or 'no reason given'}")


def replicas_table(replicas, names: dict[str, str], now: float) -> Table:
    grid = Table(title="replicas", title_justify="left", box=None, header_style="bold")
    grid.pad_edge = False
    for column in ("NODE", "TARGET", "INDEX", "TERM", "SYNCED", "LAG", "HEALTH"):
        grid.add_column(column, no_wrap=column != "HEALTH")
    for p in replicas:
        synced = f"{human_age(now - p.synced_at)} ago" if p.synced_at else "never"
        restarts = f" (litestream restarted {p.restarts}x)" if p.restarts else ""
        grid.add_row(
            names.get(p.node, p.node), p.target, str(p.index), str(p.term), synced,
            f"{p.lag:.1f} s", health(p).append(restarts),
        )  # fmt: skip
    return grid


def saved_table(saved: list[dict], now: float) -> Table:
    grid = Table(
        title=f"saved snapshots ({subjects.SNAPSHOT_BUCKET})",
        title_justify="left",
        box=None,
        header_style="bold",
    )
    grid.pad_edge = False
    for column in ("NAME", "INDEX", "SIZE", "AGE"):
        grid.add_column(column, no_wrap=True)
    for entry in saved:
        made = entry["made_at"]
        grid.add_row(
            entry["name"],
            "-" if entry["index"] is None else str(entry["index"]),
            human_bytes(entry["size"]),
            "-" if made is None else human_age(now - made),
        )
    return grid


# --- inspect ------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        with progress_bar(f"checking {args.file.name}") as bar:
            header = snapshot.verify(args.file, bar)
    except BadSnapshot as e:
        fail(str(e), "this file cannot be restored; use another snapshot")
    # a whole file this Colony cannot restore (a newer schema) is still shown: what it
    # holds tells which version to upgrade to, or whether it is the one wanted at all
    warning = ""
    try:
        snapshot.check_fits(header, str(args.file), None)
    except BadSnapshot as e:
        warning = str(e)
    if args.json:
        said = {"warning": warning} if warning else {}
        print_json({"file": str(args.file), "checksum": "ok", **said, **header_json(header)})
        return 0
    made = datetime.fromtimestamp(header.made_at, UTC)
    out.print(Text.assemble(f"{args.file}: a Colony snapshot, ", ("checksum verified", "green")))
    if warning:
        out.print(Text(f"warning: {warning}", style="yellow"))
    rows = [
        ("cluster", header.cluster or "(none: made before clusters had ids)"),
        ("index", f"{header.index} (term {header.term})"),
        ("schema", f"{header.schema} (this Colony reads up to {snapshot.SCHEMA})"),
        (
            "made",
            f"{made:%Y-%m-%d %H:%M:%S} UTC ({human_age(time.time() - header.made_at)} ago) "
            f"by {header.made_by}, origin {header.origin}",
        ),
        ("voters", ", ".join(header.voters) or "-"),
        ("database", f"{human_bytes(header.size)}, sha256 {header.sha256}"),
    ]
    fields = Table(box=None, show_header=False, pad_edge=False)
    fields.add_column(style="bold", no_wrap=True)
    fields.add_column()
    for name, value in rows:
        fields.add_row(name, value)
    out.print(fields)
    kinds = Table(box=None, header_style="bold", pad_edge=False)
    kinds.add_column("KIND", no_wrap=True)
    kinds.add_column("OBJECTS", justify="right")
    for kind, count in sorted(header.counts.items()):
        kinds.add_row(kind, str(count))
    out.print(kinds)
    return 0


def header_json(header: SnapshotHeader) -> dict:
    """The header for scripts; consensus's opaque Raft bookkeeping only by its length."""
    data = to_builtins(header)
    data["raft"] = len(header.raft)
    return data


def counts_line(header: SnapshotHeader) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(header.counts.items())) or "none"


# --- restore ------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    node_dirs = state.nodes()
    if not node_dirs:
        fail(
            f"no cluster in {state.path}/ to restore into",
            f"start a new one from the snapshot: colony up --restore {args.file} "
            f"--state-dir {state.path}",
        )
    refuse_if_running(state)
    cluster = write.cluster_id(state)
    try:
        header = checked(args.file, cluster or None)
    except BadSnapshot as e:
        fail(str(e), "nothing was changed")
    delivered = deliver(args.file, node_dirs)
    out.print(
        Text.assemble(
            ("✓", "green"),
            f" {args.file} (index {header.index}, term {header.term}) delivered to "
            f"{len(delivered)} nodes",
        )
    )
    out.print(
        f"  at the next `colony up --state-dir {state.path}` each voter replaces its database\n"
        "  with it before it starts (a node standing by deletes it): what the cluster\n"
        f"  committed after index {header.index} is gone.\n"
        f"  changed your mind? delete {state.path}/nodes/*/consensus/{RESTORE_SNAPSHOT}"
    )
    return 0


# --- colony up --restore --------------------------------------------------------------


@dataclass
class UpRestore:
    """What `colony up --restore SOURCE` does around starting the cluster: `checked`
    before anything is written, `prepare` once the configs are, `once_nats` while the
    cluster starts, `abandon` if it does not."""

    source: str
    header: SnapshotHeader | None
    """The file's header (None: from the replicas)."""
    cluster: str
    """The id the nodes' configs get ('' : the state dir's own)."""

    @classmethod
    def checked(cls, state: StateDir, source: str) -> UpRestore:
        existing = bool(state.nodes())
        if source == REPLICA:
            if not existing:
                fail(
                    f"{state.path}/ holds no cluster, so no replicas to restore from",
                    "name the state dir of the cluster to bring back (--state-dir), or "
                    "restore a snapshot file: colony up --restore FILE",
                )
            return cls(source, None, "")
        path = Path(source)
        try:
            header = checked(path, (write.cluster_id(state) or None) if existing else None)
        except BadSnapshot as e:
            fail(str(e), "nothing was changed")
        # a new cluster adopts the snapshot's id: its database says it belongs there
        return cls(source, header, "" if existing else header.cluster)

    def prepare(self, node_dirs: list[NodeDir]) -> None:
        if self.header is None:
            mark_pending(node_dirs)
        else:
            deliver(Path(self.source), node_dirs)

    def abandon(self, node_dirs: list[NodeDir]) -> None:
        """The cluster did not start: no voter may wait for a restore that never comes."""
        if self.header is None:
            unmark_pending(node_dirs)

    @property
    def summary(self) -> str:
        where = "the freshest replica" if self.source == REPLICA else self.source
        if self.header is None:
            return f"restored from {where}"
        return f"restored from {where}: index {self.header.index}, term {self.header.term}"

    def once_nats(self, state: StateDir, node_dirs: list[NodeDir]):
        """The step `colony up` runs once NATS answers (None: nothing to do then)."""
        if self.header is not None:
            return None

        async def fetch(bus: Bus, deadline: float, progress: Callable[[str], None]) -> None:
            header = await fetch_replica(bus, state, node_dirs, deadline, progress)
            self.header = header

        return fetch


async def fetch_replica(
    bus: Bus,
    state: StateDir,
    node_dirs: list[NodeDir],
    deadline: float,
    progress: Callable[[str], None],
) -> SnapshotHeader:
    """Ask the nodes' snapshotters, in turn until one answers, to restore the freshest
    replica into a snapshot file; check it and deliver it to every node."""
    cluster = write.cluster_id(state) or None
    progress("asking a snapshotter to restore the freshest replica")
    last, turn, refused_since = "", 0, None
    while True:
        node_dir = node_dirs[turn % len(node_dirs)]
        path = consensus_dir(node_dir).resolve() / FETCHED
        make_private_dir(path.parent)
        request = SnapshotFetchRequest(path=str(path))
        try:
            subject = subjects.snapshot_fetch(node_dir.node_id)
            left = max(1.0, deadline - time.monotonic())
            reply = await bus.request(subject, request, timeout=left)
            break
        except NoResponders:  # its snapshotter is not up yet
            last = f"no snapshotter answered (last asked: {node_dir.name}'s)"
        except RemoteError as e:
            last = f"{node_dir.name}'s snapshotter: {e.description}"
            # 404: the manifest holds no usable replica. It may be in flux while the
            # snapshotters start; past a grace, there is nothing to restore.
            if e.code == 404:
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > MANIFEST_GRACE:
                    raise ClusterError(last) from None
        except BusError as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise ClusterError(f"no replica was restored in time: {last}")
        turn += 1
        await asyncio.sleep(0.2)
    fetched = path  # where it was asked to go (inside the state dir), whatever it says
    try:
        progress(f"checking the replica of {reply.replica} (index {reply.header.index})")
        where = f"the replica of {reply.replica} restored by {node_dir.name}'s snapshotter"
        header = await asyncio.to_thread(checked, fetched, cluster, where, False)
        waiting = still_pending(node_dirs)
        if not waiting:
            raise ClusterError(
                f"no node waits for the restore any more (no consensus/{RESTORE_PENDING} "
                "left): their consensus gave it up; see `colony logs consensus`"
            )
        progress(f"delivering index {header.index} to the {len(waiting)} nodes waiting for it")
        await asyncio.to_thread(deliver, fetched, waiting, False)
    except BadSnapshot as e:
        raise ClusterError(str(e)) from None
    finally:
        fetched.unlink(missing_ok=True)
    progress(f"restoring index {header.index} (term {header.term}); waiting for the voters")
    return header
