"""Where the console's model items come from: the only code that reads the bus.

A feed runs until cancelled and emits feed items (colony.console.model) through a
callback that never blocks (the app buffers them and applies them in batches).
`BusFeed` is the real one; `ScriptedFeed` plays a script, then whatever a test pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

import msgspec

from colony.cli import records
from colony.console.model import (
    Changed,
    Connection,
    ConnectionChanged,
    FeedItem,
    JobsRead,
    Loaded,
    MembersSeen,
    RolesSeen,
    Sampled,
)
from colony.shared import changes, subjects
from colony.shared.bus import Bus, BusError, NotConnected, NotFound, connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import JobRecord, MembersReply, MembersRequest

Emit = Callable[[FeedItem], None]
"""Takes one item; never blocks (the app batches)."""


class Feed(Protocol):
    async def run(self, emit: Emit) -> None:
        """Emit items until cancelled; reconnects by itself."""
        ...


class FeedThread:
    """Runs a feed in a thread of its own, in an event loop of its own.

    In the app's loop, a feed reading the bus waits behind every frame: at 1,000
    changes a second it fell 2.6-6 s behind the cluster (0.12 s alone). Here it reads
    as fast as the bus brings; `emit` must be safe to call from this thread (the app's
    is `deque.append`). A feed that fails says so through `failed(error)`, called in
    this thread; `stop` cancels the feed and waits for the thread to end."""

    def __init__(
        self, feed: Feed, emit: Emit, failed: Callable[[Exception], None], name: str = "feed"
    ) -> None:
        self.feed = feed
        self.emit = emit
        self.failed = failed
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel the feed (its connections closed as it unwinds) and wait for the thread."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # (its loop already closed: it ended)
                loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as e:
            self.failed(e)
        finally:
            self._started.set()  # (if it failed before it began)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):  # stopped
            await self.feed.run(self.emit)


class ScriptedFeed:
    """Plays `items` in order (a float: a pause of that many seconds), then each item
    `push`ed, until cancelled."""

    def __init__(self, items: Iterable[FeedItem | float] = ()) -> None:
        self.items = list(items)
        self._pushed: asyncio.Queue[FeedItem] = asyncio.Queue()

    def push(self, *items: FeedItem) -> None:
        """Inject live items (tests)."""
        for item in items:
            self._pushed.put_nowait(item)

    async def run(self, emit: Emit) -> None:
        for item in self.items:
            if isinstance(item, float | int):
                await asyncio.sleep(item)
            else:
                emit(item)
        while True:
            emit(await self._pushed.get())


ROLES_EVERY = 2.0
"""Seconds between two looks at who leads, manages and votes, and at membership."""
RETRY = (0.25, 0.5, 1.0, 2.0)
"""Seconds between two attempts to reconnect (the last one repeats)."""
STEADY = 10.0
"""Seconds a session must last for the next reconnect to start from the shortest wait."""
CHECK_EVERY = 0.2
"""Seconds between two looks at whether the connection still holds."""
ASK = 1.0
"""Seconds a node may take to answer for its view of membership."""


class ConnectionLost(Exception):
    """The server the feed talks to went away (or the feed cannot read what it needs)."""


class BusFeed:
    """The cluster's state, read whole, then kept current from the change stream, with
    each node's metrics, membership view, and the Raft and manager roles.

    One connection, its own: when it drops, the feed says `reconnecting`, connects again
    (to any of `servers`), reads the state again and follows the changes after the last
    one it emitted, so the model misses none (as long as the stream still holds it).

    The app runs it in a thread of its own (`in_thread`: see FeedThread)."""

    in_thread = True

    def __init__(
        self,
        servers: list[str],
        voters: list[str],
        secret: bytes | None,
        history: int = 1000,
        name: str = "colony-console",
        *,
        roles_every: float = ROLES_EVERY,
        connect_timeout: float = 2.0,
    ) -> None:
        self.servers = list(servers)
        self.voters = list(voters)
        self.secret = secret
        self.history = history
        self.name = name
        self.roles_every = roles_every
        self.connect_timeout = connect_timeout
        self.seen = 0
        """The index of the last change emitted (0: none yet)."""
        self._specs: dict[str, int] = {}
        """Each job's version whose whole record (spec included) was emitted."""
        self._nodes: dict[str, str] = {}
        """Node id -> its NATS URL (from its metrics), to name the node connected through."""
        self._names: dict[str, str] = {}
        self._ever_connected = False

    async def run(self, emit: Emit) -> None:
        attempt = 0
        detail = ""
        while True:
            state = "reconnecting" if self._ever_connected else "connecting"
            emit(ConnectionChanged(Connection(state, ", ".join(self.servers), "", detail)))
            try:
                bus = await connect(
                    NatsSettings(servers=self.servers, connect_timeout=self.connect_timeout),
                    self.name,
                    reconnect=False,
                )
            except NotConnected as e:
                detail = str(e)
                await asyncio.sleep(RETRY[min(attempt, len(RETRY) - 1)])
                attempt += 1
                continue
            self._ever_connected = True
            began = asyncio.get_running_loop().time()
            try:
                detail = await self._session(bus, emit)
            except* Exception as group:  # whatever broke, the feed goes on: it says why
                detail = "; ".join(str(e) or type(e).__name__ for e in group.exceptions)
            finally:
                await bus.close()
            # a session that ends at once (no voter known yet...) is tried again, slower
            lasted = asyncio.get_running_loop().time() - began
            attempt = 0 if lasted > STEADY else attempt + 1
            await asyncio.sleep(RETRY[min(attempt, len(RETRY) - 1)])

    async def _session(self, bus: Bus, emit: Emit) -> str:
        """Follow the cluster through `bus` until the connection drops (ConnectionLost)."""
        url = bus.nc.connected_url
        server = f"{url.scheme}://{url.netloc}" if url else ""
        self._connected = Connection("connected", server, self._node_of(server))
        emit(ConnectionChanged(self._connected))
        voters = self.voters or await Cluster(bus).nodes()
        client = Management(bus, voters, timeout=5.0)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(bus))
            tasks.create_task(self._metrics(bus, emit))
            specs: asyncio.Queue[str] = asyncio.Queue()
            tasks.create_task(self._read_specs(client, specs, emit))
            last = await self._load(client, emit)
            tasks.create_task(self._roles(bus, voters, emit))
            await self._changes(bus, last, specs, emit)
        return ""

    def _node_of(self, server: str) -> str:
        """The name of the node whose NATS server is `server` ('' : not known yet)."""
        for node, url in self._nodes.items():
            if url and _netloc(url) == _netloc(server):
                return self._names.get(node, "")
        return ""

    async def _watch(self, bus: Bus) -> None:
        # (the bus offers no event for a lost connection: look now and then)
        while bus.connected:  # noqa: ASYNC110
            await asyncio.sleep(CHECK_EVERY)
        raise ConnectionLost(f"lost the connection to {self._connected.server}")

    async def _load(self, client: Management, emit: Emit) -> int:
        """Read the nodes, jobs and instances until a voter answers, and emit them as
        Loaded; the change index they hold every change up to."""
        while True:
            try:
                return await self._read(client, emit)
            except (BusError, ManagementError) as e:  # connected, but no voter answers yet
                self._connected = replace(self._connected, detail=f"cannot read the state: {e}")
                emit(ConnectionChanged(self._connected))
                await asyncio.sleep(1.0)

    async def _read(self, client: Management, emit: Emit) -> int:
        """One read, emitted as Loaded with the index of the last change committed before
        it. Linearizable reads (as the agent and curator do): a follower's stale copy may
        be behind that index, and the model takes changes up to it as events only, so
        what they changed would stay unseen until the object changed again."""
        last = await changes.last_index(client.bus, self.secret)
        nodes = await records.nodes(client)
        jobs = await records.jobs(client)
        instances = await records.instances(client)
        self._specs = {j.name: j.version for j in jobs}
        self._names.update({n.node: n.name for n in nodes if n.name})
        emit(Loaded(last, nodes, jobs, instances))
        if self._connected.detail:
            self._connected = replace(self._connected, detail="")
            emit(ConnectionChanged(self._connected))
        return last

    async def _changes(self, bus: Bus, last: int, specs: asyncio.Queue[str], emit: Emit) -> None:
        """Replay the last `history` changes (or, after a reconnect, those since the last
        one emitted), then follow live. No stream yet: wait for one. (Those up to `last`
        only add events: the read just loaded holds them, or newer; the model skips any
        it has heard already.)"""
        after = self.seen or max(0, last - self.history)
        while True:
            try:
                stream = changes.follow(bus, after=after, secret=self.secret)
                try:
                    async for change in stream:
                        self.seen = after = change.index
                        live = change.index > last
                        if live and change.kind == "job" and change.version:
                            if self._specs.get(change.id) != change.version:
                                specs.put_nowait(change.id)
                        elif change.kind == "node" and change.detail.get("name"):
                            self._names[change.id] = change.detail["name"]
                        emit(Changed(change, live))
                finally:
                    await stream.aclose()
            except NotFound:
                await asyncio.sleep(1.0)  # no change stream yet (a cluster starting)

    async def _read_specs(self, client: Management, specs: asyncio.Queue[str], emit: Emit) -> None:
        """Read each job whose change brought a version whose spec was not read yet (a
        change leaves the spec out)."""
        while True:
            names = {await specs.get()}
            while not specs.empty():
                names.add(specs.get_nowait())
            read = []
            for name in sorted(names):
                try:
                    found = await records.one_of(client, records.JOBS, name)
                except ManagementError:
                    continue  # the job's next change asks again
                if found is not None:
                    job = msgspec.convert(found.value, JobRecord)
                    self._specs[name] = job.version
                    read.append(job)
            if read:
                emit(JobsRead(read))

    async def _metrics(self, bus: Bus, emit: Emit) -> None:
        samples = await bus.subscribe(subjects.node_metrics(subjects.ANY))
        async for m in samples:
            self._names[m.node] = m.name
            if self._nodes.get(m.node) != m.nats_url:
                self._nodes[m.node] = m.nats_url
                named = self._node_of(self._connected.server)
                if named != self._connected.node:
                    self._connected = replace(self._connected, node=named)
                    emit(ConnectionChanged(self._connected))
            emit(Sampled(m))

    async def _roles(self, bus: Bus, voters: list[str], emit: Emit) -> None:
        """Every `roles_every` seconds: who leads, manages and votes; each node's view
        of membership."""
        cluster = Cluster(bus, voters)
        while True:
            statuses = await cluster.statuses()
            leader, manager = statuses.leader(), statuses.manager()
            emit(
                RolesSeen(
                    leader=leader.node if leader else "",
                    manager=manager.node if manager else "",
                    epoch=manager.epoch if manager else 0,
                    voters=leader.voters if leader else list(voters),
                )
            )
            views = await asyncio.gather(*(self._members(bus, n) for n in sorted(self._names)))
            for view in views:
                if view is not None:
                    emit(MembersSeen(view))
            await asyncio.sleep(self.roles_every)

    async def _members(self, bus: Bus, node: str) -> MembersReply | None:
        try:
            return await bus.request(subjects.members(node), MembersRequest(), timeout=ASK)
        except BusError:
            return None  # a node down says nothing; the others' views say it is


def _netloc(url: str) -> str:
    """host:port of a NATS URL (4222 when none is given)."""
    netloc = url.split("://", 1)[-1].rstrip("/")
    return netloc if ":" in netloc else f"{netloc}:4222"
