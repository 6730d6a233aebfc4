"""The change stream: the Raft leader copies the replicated change log to JetStream.

The change log (the `changes` table) is the source of truth; its rows are
numbered 1, 2, 3... identically on every voter. The leader publishes them in
order, each as a `Change` signed with the cluster secret, with a message id
keyed with the same secret (`Nats-Msg-Id`): the stream drops a duplicate (two
voters may both believe for a moment that they lead), and nobody without the
secret can pre-empt an id.

Until per-service NATS credentials arrive anyone who reaches NATS can publish
on the stream's subjects. So a stream sequence is only an order, not a change
index, and nothing the relay does depends on what others publish: it resumes
after the last *genuine* change on the stream (signed, found walking back,
filling any gap a failed publish left), and deletes the forgeries it meets
(in the gap before an acknowledgement it expected next, or at the tail). A
reader with the secret checks signatures; `Change.index` says where each
change belongs.

A restore takes the database back in time: the stream may hold changes of a
future that no longer happens (a lost future), whose indexes the new history
takes again. A leader that finds the stream's last genuine change not in its
database's history purges the stream, with a warning (made again: a purge would
keep the message ids it drops duplicates by), and relays its database's changes
afresh: else the new changes would go under the lost ones' indexes, dropped as
their duplicates. Judged by content, not by counts (the new history soon makes
as many changes as the lost one did): the database's change at the stream's
change's index differs from it; or the database has none there though it applied
past the entry that made it, or that entry is not committed here. A leader
merely behind holds a prefix of the same history: its changes are the stream's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

import aiosqlite

from colony.consensus import changelog, metrics, stream
from colony.consensus.kinds import REGISTRY
from colony.shared import subjects
from colony.shared.bus import Bus, BusError, PubAck, Publication
from colony.shared.messages import Change, DecodeError, NewerVersion, decode
from colony.shared.signing import BadSignature, sign, token, verify

BATCH = 256
"""Rows read, published, then acknowledged per round."""
ACK_WAIT = 5.0
"""Seconds to wait for the stream's acknowledgements of a round."""
IDLE = 0.02
"""Seconds between looks at the change log while nothing is new, until the first `wake`."""
WOKEN_IDLE = 1.0
"""Seconds between looks once `wake` is told of every applied entry: a safety net only
(each look is a query on the database's thread; 50 a second cost an idle leader ~1 % of a
core)."""
PAUSE_AFTER_BUG = 2.0
"""Seconds the relay waits after an unexpected error before it starts over."""
KEPT = 7 * 24 * 3600.0
"""Seconds the stream keeps a change at most (also at most as many as its limits say)."""
CATCH_UP = 10.0
"""Seconds a new leader's database may take to apply the entry that made the stream's
last change, before the change is taken for another history's (its log never reaches it)."""
DUPLICATE_WINDOW = 30.0
"""Seconds the stream remembers a change's message id to drop a second copy: two voters
that both lead for a moment, a round sent again after a pause (its acks wait ACK_WAIT).
Each id held costs the servers memory: at 123 changes/s the default 2 min held 15,000."""

log = logging.getLogger("colony.consensus.relay")


