"""A snapshot from a replica: which one (`choose`), and how (`restore`).

The restore works in a temporary folder beside the snapshot's path (same file
system), and the snapshot itself is written atomically (colony.shared.snapshot):
a failure leaves nothing half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from pathlib import Path

from colony.shared import snapshot
from colony.shared.config import SnapshotterSettings
from colony.shared.messages import ReplicaPosition, SnapshotHeader
from colony.snapshotter import litestream

RESTORE_TIMEOUT = 600.0
"""Seconds `litestream restore` may take (a large database from a remote target)."""
KEY = "replica.db"
"""The database path the restore config names: litestream's key for the replica."""


def choose(
    entries: list[ReplicaPosition], min_index: int = 0, voters: set[str] | None = None
) -> list[ReplicaPosition]:
    """The healthy replicas holding `min_index` or more, freshest (term, index) first;
    only the `voters`' when they are known (another node's replica is no longer updated,
    and may hold a history a restore replaced: never the one to start from)."""
    usable = [
        e
        for e in entries
        if e.healthy
        and e.index >= min_index
        and e.index > 0
        and (voters is None or e.node in voters)
    ]
    return sorted(usable, key=lambda e: (e.term, e.index, e.synced_at), reverse=True)


async def restore(
    url: str, out: Path, *, made_by: str, min_index: int = 0, replica: dict | None = None
) -> SnapshotHeader:
    """Restore the replica at `url` and write it as a snapshot file at `out` (`replica`:
    more replica settings for litestream, e.g. NATS credentials)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=out.parent) as work:
        folder = Path(work)
        config = folder / "litestream.yml"
        settings = SnapshotterSettings()
        litestream.write_config(
            config,
            litestream.render(folder / KEY, url, settings, log_level="warn", replica=replica),
        )
        restored = folder / "restored.db"
        process = await asyncio.create_subprocess_exec(
            litestream.binary(), "restore", "-config", str(config), "-o", str(restored),
            str(folder / KEY),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            output, _ = await asyncio.wait_for(process.communicate(), RESTORE_TIMEOUT)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0 or not restored.exists():
            said = _last_words(output)
            raise RuntimeError(f"litestream restore from {litestream.shown(url)} failed: {said}")
        header = await asyncio.to_thread(_snapshot, restored, out, made_by, min_index)
    return header


def _snapshot(restored: Path, out: Path, made_by: str, min_index: int) -> SnapshotHeader:
    facts = _facts(restored)
    if facts["index"] < min_index:
        raise RuntimeError(
            f"the replica holds index {facts['index']}, less than the {min_index} asked for"
        )
    return snapshot.make_from_copy(restored, out, made_by=made_by, origin="replica")


def _facts(db: Path) -> dict:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return snapshot.facts(conn)
    finally:
        conn.close()


def _last_words(output: bytes) -> str:
    lines = [line for line in output.decode(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no output"
