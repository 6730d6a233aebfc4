"""pysyncobj's transport over NATS: each voter receives on its own subject, sends to its peers'.

Two threads meet here. pysyncobj runs its Raft loop on its own tick thread
and calls `send` from it (and `transfer_leadership` from the caller's thread);
nats-py lives on the service's asyncio loop. So:

- `send` seals the frame and hands it to the loop with `call_soon_threadsafe`
  (queued, one loop callback per burst, published in order on the one
  connection: ordering in NATS is per connection);
- frames that arrive on the loop are checked (signature, sender is a voter)
  and queued; a byte written to a pipe that pysyncobj's poller watches wakes
  the tick thread, which delivers them (pysyncobj is not thread-safe);
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
        frame = frames.seal(self.secret, self.me, message)
        if len(frame) > frames.MAX_FRAME:
            log.error("raft frame too large; not sent", extra={"peer": peer, "bytes": len(frame)})
            return False
        with self._outbox_lock:
            self._outbox.append((subjects.raft_frames(peer), frame))
            schedule, self._flush_scheduled = not self._flush_scheduled, True
        if schedule:
            self.loop.call_soon_threadsafe(self._pending.set)
        return True

    def drain(self) -> list[tuple[str, str, Any]]:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
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
            sender, message = frames.unseal(self.secret, msg.data)
        except frames.BadFrame as e:
            log.warning("dropped raft frame", extra={"reason": str(e)})
            return
        if sender not in self.peers:
            if sender not in self._strangers:  # a removed voter keeps sending: say it once
                self._strangers.add(sender)
                log.warning("dropped raft frame", extra={"reason": f"{sender!r} is not a voter"})
            return
        self._strangers.discard(sender)
        self.heard[sender] = now = time.monotonic()
        if isinstance(message, dict) and message.get("type") == "append_entries":
            self.entries_heard_at = now
        if sender not in self._connected:
            self._connected.add(sender)
            self._push("connected", sender, None)
        if message != _BEAT:
            self._push("message", sender, message)

    async def _heartbeats(self) -> None:
        while True:
            now = time.monotonic()
            for peer in self.peers:
                self.send(peer, _BEAT)
                silent = now - self.heard.get(peer, 0) > SILENCE or not self.nc.is_connected
                if silent and peer in self._connected:
                    self._connected.discard(peer)
                    self._push("disconnected", peer, None)
            await asyncio.sleep(HEARTBEAT)

    def _push(self, kind: str, peer: str, message: Any) -> None:
        self.inbox.append((kind, peer, message))
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")


class NatsTransport(Transport):
    """pysyncobj's Transport, delivering through a `Link`."""

    def __init__(self, syncObj, selfNode, otherNodes, *, link: Link) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._link = link
        self._nodes = {n.id: n for n in otherNodes}
        self._poller = syncObj._poller  # the one private hook: wake the tick thread
        self._poller.subscribe(link._wake_r, self._deliver, POLL_EVENT_TYPE.READ)

    def _deliver(self, _descr, _event) -> None:
        for kind, peer, message in self._link.drain():
            node = self._nodes.get(peer)
            if node is None:
                continue
            if kind == "message":
                self._onMessageReceived(node, message)
            elif kind == "connected":
                self._onNodeConnected(node)
            else:
                self._onNodeDisconnected(node)

    def tryGetReady(self) -> None:
        """Nothing to bind: the link subscribed before pysyncobj started. Never raises."""

    def addNode(self, node: Node) -> None:
        self._nodes[node.id] = node
        self._link.peers = self._link.peers | {node.id}

    def dropNode(self, node: Node) -> None:
        self._nodes.pop(node.id, None)
        self._link.peers = self._link.peers - {node.id}

    def send(self, node: Node, message: Any) -> bool:
        return self._link.send(node.id, message)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self._poller.unsubscribe(self._link._wake_r)
