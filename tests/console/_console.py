"""Helpers of the console tests: a scripted feed (a small cluster: three nodes, two jobs,
a canary waiting for its promote) and a fake `Actions` recording what it is asked.

Time is frozen: the app's clock is FIXED and every record's times are set from it, so
ages and snapshots do not move; times of day show in UTC whatever the machine's zone.
"""

from __future__ import annotations

import asyncio

import msgspec

from colony.console.actions import ActionError, LogChunk
from colony.console.app import ConsoleApp
from colony.console.feed import ScriptedFeed
from colony.console.model import (
    Changed,
    Connection,
    ConnectionChanged,
    Loaded,
    MembersSeen,
    RolesSeen,
    Sampled,
)
from colony.shared.jobspec import JobSpec, Task
from colony.shared.messages import (
    Change,
    HostMetrics,
    InstanceRecord,
    JobRecord,
    JobVersion,
    MembersReply,
    MemberView,
    NodeMeta,
    NodeMetrics,
    NodeRecord,
    Resources,
    Rollout,
)

FIXED = 1_790_000_000.0
"""The frozen 'now' of every console test."""
GiB = 2**30
NODES = {"n1": "node-1", "n2": "node-2", "n3": "node-3"}


def node(id: str, status: str = "alive", drain: str = "") -> NodeRecord:
    return NodeRecord(
        node=id,
        name=NODES[id],
        address=f"10.0.0.{id[-1]}",
        cpu=4.0,
        memory=8 * GiB,
        status=status,
        drain=drain,
        registered=FIXED - 3600,
    )


def job(name: str, version: int, replicas: int, rollout: Rollout | None) -> JobRecord:
    return JobRecord(
        name=name,
        version=version,
        spec=JobSpec(name=name, task=Task(command="python3", args=["-m", "http.server"])),
        replicas=replicas,
        rollout=rollout,
        stable=version - 1 if version > 1 else version,
        submitted=FIXED - 600,
    )


def instance(
    id: str, job: str, version: int, slot: int, node: str, state: str = "running", **kw
) -> InstanceRecord:
    return InstanceRecord(
        id=id,
        job=job,
        version=version,
        slot=slot,
        node=node,
        cpu=0.25,
        memory=256 * 2**20,
        ports={"http": 8000 + slot},
        state=state,
        health="healthy" if state == "running" else "",
        started_at=FIXED - 125 * (slot + 1) if state == "running" else 0.0,
        placed=FIXED - 300,
        **kw,
    )


def sample(id: str, seq: int, cpu: float, memory: int) -> NodeMetrics:
    host = HostMetrics(
        cpu_count=4,
        cpu_percent=cpu * 25,
        load=(0.1, 0.1, 0.1),
        memory_total=8 * GiB,
        memory_available=6 * GiB,
        disk_path="/tmp",
        disk_total=100 * GiB,
        disk_free=50 * GiB,
        process_count=100,
    )
    return NodeMetrics(
        node=id,
        name=NODES[id],
        seq=seq,
        interval=1.0,
        node_started=FIXED - 3600,
        host=host,
        processes=[],
        capacity=Resources(4.0, 8 * GiB),
        used=Resources(cpu, memory),
        free=Resources(4.0 - cpu, 8 * GiB - memory),
        ts=FIXED - 60 + seq,
        cause="test",
    )


def change(index: int, kind: str, id: str, version: int, record, ts_ago: float = 30) -> Changed:
    detail = msgspec.to_builtins(record) if record is not None else {}
    if kind == "job":
        detail.pop("spec", None)  # (the stream leaves specs out)
    return Changed(
        Change(
            index=index,
            kind=kind,
            id=id,
            version=version,
            log_index=index + 100,
            detail=detail,
            ts=FIXED - ts_ago,
            cause="test",
        ),
        live=True,
    )


WEB_ROLLOUT = Rollout(version=3, previous=2, canaries=1, placed=1, healthy=1, started=FIXED - 200)
API_ROLLOUT = Rollout(version=1, status="succeeded", promoted=True, healthy=2, ended=FIXED - 900)
LOADED_INDEX = 40


