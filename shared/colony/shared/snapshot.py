"""Colony's one snapshot format: the management database, copied whole, behind a header.

Raft's compaction snapshots, the copies litestream restores and `colony snapshot`
files are all this::

    COLONY-SNAPSHOT\\n               16 bytes, the magic
    <length>                        4 bytes, big-endian: the header's length
    <header>                        JSON (`SnapshotHeader`)
    <database>                      an SQLite file, `header.size` bytes (online backup)

The database part is exactly what every voter holds at `header.index`: nothing
Raft-internal is in it (pysyncobj's bookkeeping, for a compaction snapshot, rides
in `header.raft`), so a restored copy's digest equals the other replicas'. The
header says where it comes from (cluster, Raft index and term, schema version),
what it holds (rows per table) and its checksum (SHA-256 of the database part):
a truncated, corrupted, foreign or too new snapshot is refused before anything
is replaced.

The facts are read from the database itself (its `meta` table and SQLite's
`user_version`), so a snapshot can be made of any copy of it: a voter's live
database, a litestream restore, a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import msgspec

from colony.shared.messages import SnapshotHeader

MAGIC = b"COLONY-SNAPSHOT\n"
FORMAT = 1
"""The container format this code writes and reads."""
SCHEMA = 10
"""The management database's schema version this Colony writes (consensus checks that its
migrations end here): a snapshot of a higher one was made by a newer Colony."""
MAX_HEADER = 16 * 2**20
CHUNK = 2**20

META = "meta"
"""The database's bookkeeping table (name TEXT, value INTEGER); the rows below are the
facts a header is made of."""
APPLIED = "last_applied"
APPLIED_TERM = "applied_term"
CLUSTER = "cluster"
BOOKKEEPING = frozenset({"meta", "changes", "proposals"})
"""Tables that are no kind's objects (not counted in a header)."""
FOREIGN_PREFIXES = ("sqlite_", "_litestream_")
"""Tables SQLite and litestream keep in the file (neither counted nor Colony's)."""

Progress = Callable[[int, int], None]
"""Told (bytes done, bytes in all) as a copy goes."""


class BadSnapshot(Exception):
    """The snapshot cannot be used; the message says what, where and why."""


# --- the cluster id ---------------------------------------------------------------


def cluster_id_of(secret: bytes) -> str:
    """The id of the cluster whose secret is `secret` (when its config names none): 15 hex
    digits, so it fits the database's integer `meta` column."""
    return hashlib.sha256(b"colony-cluster\0" + secret).hexdigest()[:15]


def cluster_number(cluster: str) -> int:
    """`cluster` (15 hex digits) as the integer the database keeps."""
    return int(cluster, 16)


def cluster_name(number: int) -> str:
    return f"{number:015x}" if number else ""


# --- the facts of a database --------------------------------------------------------


def facts(db: sqlite3.Connection) -> dict:
    """(cluster, index, term, schema, counts) of the database `db` is open on, read in one
    transaction."""
    db.execute("BEGIN")
    try:
        meta = dict(db.execute(f"SELECT name, value FROM {META}").fetchall())
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
            if not name.startswith(FOREIGN_PREFIXES)
        ]
        counts = {
            t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
            for t in tables
            if t not in BOOKKEEPING
        }
        schema = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.execute("COMMIT")
    return {
        "cluster": cluster_name(meta.get(CLUSTER, 0)),
        "index": meta.get(APPLIED, 0),
        "term": meta.get(APPLIED_TERM, 0),
        "schema": schema,
        "counts": counts,
    }


# --- writing ------------------------------------------------------------------------


