"""The change stream: the Raft leader copies the replicated change log to JetStream.

The change log (the `changes` table) is the source of truth; its rows are
numbered 1, 2, 3... identically on every voter. The leader publishes row n
as stream message n: each publish names the sequence it expects to follow
(`Nats-Expected-Last-Sequence: n - 1`) and carries `Nats-Msg-Id: n`, so the
stream can hold neither a gap nor a duplicate, even while two voters both
believe for a moment that they lead. A new leader reads the stream's last
sequence and resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiosqlite
import nats.errors
import nats.js.errors

from colony.shared import subjects
from colony.shared.bus import Bus
from colony.shared.messages import Change, encode

BATCH = 256
"""Rows read, published, then acknowledged per round."""
ACK_WAIT = 5.0
"""Seconds to wait for the stream's acknowledgements of a round."""
IDLE = 0.02
"""Seconds between looks at the change log while nothing is new."""
KEPT = 7 * 24 * 3600.0
"""Seconds the stream keeps a change (the log itself keeps every change)."""
_WRONG_LAST_SEQUENCE = 10071

log = logging.getLogger("colony.consensus.relay")


class ChangeRelay:
    def __init__(self, bus: Bus, reader: aiosqlite.Connection, is_leader, replicas: int) -> None:
        self.bus = bus
        self.reader = reader
        self.is_leader = is_leader
        self.replicas = replicas
        self.relayed = 0
        """The stream's last sequence as this voter last knew it (0: unknown)."""

    async def run(self) -> None:
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
                if not await self._relay_some():
                    await asyncio.sleep(IDLE)
            except (nats.errors.Error, nats.js.errors.Error, OSError) as e:
                log.warning("change relay paused", extra={"reason": str(e)})
                ready = False
                await asyncio.sleep(0.5)

    async def _take_over(self) -> None:
        """Make sure the stream exists; resume after its last message."""
        await self.bus.ensure_stream(
            subjects.CHANGES_STREAM,
            [subjects.change(kind, subjects.ANY).name for kind in subjects.CHANGE_KINDS],
            replicas=self.replicas,
            max_age=KEPT,
        )
        await self._resume()

    async def _resume(self) -> None:
        """Carry on after the stream's last message, whoever published it."""
        info = await self.bus.js.stream_info(subjects.CHANGES_STREAM)
        self.relayed = info.state.last_seq

    async def _relay_some(self) -> bool:
        """Publish the next rows after the stream's last one; False if there were none.

        Pipelined: the whole batch is published before the acks are awaited. The
        server takes one connection's publishes in order, so each one's expected
        last sequence still holds; a refusal (someone else got further) stops
        the batch, and the relay re-reads where the stream is.
        """
        async with self.reader.execute(
            "SELECT idx, log_index, kind, id, version, cause, epoch, detail FROM changes "
            "WHERE idx > ? ORDER BY idx LIMIT ?",
            (self.relayed, BATCH),
        ) as rows:
            batch = await rows.fetchall()
        if not batch:
            return False
        nc = self.bus.nc
        inbox = nc.new_inbox()
        acks: asyncio.Queue = asyncio.Queue()
        sub = await nc.subscribe(f"{inbox}.*", cb=acks.put)
        try:
            sent = 0
            for index, log_index, kind, id, version, cause, epoch, detail in batch:
                if not self.is_leader():
                    break
                event = Change(
                    index=index, kind=kind, id=id, version=version, log_index=log_index,
                    cause=cause, epoch=epoch, detail=json.loads(detail),
                )  # fmt: skip
                headers = {
                    "Nats-Msg-Id": str(index),
                    "Nats-Expected-Last-Sequence": str(index - 1),
                }
                await nc.publish(
                    subjects.change(kind, id).name,
                    encode(event),
                    reply=f"{inbox}.{index}",
                    headers=headers,
                )
                sent += 1
            for _ in range(sent):
                reply = await asyncio.wait_for(acks.get(), ACK_WAIT)
                if not reply.data:  # a status message: no stream took it (yet)
                    raise nats.errors.NoRespondersError
                ack = json.loads(reply.data)
                if "error" in ack:
                    if ack["error"].get("err_code") != _WRONG_LAST_SEQUENCE:
                        raise nats.js.errors.APIError(description=str(ack["error"]))
                    await self._resume()  # a leader of a moment ago got further
                    return True
                self.relayed = max(self.relayed, ack["seq"])
        except TimeoutError:
            raise nats.errors.TimeoutError from None  # the stream did not answer: pause
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return True
