"""Helpers for the snapshotter's tests: a voter's database written as consensus would, and
a snapshotter run in the test's event loop."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgspec
import psutil

from colony.shared import runner, snapshot
from colony.shared.config import Config, SnapshotterSettings
from colony.snapshotter.service import Snapshotter

CLUSTER = "0123456789abcde"


class VoterDb:
    """<node dir>/consensus/management.db in WAL mode, with a `meta` table (last_applied,
    applied_term, cluster) and a `kv` table, each write one "applied entry"."""

    def __init__(self, node_dir: Path, term: int = 1) -> None:
        self.path = Path(node_dir) / "consensus" / "management.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value INTEGER)")
        self.term = term
        self.index = 0
        self.keys: list[tuple[int, str]] = []
        """(index, key) of every key written, to know the content at any index."""
        self.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            (snapshot.CLUSTER, snapshot.cluster_number(CLUSTER)),
        )

    def write(self, key: str | None = None) -> int:
        """Apply one entry (a key set to its index, or just the index moved, as a lease
        renewal does); its index."""
        self.index += 1
        self.conn.execute("BEGIN IMMEDIATE")
        if key is not None:
            self.conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, self.index))
            self.keys.append((self.index, key))
        self.conn.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?), (?, ?)",
            (snapshot.APPLIED, self.index, snapshot.APPLIED_TERM, self.term),
        )
        self.conn.execute("COMMIT")
        return self.index

    def kv(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT key, value FROM kv").fetchall())

    def kv_at(self, index: int) -> dict[str, int]:
        """What `kv` held once entry `index` was applied."""
        return {key: i for i, key in self.keys if i <= index}

    def close(self) -> None:
        self.conn.close()


async def keep_writing(db: VoterDb, every: float = 0.05, keys: int = 20) -> None:
    """Entries until cancelled, like a busy cluster's (some keys, lease renewals between)."""
    while True:
        db.write(f"k{db.index % keys}" if db.index % 3 == 0 else None)
        await asyncio.sleep(every)


def snapshotter_config(
    nats_server, node: str, target: str = "nats", voters: list[str] | None = None, **settings
) -> Config:
    config = nats_server.node_config(node)
    return msgspec.structs.replace(
        config,
        consensus=msgspec.structs.replace(
            config.consensus, voters=[node] if voters is None else voters
        ),
        snapshotter=SnapshotterSettings(
            target=target, sync_interval=0.2, report_interval=0.3, **settings
        ),
    )


class Running:
    """A snapshotter service run by the runner (as `python -m` would), stopped by `stop`."""

    def __init__(self, config: Config) -> None:
        self.service = Snapshotter()
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(runner.run(self.service, config, stop=self.stopping))

    async def stop(self) -> int:
        self.stopping.set()
        return await asyncio.wait_for(self.task, runner.SHUTDOWN_GRACE)


def gone(pid: int) -> bool:
    """The process has exited (a zombie, not yet reaped, counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