def make(
    source: sqlite3.Connection,
    out: Path,
    *,
    made_by: str,
    origin: str,
    voters: list[str] | None = None,
    raft: bytes = b"",
) -> SnapshotHeader:
    """Write a snapshot of the database `source` is open on to `out` (atomically: a crash
    leaves the old file or the new one), consistent at one Raft index (SQLite's online
    backup, in one step). `source` may be any connection to it, a reader's too."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(out.parent, ".db") as copy_path:
        copy = sqlite3.connect(copy_path, isolation_level=None)
        try:
            source.backup(copy)
            about = _seal(copy)
        finally:
            copy.close()
        return pack(copy_path, out, made_by=made_by, origin=origin, voters=voters, raft=raft,
                    **about)  # fmt: skip


def make_from_file(db_path: Path, out: Path, *, made_by: str, origin: str) -> SnapshotHeader:
    """A snapshot of the database file `db_path`, read-only (a voter's live database: one
    read transaction; a stopped voter's)."""
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        return make(source, out, made_by=made_by, origin=origin)
    finally:
        source.close()


def make_from_copy(db_path: Path, out: Path, *, made_by: str, origin: str) -> SnapshotHeader:
    """A snapshot of the database file `db_path`, a private copy nobody else opens (a
    litestream restore): sealed where it is and packed, with no copy of it made first.
    `db_path` is changed (and may be deleted afterwards)."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        about = _seal(db)
    finally:
        db.close()
    return pack(db_path, out, made_by=made_by, origin=origin, **about)


def _seal(copy: sqlite3.Connection) -> dict:
    """Make the copy `copy` is open on one self-contained file holding Colony's state
    alone; its facts."""
    copy.execute("PRAGMA journal_mode=DELETE")
    # litestream's bookkeeping belongs to the file it replicated, not to the state: a voter
    # started from this copy runs a litestream of its own.
    tables = copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    for (table,) in tables.fetchall():
        if table.startswith("_litestream_"):
            copy.execute(f'DROP TABLE "{table}"')
    return facts(copy)


def pack(
    db_path: Path,
    out: Path,
    *,
    made_by: str,
    origin: str,
    cluster: str,
    index: int,
    term: int,
    schema: int,
    counts: dict[str, int],
    voters: list[str] | None = None,
    raft: bytes = b"",
) -> SnapshotHeader:
    """Put the database file `db_path` (self-contained: not in WAL mode) behind a header."""
    digest = hashlib.sha256()
    size = 0
    with open(db_path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    header = SnapshotHeader(
        format=FORMAT,
        cluster=cluster,
        index=index,
        term=term,
        schema=schema,
        counts=counts,
        size=size,
        sha256=digest.hexdigest(),
        made_at=time.time(),
        made_by=made_by,
        origin=origin,
        voters=sorted(voters or []),
        raft=raft,
    )
    encoded = msgspec.json.encode(header)
    with _temporary(Path(out).parent, ".snapshot") as temporary:
        with open(temporary, "wb") as f, open(db_path, "rb") as body:
            f.write(MAGIC + struct.pack(">I", len(encoded)) + encoded)
            for chunk in iter(lambda: body.read(CHUNK), b""):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, out)
    _sync_dir(Path(out).parent)
    return header


# --- reading ------------------------------------------------------------------------


def read_header(path: Path) -> SnapshotHeader:
    """The header of the snapshot at `path`, checked against the file's length (not its
    checksum: `verify` reads it all). BadSnapshot says why it cannot be one."""
    try:
        with open(path, "rb") as f:
            header, _start = _read_header(f, path)
            total = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BadSnapshot(f"{path}: cannot read it: {e.strerror or e}") from None
    body = total - _start
    if body != header.size:
        raise BadSnapshot(
            f"{path} is truncated or damaged: its header says {header.size:,} bytes of "
            f"database, the file holds {body:,}"
        )
    return header


def _read_header(f: BinaryIO, path: Path) -> tuple[SnapshotHeader, int]:
    start = f.read(len(MAGIC) + 4)
    if not start.startswith(MAGIC):
        if start.startswith(b"SQLite format 3"):
            why = "it is a bare SQLite database (no snapshot header)"
        else:
            why = "it does not start with a snapshot header"
        raise BadSnapshot(f"{path} is not a Colony snapshot: {why}")
    if len(start) < len(MAGIC) + 4:
        raise BadSnapshot(f"{path} is truncated: it ends inside its header")
    (length,) = struct.unpack(">I", start[len(MAGIC) :])
    if length > MAX_HEADER:
        raise BadSnapshot(f"{path} is damaged: its header claims {length:,} bytes")
    raw = f.read(length)
    if len(raw) < length:
        raise BadSnapshot(f"{path} is truncated: it ends inside its header")
    try:
        header = msgspec.json.decode(raw, type=SnapshotHeader)
    except msgspec.DecodeError as e:
        raise BadSnapshot(f"{path} is damaged: its header cannot be read ({e})") from None
    if header.format > FORMAT:
        raise BadSnapshot(
            f"{path} is in snapshot format {header.format}, newer than this Colony reads "
            f"({FORMAT}): restore it with a newer version of Colony"
        )
    return header, len(start) + length


def verify(path: Path, progress: Progress | None = None) -> SnapshotHeader:
    """Check the snapshot at `path` whole (header, length and checksum); its header."""
    return _copy_body(path, None, progress)


def extract(path: Path, db_out: Path, progress: Progress | None = None) -> SnapshotHeader:
    """Write the database of the snapshot at `path` to `db_out`, atomically, once its
    checksum and SQLite's own check passed (nothing is replaced otherwise)."""
    db_out = Path(db_out)
    db_out.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(db_out.parent, ".db") as temporary:
        with open(temporary, "wb") as sink:
            header = _copy_body(path, sink, progress)
            sink.flush()
            os.fsync(sink.fileno())
        db = sqlite3.connect(temporary)
        try:
            (result,) = db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            result = str(e)
        finally:
            db.close()
        if result != "ok":
            raise BadSnapshot(f"{path}: its database fails SQLite's check: {result}")
        for suffix in ("-wal", "-shm"):  # a stale WAL beside the target would be replayed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{db_out}{suffix}")
        os.replace(temporary, db_out)
    _sync_dir(db_out.parent)
    return header


