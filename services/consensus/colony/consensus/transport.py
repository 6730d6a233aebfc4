"""pysyncobj's transport over NATS: each voter receives on its own subject, sends to its peers'.

Two threads meet here. pysyncobj runs its Raft loop on its own tick thread
and calls `send` from it (and `transfer_leadership` from the caller's thread);
nats-py lives on the service's asyncio loop. So:

- `send` seals the frame for its recipient, numbered in order, and hands it
  to the loop with `call_soon_threadsafe` (queued, one loop callback per
  burst, published in order on the one connection: ordering in NATS is per
  connection);
- frames that arrive on the loop are checked (signature, addressed here,
  sender is a voter, not a replay: `frames.ReplayGuard`) and queued; a byte
  written to a pipe that pysyncobj's poller watches wakes the tick thread,
  which delivers them (pysyncobj is not thread-safe);
- what pysyncobj sends while it handles delivered frames (its
  acknowledgements of appended entries above all) is held until the journal
  is flushed, once for the whole batch: a voter acknowledges only entries on
  stable storage. An `append_entries` is screened first (`screen`), so a
  delayed or repeated one cannot make pysyncobj cut entries it already has;
- a peer is *connected* while frames or light heartbeats from it arrive, and
  *disconnected* after `SILENCE` seconds without, or while NATS is
  disconnected: pysyncobj decides whom to send to and whether it may lead
  only from these callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.node import Node
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import Transport

from colony.consensus import frames
from colony.shared import subjects

HEARTBEAT = 0.2
"""Seconds between heartbeats to each peer."""
SILENCE = 1.0
"""Seconds without a frame after which a peer counts as disconnected."""
_BEAT = "colony-heartbeat"

log = logging.getLogger("colony.consensus.transport")


class Link:
    """The asyncio side: one node's Raft subject, its peers, the cluster secret."""

    def __init__(self, nc, me: str, voters: list[str], secret: bytes) -> None:
        self.nc = nc
        self.me = me
        self.peers = frozenset(voters) - {me}
        """Replaced whole (never mutated) when pysyncobj adds or drops a voter."""
        self.secret = secret
        self.incarnation = frames.new_incarnation()
        """This run's: a restarted node's frames are told from replays of its earlier ones."""
        self._next_seq: dict[str, int] = {}
        """The number of the next frame to each peer (given under the outbox lock, so
        they are published in the order they are numbered)."""
        self._guard = frames.ReplayGuard()
        self.dropped: collections.Counter[str] = collections.Counter()
        """Frames dropped, by why: 'bad' (unsigned, malformed), 'misaddressed',
        'stranger' (not from a voter), 'replayed'."""
        self.loop = asyncio.get_running_loop()
        self.heard: dict[str, float] = {}
        self.entries_heard_at = time.monotonic()
        """When the latest `append_entries` frame (a leader's entries or heartbeat) arrived:
        every entry a leader sent here arrived by then (the journal's: before the start)."""
        self.inbox: collections.deque[tuple[str, str, Any]] = collections.deque()
        """(kind, peer, message) for the tick thread: 'message', 'connected', 'disconnected'."""
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_lock = threading.Lock()
        self._flush_scheduled = False
        self._pending = asyncio.Event()
        """Set when the outbox has frames: one sender task publishes them, in order."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # full: the tick thread has wakes pending anyway
        self._woken = False
        """A byte is in the pipe that the tick thread has not read yet."""
        self.delivering = True
        """False once pysyncobj stopped: nothing would drain the inbox any more, and no
        heartbeat should say this voter is alive."""
        self._connected: set[str] = set()
        self._strangers: set[str] = set()
        self._sub = None
        self._beats: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.raft_frames(self.me), cb=self._on_frame)
        self._beats = self.loop.create_task(self._heartbeats())
        self._sender = self.loop.create_task(self._send_in_order())

    async def stop(self) -> None:
        for task in (self._beats, self._sender):
            if task:
                task.cancel()
        if self._sub:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- from the tick thread -------------------------------------------------------

    def send(self, peer: str, message: Any) -> bool:
        if not self.nc.is_connected:
            return False
        with self._outbox_lock:
            seq = self._next_seq.get(peer, 1)
            self._next_seq[peer] = seq + 1
            frame = frames.seal_for(self.secret, self.me, peer, self.incarnation, seq, message)
            too_large = len(frame) > frames.MAX_FRAME
            if not too_large:
                self._outbox.append((subjects.raft_frames(peer), frame))
                schedule, self._flush_scheduled = not self._flush_scheduled, True
        if too_large:
            log.error("raft frame too large; not sent", extra={"peer": peer, "bytes": len(frame)})
            return False
        if schedule:
            self.loop.call_soon_threadsafe(self._pending.set)
        return True

    def wake(self) -> None:
        """Wake the tick thread (any thread may: a proposal was queued), unless a wake is
        pending already: one byte in the pipe, not one per frame or proposal."""
        if self._woken:
            return
        self._woken = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def drain(self) -> list[tuple[str, str, Any]]:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
        # After the read: a wake from now on writes again (one between the read and here
        # was skipped, but what it woke for is in the inbox or pysyncobj's queue already,
        # and this tick takes it).
        self._woken = False
        events = []
        while self.inbox:
            events.append(self.inbox.popleft())
        return events

    # --- on the loop ----------------------------------------------------------------

    async def _send_in_order(self) -> None:
        """The one task that publishes: a publish may yield (flushing), and a second
        task could then overtake the first, reordering Raft's frames."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            with self._outbox_lock:
                burst, self._outbox = self._outbox, []
                self._flush_scheduled = False
            for subject, frame in burst:
                with contextlib.suppress(Exception):  # lost frames are Raft's to retry
                    await self.nc.publish(subject, frame)

    async def _on_frame(self, msg) -> None:
        try:
            frame = frames.unseal_for(self.secret, msg.data)
        except frames.BadFrame as e:
            self._drop("bad", str(e))
            return
        sender, message = frame.sender, frame.message
        if frame.recipient != self.me:  # a genuine frame, published again to the wrong node
            self._drop("misaddressed", f"from {sender} for {frame.recipient}, not {self.me}")
            return
        if sender not in self.peers:
            self.dropped["stranger"] += 1
            if sender not in self._strangers:  # a removed voter keeps sending: say it once
                self._strangers.add(sender)
                log.warning("dropped raft frame", extra={"reason": f"{sender!r} is not a voter"})
            return
        self._strangers.discard(sender)
        if refusal := self._guard.refusal(frame):
            self._drop("replayed", refusal)
            return
        self.heard[sender] = now = time.monotonic()
        if isinstance(message, dict) and message.get("type") == "append_entries":
            self.entries_heard_at = now
        if sender not in self._connected:
            self._connected.add(sender)
            self._push("connected", sender, None)

        if message != _BEAT:
            self._push("message", sender, message)

    def _drop(self, why: str, reason: str) -> None:
        self.dropped[why] += 1
        log.warning("dropped raft frame", extra={"reason": reason})

    async def _heartbeats(self) -> None:
        while True:
            now = time.monotonic()
            for peer in self.peers:
                if self.delivering:  # a stopped replica must look gone to its peers
                    self.send(peer, _BEAT)
                silent = now - self.heard.get(peer, 0) > SILENCE or not self.nc.is_connected
                if silent and peer in self._connected:
                    self._connected.discard(peer)
                    self._push("disconnected", peer, None)
            await asyncio.sleep(HEARTBEAT)

    def _push(self, kind: str, peer: str, message: Any) -> None:
        if not self.delivering:
            return
        self.inbox.append((kind, peer, message))
        self.wake()