def cluster_items() -> list:
    """A cluster as the feed would say it: connected, read, roles, samples, a view of the
    membership group, then a few changes."""
    nodes = [node("n1"), node("n2"), node("n3", status="suspect", drain="draining")]
    jobs = [job("api", 1, 2, API_ROLLOUT), job("web", 3, 3, WEB_ROLLOUT)]
    instances = [
        instance("api-0-aaaa", "api", 1, 0, "n1"),
        instance("api-1-bbbb", "api", 1, 1, "n2"),
        instance("web-0-cccc", "web", 2, 0, "n1"),
        instance("web-1-dddd", "web", 2, 1, "n2", restarts=2),
        instance("web-2-eeee", "web", 3, 2, "n3", canary=True),
    ]
    items: list = [
        ConnectionChanged(Connection("connected", "nats://127.0.0.1:4222", "node-1")),
        Loaded(LOADED_INDEX, nodes, jobs, instances),
        RolesSeen(leader="n1", manager="n2", epoch=7, voters=["n1", "n2", "n3"]),
    ]
    for seq in range(30):
        for i, id in enumerate(NODES):
            wave = (seq * (i + 2)) % 11 / 10
            items.append(Sampled(sample(id, seq, 0.2 + wave * (i + 1), int((1 + wave) * GiB))))
    items.append(
        MembersSeen(
            MembersReply(
                observer="n1",
                members=[
                    MemberView("n1", "alive", 1, NodeMeta(), 3600.0),
                    MemberView("n2", "alive", 3, NodeMeta(), 1800.0),
                    MemberView("n3", "suspect", 2, NodeMeta(), 4.0),
                ],
                ts=FIXED,
                cause="test",
            )
        )
    )
    items += [
        change(41, "node", "n3", 5, nodes[2], ts_ago=50),
        change(42, "job", "web", 3, jobs[1], ts_ago=40),
        change(43, "instance", "web-2-eeee", 4, instances[4], ts_ago=20),
        change(44, "leader", "n1", 2, None, ts_ago=10),
    ]
    return items


LAST_INDEX = 44


class FakeActions:
    """Records every call; `fail[method]` makes that method raise an ActionError."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail: dict[str, str] = {}
        self.output = ["starting\n", "serving on :8000\n"]
        self.crash: dict[str, Exception] = {}
        """method -> an exception it raises that is no ActionError (a bug's)."""
        self.chunk = 0
        """Lines of output read at most at once (0: all there is)."""

    async def _call(self, name: str, *args) -> str:
        self.calls.append((name, *args))
        if name in self.fail:
            raise ActionError(self.fail[name])
        return f"{name} {' '.join(map(str, args))}: done"

    async def scale(self, job, replicas):
        return await self._call("scale", job, replicas)

    async def rollback(self, job, version=None):
        return await self._call("rollback", job, version)

    async def promote(self, job):
        return await self._call("promote", job)

    async def stop(self, job, purge=False):
        return await self._call("stop", job)

    async def drain(self, node, deadline=None):
        return await self._call("drain", node)

    async def undrain(self, node):
        return await self._call("undrain", node)

    async def versions(self, job):
        self.calls.append(("versions", job))
        if "versions" in self.crash:
            raise self.crash["versions"]
        return [
            JobVersion(
                job=job, version=3, submitted=FIXED - 200, cause="colony job run", current=True
            ),
            JobVersion(
                job=job,
                version=2,
                submitted=FIXED - 3000,
                outcome="succeeded",
                cause="colony job run",
            ),
            JobVersion(
                job=job,
                version=1,
                submitted=FIXED - 9000,
                outcome="superseded",
                cause="colony job run",
            ),
        ]

    async def logs(self, instance, stream="stdout", offset=0):
        self.calls.append(("logs", instance, stream, offset))
        if "logs" in self.fail:
            raise ActionError(self.fail["logs"])
        if "logs" in self.crash:
            raise self.crash["logs"]
        start = max(offset, 0)
        end = min(len(self.output), start + self.chunk) if self.chunk else len(self.output)
        return LogChunk("".join(self.output[start:end]), end, more=end < len(self.output))


def make_app(items=None, actions: FakeActions | None = None) -> ConsoleApp:
    feed = ScriptedFeed(cluster_items() if items is None else items)
    return ConsoleApp(
        feed,
        actions or FakeActions(),
        clock=lambda: FIXED,
        batch_interval=0.01,
        log_interval=0.05,
    )


async def settle(pilot, index: int = LAST_INDEX, timeout: float = 20.0) -> None:
    """Wait until the app has applied every change up to `index` and redrawn."""
    app = pilot.app
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while app.model.index < index or app._buffer:
        if loop.time() > deadline:
            raise AssertionError(f"the console applied up to #{app.model.index}, not #{index}")
        await pilot.pause(0.01)
    await pilot.pause()


async def until(pilot, condition, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)