def _copy_body(path: Path, sink: BinaryIO | None, progress: Progress | None) -> SnapshotHeader:
    header = read_header(path)
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        _header, start = _read_header(f, path)
        f.seek(start)
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, header.size)
    if digest.hexdigest() != header.sha256:
        raise BadSnapshot(
            f"{path} is corrupted: its database's checksum is {digest.hexdigest()[:16]}…, "
            f"the header says {header.sha256[:16]}…"
        )
    return header


def check_fits(header: SnapshotHeader, where: str, cluster: str | None) -> None:
    """Refuse a snapshot this Colony cannot load (a newer schema) or that belongs to another
    cluster than `cluster` (None: any cluster will do, e.g. `colony up --restore`)."""
    if header.schema > SCHEMA:
        raise BadSnapshot(
            f"{where} was made by a newer version of Colony (schema {header.schema}; this "
            f"one reads up to {SCHEMA}): upgrade Colony to restore it"
        )
    if cluster is not None and header.cluster and header.cluster != cluster:
        raise BadSnapshot(
            f"{where} is from another cluster ({header.cluster}; this one is {cluster}): "
            "restore it into a new cluster with `colony up --restore FILE`"
        )


def describe(header: SnapshotHeader) -> str:
    """One line for people: where in the log, from where, when."""
    age = time.time() - header.made_at
    return (
        f"index {header.index} (term {header.term}), {header.origin} by {header.made_by}, "
        f"{_ago(age)} ago, {header.size / 2**20:.1f} MiB"
    )


def _ago(seconds: float) -> str:
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


# --- files --------------------------------------------------------------------------


@contextlib.contextmanager
def _temporary(folder: Path, suffix: str) -> Iterator[Path]:
    """A fresh file name in `folder` (same file system: renames are atomic), removed
    afterwards unless it was renamed away."""
    fd, name = tempfile.mkstemp(prefix=".snapshot-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        for leftover in (name, f"{name}-journal", f"{name}-wal", f"{name}-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
