"""What the replica holds, told from litestream's log and the database's own `meta` rows.

Litestream numbers what it copies in transactions (txids): every sync of the
database's WAL that found new commits makes one LTX file, txid T, which it then
uploads to the replica. It knows nothing of Raft. The Raft index a txid holds is
learned by watching both sides:

- the snapshotter reads the database's (last_applied, applied_term) every
  fraction of a second (`read`), noting when each value was first seen;
- litestream logs (at debug level) "sync" with the txid it is about to make,
  when a sync starts: every commit made before that moment is in that txid;
  the same txid logged again means the earlier attempt found nothing new, so
  everything committed before it was already in the txid before;
- "ltx file uploaded" (level 0, maxTXID) says the replica now holds that txid.

So txid T holds at least the newest (index, term) read before its sync began:
a lower bound, never more than the replica really has (a restore may hold a
little more). Errors (ERROR lines) make the replica unhealthy with litestream's
own words until an upload succeeds or litestream says it recovered.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime

KEEP_READINGS = 20000
"""Distinct positions remembered (lease renewals move the index ~5 times a second:
about an hour of them), to date what a txid holds and how long changes waited."""


@dataclass(frozen=True, order=True)
class Held:
    index: int
    term: int


@dataclass(frozen=True)
class Reading:
    at: float
    """Wall-clock time the value was read (it was committed before)."""
    held: Held


def log_time(text: str) -> float:
    """Litestream's RFC 3339 time (nanoseconds) as a Unix time."""
    if "." in text:  # Python parses at most microseconds
        head, rest = text.split(".", 1)
        digits = rest.rstrip("Z")
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Tracker:
    """The replica's position, health and lag (pure: fed readings and log lines)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        """Each distinct position first seen, in order."""
        self.attempts: dict[int, Held] = {}
        """txid litestream started a sync for -> what was committed before it started."""
        self.holds: dict[int, Held] = {}
        """txid litestream made -> what it holds at least."""
        self.replica_txid = 0
        self.synced_at = 0.0
        self.problem = ""

    # --- inputs ---------------------------------------------------------------------

    def read(self, at: float, index: int, term: int) -> None:
        held = Held(index, term)
        if not self.readings or self.readings[-1].held != held:
            self.readings.append(Reading(at, held))
            del self.readings[:-KEEP_READINGS]

    def restarted(self) -> None:
        """Litestream started again: syncs it began before are forgotten (their txids
        may be made again, from what the database holds now)."""
        self.attempts.clear()

    def failed(self, problem: str) -> None:
        self.problem = problem

    def line(self, event: dict) -> None:
        """One log line of litestream's (`litestream.parse`d)."""
        msg = event.get("msg", "")
        try:
            at = log_time(event["time"])
        except (KeyError, ValueError):
            return
        if msg == "sync" and "txid" in event:
            self._sync_started(_txid(event["txid"]), at)
        elif msg == "ltx file uploaded" and event.get("level2") == 0:  # level 0: one sync
            self._uploaded(_txid(event.get("maxTXID", "0")), at)
        elif msg == "replica sync" and isinstance(event.get("txid"), dict):
            txid = event["txid"]
            replica, db = _txid(txid.get("replica", "0")), _txid(txid.get("db", "0"))
            self.replica_txid = max(self.replica_txid, replica)
            if replica == db and not self.problem:
                self.synced_at = at  # nothing left to upload
        elif msg == "replica sync recovered":
            self.problem = ""
        elif event.get("level") == "ERROR":
            error = event.get("error", "")
            self.problem = f"litestream: {msg}: {error}" if error else f"litestream: {msg}"

    def _sync_started(self, txid: int, at: float) -> None:
        before = self._before(at)
        if txid in self.attempts:
            # The earlier attempt at this txid found nothing new: the txid before holds
            # everything committed before that attempt.
            self._holds(txid - 1, self.attempts[txid])
        elif txid - 1 in self.attempts:
            self._holds(txid - 1, self.attempts.pop(txid - 1))
        if before is not None:
            self.attempts[txid] = before

    def _uploaded(self, txid: int, at: float) -> None:
        if txid in self.attempts:
            self._holds(txid, self.attempts.pop(txid))
        self.replica_txid = max(self.replica_txid, txid)
        self.synced_at = at
        self.problem = ""
        for old in [t for t in self.holds if t < txid - 8]:
            del self.holds[old]
        for old in [t for t in self.attempts if t < txid - 8]:
            del self.attempts[old]
        # Readings older than the newest one the replica holds date nothing any more
        # (later syncs started after it): keep that one and what came after.
        held = self.position()
        kept = bisect.bisect_right(self.readings, held, key=lambda r: r.held)
        del self.readings[: max(0, kept - 1)]

    def _holds(self, txid: int, held: Held) -> None:
        if txid > 0:
            self.holds[txid] = max(self.holds.get(txid, held), held)

    def _before(self, at: float) -> Held | None:
        """The newest position read before `at`."""
        i = bisect.bisect_right(self.readings, at, key=lambda r: r.at)
        return self.readings[i - 1].held if i else None

    # --- outputs --------------------------------------------------------------------

    def position(self) -> Held:
        """What the replica holds at least (0, 0 when not known yet)."""
        known = [t for t in self.holds if t <= self.replica_txid]
        return self.holds[max(known)] if known else Held(0, 0)

    def lag(self, now: float) -> float:
        """Seconds the oldest change the replica lacks has waited (0: it has them all)."""
        held = self.position()
        for reading in self.readings:
            if reading.held > held:
                return max(0.0, now - reading.at)
        return 0.0


def _txid(text: object) -> int:
    try:
        return int(str(text), 16)
    except ValueError:
        return 0