class ChangeRelay:
    def __init__(
        self,
        bus: Bus,
        reader: aiosqlite.Connection,
        is_leader,
        replicas: int,
        secret: bytes,
        max_msgs: int = -1,
        max_bytes: int = -1,
        change_kinds: tuple[str, ...] = REGISTRY.change_kinds,
        committed: Callable[[], int | None] = lambda: 0,
    ) -> None:
        """`committed()`: the Raft commit index this voter knows (an entry up to it will be
        applied here: a change the stream holds from it is not a lost future's); None when
        Raft's status cannot be read now (nothing is decided on it)."""
        self.bus = bus
        self.committed = committed
        self.change_kinds = frozenset(change_kinds)
        """What the stream captures (with the `skipped` marker): the registry's kinds."""
        self.max_msgs, self.max_bytes = max_msgs, max_bytes
        """The stream's limits (consensus.change_stream_max_msgs and _max_bytes; -1: none)."""
        self.reader = reader
        self.is_leader = is_leader
        self.replicas = replicas
        self.secret = secret
        self.relayed = 0
        """Every change up to this index is on the stream, as far as this voter knows."""
        self._last_seq = 0
        """The stream sequence of the last genuine change this relay saw stored."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new = asyncio.Event()
        """Set by `wake`: an entry was applied since the relay last looked."""
        self._wake_pending = False
        self._idle = IDLE

    def wake(self) -> None:
        """An entry was applied (it may have added changes): look now. Thread-safe (meant for
        the Raft thread, after each apply). Once told, the relay trusts it to be told of every
        applied entry and looks by itself only every `WOKEN_IDLE` seconds."""
        loop = self._loop
        if loop is None or self._wake_pending:
            return  # not running yet (its first look comes anyway), or a wake on its way
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed: the relay has stopped
            loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        self._wake_pending = False
        self._idle = WOKEN_IDLE
        self._new.set()

    async def _nothing_new(self) -> None:
        """Wait until woken, or the next look by the clock."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancellation that
        # comes as the wait ends, and the relay would outlive its voter.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._idle):
                await self._new.wait()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready = False
        while True:
            if not self.is_leader():
                ready = False
                await asyncio.sleep(IDLE * 5)
                continue
            try:
                if not ready:
                    await self._take_over()
                    ready = True
                self._new.clear()  # before the look: a wake after it is not lost
                if not await self._relay_some():
                    await self._nothing_new()
            except (BusError, StreamWentBack, OSError) as e:
                log.warning("change relay paused", extra={"reason": str(e)})
                ready = False
                await asyncio.sleep(0.5)
            except Exception:
                # A bug (or a database in a state it never expected): the change stream
                # must not stop for good over it. Say so loudly, pause, start over.
                log.exception("change relay round failed: paused, starting over")
                ready = False
                await asyncio.sleep(PAUSE_AFTER_BUG)

    async def _take_over(self) -> None:
        """Make sure the stream exists; resume after its last genuine change."""
        await self.bus.ensure_stream(
            subjects.CHANGES_STREAM,
            [
                subjects.change(kind, subjects.ANY).name
                for kind in sorted({*self.change_kinds, subjects.SKIPPED})
            ],
            replicas=self.replicas,
            max_age=KEPT,
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            duplicate_window=DUPLICATE_WINDOW,
            # where the StreamKeeper keeps its replicas (on the voters)
            placement=await stream.placement_of(self.bus, subjects.CHANGES_STREAM),
        )
        await self._resume()

    async def _resume(self) -> None:
        """Walk back from the stream's end over up to one round of genuine changes (a
        round in flight when the last leader stopped may have left a gap), deleting
        forgeries; resume after the last change that has every earlier one before it."""
        info = await self.bus.stream_state(subjects.CHANGES_STREAM)
        seen: set[int] = set()
        seq, last_seq, newest = info.last_seq, 0, None
        while seq >= max(info.first_seq, 1) and len(seen) < BATCH:
            change = await self._read(seq)
            if change is not None:
                seen.add(change.index)
                last_seq = last_seq or seq
                if newest is None or change.index > newest.index:
                    newest = change
            seq -= 1
        if newest is not None and await self._lost_future(newest):
            await self._start_afresh(newest)
            return
        if not seen:
            # Nothing genuine left (aged out on an idle cluster, or never relayed). A stream
            # sequence is no change index (forgeries and markers take sequences too): resume
            # from the first change the database holds (those it dropped were relayed),
            # sending again what the stream may still hold (its dedup window drops recent
            # copies; readers order by Change.index).
            self.relayed = await changelog.dropped(self.reader)
            self._last_seq = info.last_seq
            return
        complete = min(seen)
        while complete + 1 in seen:
            complete += 1
        self.relayed, self._last_seq = complete, last_seq

    async def _lost_future(self, newest: Change) -> bool:
        """Whether the stream's newest genuine change is not of this database's history:
        the database holds another change at its index; or it holds none there though it
        applied past the entry that made it, or that entry is neither applied nor
        committed here `CATCH_UP` seconds on."""
        deadline = time.monotonic() + CATCH_UP
        while self.is_leader():
            applied, last = await changelog.positions(self.reader)
            if newest.index <= last:
                # The one change at its index, or the next (the one was dropped by
                # retention, after it was relayed: this history's).
                ours = await changelog.after(self.reader, newest.index - 1, 1)
                return bool(ours) and ours[0].index == newest.index and not _same(newest, ours[0])
            if newest.index <= await changelog.dropped(self.reader):
                return False  # every change dropped was this history's, and relayed
            if newest.log_index <= applied:
                return True
            committed = self.committed()  # None: Raft's status unknown now, decide nothing
            late = time.monotonic() > deadline
            if committed is not None and newest.log_index > committed and late:
                return True
            await asyncio.sleep(IDLE * 5)  # a new leader still applying: wait for it
        return False

    async def _start_afresh(self, newest: Change) -> None:
        """Empty the stream (a lost future's changes) and relay the database's anew."""
        applied, last = await changelog.positions(self.reader)
        log.warning(
            "the change stream holds changes of another history than this database's (a "
            "restore took it back in time): emptying the stream; the changes from the "
            "database are relayed anew",
            extra={
                "stream_index": newest.index, "stream_log_index": newest.log_index,
                "database_index": last, "applied": applied,
            },
        )  # fmt: skip
        # Made again rather than purged: a purge keeps the message ids the stream drops as
        # duplicates, and the new history's changes would be dropped under the lost ones'.
        placement = await stream.placement_of(self.bus, subjects.CHANGES_STREAM)
        await self.bus.recreate_stream(subjects.CHANGES_STREAM, placement)
        self.relayed = await changelog.dropped(self.reader)
        self._last_seq = (await self.bus.stream_state(subjects.CHANGES_STREAM)).last_seq

    async def _read(self, seq: int) -> Change | None:
        """The genuine change at stream sequence `seq`; a forgery there is deleted."""
        raw = await self.bus.stored(subjects.CHANGES_STREAM, seq)
        if raw is None:
            return None  # deleted
        try:
            return verify(self.secret, decode(raw.data, Change), fresh_for=None)
        except NewerVersion:
            return None  # a newer voter's, during an upgrade: not this one's to judge
        except (DecodeError, BadSignature) as e:
            log.warning(
                "deleted a forged change from the stream",
                extra={"seq": seq, "subject": raw.subject, "reason": str(e)},
            )
            await self.bus.delete_stored(subjects.CHANGES_STREAM, seq)
            return None

    async def _sweep(self, after: int, before: int) -> None:
        """Stream sequences strictly between two of this relay's: another leader's changes
        of a moment ago, or forgeries (deleted)."""
        for seq in range(after + 1, before):
            await self._read(seq)

    async def _relay_some(self) -> bool:
        """Publish the next rows after the last relayed one; False if there were none.

        Pipelined: the whole batch is published before the acks are awaited (the
        server stores one connection's publishes in order). `relayed` advances
        only over acknowledged changes with none missing before them, so a refused
        or lost publish is sent again next round, never skipped.
        """
        batch = await changelog.after(self.reader, self.relayed, BATCH)
        if not batch:
            return False
        if batch[0].index > self.relayed + 1:
            # Dropped by retention before this relay sent them: only changes relayed are
            # dropped, so the stream lost them (it went back) and nobody can send them again.
            first, last = self.relayed + 1, batch[0].index - 1
            log.error(
                f"changes {first} to {last} are on neither the change stream nor the "
                "management database (the stream lost them after they were relayed, and "
                "retention dropped them since): they cannot be sent again; readers will "
                "find a gap in Change.index there",
                extra={"first": first, "last": last},
            )
            metrics.CHANGES_LOST.inc(amount=last - first + 1)
            self.relayed = last
        sent: list[int] = []

        def publications():
            for row in batch:
                if not self.is_leader():
                    return
                subject, event = _event(row, self.change_kinds)
                msg_id = f"{row.index}-{token(self.secret, f'change {row.index}')}"
                sent.append(row.index)
                yield Publication(subject, sign(self.secret, event), msg_id)

        publishing = self.bus.stream_publish_all(publications(), timeout=ACK_WAIT)
        async with contextlib.aclosing(publishing) as acks:
            async for ack in acks:
                await self._acknowledged(sent[ack.position], ack)
        return True

    async def _acknowledged(self, index: int, ack: PubAck) -> None:
        """The stream stored change `index`: advance past it if nothing is missing before."""
        if not ack.duplicate and ack.seq <= self._last_seq:
            raise StreamWentBack(
                f"the stream stored change {index} at sequence {ack.seq}, "
                f"not after {self._last_seq}: it lost changes (a replica behind took "
                "over); resuming from what it holds"
            )
        if not ack.duplicate and ack.seq > self._last_seq + 1:
            await self._sweep(self._last_seq, ack.seq)
        self._last_seq = max(self._last_seq, ack.seq)
        if index == self.relayed + 1:
            self.relayed = index


