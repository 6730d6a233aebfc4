"""The change relay on a real nats-server and SQLite: told of each applied entry (`wake`, from
another thread, as the Raft thread does), it relays a new change at once instead of at its
next look by the clock; until it is first told, it looks every IDLE seconds as before."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import aiosqlite
import pytest

from colony.consensus import changelog, relay
from colony.consensus.relay import ChangeRelay
from colony.harness.processes import poll
from colony.shared import changes
from colony.shared.bus import BusError

SECRET = b"s" * 32


class Log:
    """A voter's database as the machine writes it: applied index and change log."""

    def __init__(self, path) -> None:
        self.path = path
        self.applied = 0
        with sqlite3.connect(path) as db:
            db.executescript(changelog.TABLES)

    def apply(self) -> None:
        """Apply the next entry, which makes one change."""
        self.applied += 1
        with sqlite3.connect(self.path) as db:
            changelog.set_applied(db, self.applied, term=1)
            changelog.append(db, [(self.applied, "kv", "k", self.applied, "t", 0, "{}", 0.0)])


@pytest.fixture
async def running(bus, tmp_path, monkeypatch):
    monkeypatch.setattr(relay, "WOKEN_IDLE", 30.0)  # a relay that missed a wake shows it
    log = Log(tmp_path / "management.db")
    reader = await aiosqlite.connect(log.path)
    change_relay = ChangeRelay(bus, reader, lambda: True, 1, SECRET)
    task = asyncio.create_task(change_relay.run())
    yield log, change_relay
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await reader.close()


async def relayed_within(bus, index: int, seconds: float) -> float:
    """Seconds until change `index` is on the stream; fails after `seconds`."""
    started = time.monotonic()

    async def there() -> bool:
        try:
            return await changes.last_index(bus, SECRET) >= index
        except BusError:  # no stream yet
            return False

    await poll(there, seconds, f"change {index} on the stream", every=0.005)
    return time.monotonic() - started


async def test_a_relay_never_woken_looks_by_the_clock(running, bus):
    log, _relay = running
    log.apply()
    await relayed_within(bus, 1, 10)  # IDLE: 20 ms


async def test_a_woken_relay_relays_each_new_change_at_once(running, bus):
    log, change_relay = running
    log.apply()
    change_relay.wake()
    await relayed_within(bus, 1, 10)
    for index in range(2, 7):
        # From another thread, after the commit, as pysyncobj's thread does after an apply.
        log.apply()
        threading.Thread(target=change_relay.wake).start()
        # Far below WOKEN_IDLE (30 s here): only the wake can have made it look.
        assert await relayed_within(bus, index, 2.0) < 1.0
    log.apply()  # not told: a woken relay no longer looks by the clock every IDLE seconds
    with pytest.raises(TimeoutError):
        await relayed_within(bus, 7, 0.5)
    change_relay.wake()
    await relayed_within(bus, 7, 2.0)