def _keep(message: dict) -> dict | None:
    return message


class NatsTransport(Transport):
    """pysyncobj's Transport, delivering through a `Link`.

    `screen(message)` sees each `append_entries` before pysyncobj does and returns what
    to deliver instead (None: nothing). `make_durable()` flushes the journal; it runs
    before what pysyncobj sent while handling a batch of frames leaves."""

    def __init__(
        self,
        syncObj,
        selfNode,
        otherNodes,
        *,
        link: Link,
        screen: Callable[[dict], dict | None] = _keep,
        make_durable: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._link = link
        self._screen = screen
        self._make_durable = make_durable
        self._holding_in: int | None = None
        """The tick thread's id while it delivers: what it sends then is held."""
        self._held: list[tuple[str, Any]] = []
        self._nodes = {n.id: n for n in otherNodes}
        self._poller = syncObj._poller  # the one private hook: wake the tick thread
        self._poller.subscribe(link._wake_r, self._deliver, POLL_EVENT_TYPE.READ)

    def _deliver(self, _descr, _event) -> None:
        self._holding_in = threading.get_ident()
        try:
            for kind, peer, message in self._link.drain():
                node = self._nodes.get(peer)
                if node is None:
                    continue
                if kind == "message":
                    if isinstance(message, dict) and message.get("type") == "append_entries":
                        message = self._screen(message)
                        if message is None:
                            continue
                    self._onMessageReceived(node, message)
                elif kind == "connected":
                    self._onNodeConnected(node)
                else:
                    self._onNodeDisconnected(node)
        finally:
            self._holding_in = None
            held, self._held = self._held, []
            if held:
                # One flush for every entry this batch appended, before any acknowledgement
                # of them leaves (if it raises, they never leave: the leader sends again).
                self._make_durable()
            for peer, message in held:
                self._link.send(peer, message)

    def tryGetReady(self) -> None:
        """Nothing to bind: the link subscribed before pysyncobj started. Never raises."""

    def addNode(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._link.peers = self._link.peers | {node.id}

    def dropNode(self, node: Node) -> None:
        self._nodes.pop(node.id, None)
        self._link.peers = self._link.peers - {node.id}

    def send(self, node: Node, message: Any) -> bool:
        if self._holding_in == threading.get_ident():  # not transferLeadership's caller
            self._held.append((node.id, message))
            return True
        return self._link.send(node.id, message)

    def destroy(self) -> None:
        self._link.delivering = False
        with contextlib.suppress(Exception):
            self._poller.unsubscribe(self._link._wake_r)