class StreamWentBack(Exception):
    """The stream's sequence went back: it lost changes it had acknowledged (its replicas
    were replaced by one that was behind, or it was re-created)."""


def _event(row: changelog.Row, captured: frozenset[str]) -> tuple[subjects.Subject[Change], Change]:
    """The subject and change to publish for `row`; for a row that cannot be published
    (apply checks each change, so only a bug or a newer version's kind makes one), a
    `skipped` marker in its place, so the stream keeps one message per change index."""
    try:
        if row.kind not in captured:
            raise ValueError(f"the change stream does not capture kind {row.kind!r}")
        detail = json.loads(row.detail)
        if not isinstance(detail, dict):
            raise ValueError(f"its detail is not a JSON object: {row.detail[:80]!r}")
        return subjects.change(row.kind, row.id), _change(row, row.kind, row.id, detail)
    except (ValueError, TypeError, RecursionError) as e:  # SubjectError, JSON, size...
        reason = f"change {row.index} ({row.kind!r} {row.id!r}) cannot be published: {e}"
        log.error(f"{reason}; relaying a '{subjects.SKIPPED}' marker in its place")
        marker = {"kind": str(row.kind)[:64], "id": str(row.id)[:64], "reason": reason[:1024]}
        kind_token = row.kind if _is_token(row.kind) else "unknown"
        change = _change(row, subjects.SKIPPED, kind_token, marker)
        return subjects.change(subjects.SKIPPED, kind_token), change


def _same(change: Change, row: changelog.Row) -> bool:
    """Whether `change` is what the relay published for `row` (the same index): another
    history's change there differs in its entry, time, object or version. A `skipped`
    marker names the row's kind and id only in its detail (shortened): not compared."""
    if (change.log_index, change.ts, change.version) != (row.log_index, row.ts, row.version):
        return False
    return change.kind == subjects.SKIPPED or (change.kind, change.id) == (row.kind, row.id)


def _change(row: changelog.Row, kind: str, id: str, detail: dict) -> Change:
    return Change(
        index=row.index, kind=kind, id=id, version=row.version, log_index=row.log_index,
        cause=row.cause, epoch=row.epoch, detail=detail, ts=row.ts,
    )  # fmt: skip


def _is_token(value: object) -> bool:
    try:
        subjects.token(str(value))
    except subjects.SubjectError:
        return False
    return True
