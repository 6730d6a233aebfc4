"""Test helper: a job watched while it changes version, moves off a draining node or
turns sick, from outside, as its clients and an operator would see it.

- `web_job`: the spec of an HTTP job (`webapp.py`, an HTTP health check) as a YAML
  file holds it; `sick` turns one of its instances' health (`webapp` modes); `body`
  asks one of them.
- `all_healthy`, `rollout_ended`, `rollout_violations`: what the instances and the
  job's record must say (one per slot and healthy; a rollout ended so; nothing wrong
  at any moment of a rolling update).
- `Prober`: a client loop that asks the job's endpoints (`subjects.endpoints()`, the
  request programs use) and GETs one endpoint per request, round robin, counting
  every failed request with its reason: what a client of the service would suffer.
- `EndpointWatch`: every endpoint set published on `endpoints_changed(job)`, timed.
- `InstanceChanges`: every record of the job's instances on the change stream.
- `Sampler`: the job's instances (and record) read again and again, each sample given
  to a check that names what is wrong in it (`rollout_violations`); every record seen
  kept, by instance.

Each runs in a thread of its own (its own event loop and NATS connection), started
and stopped with ``with``:

    with Prober(nats_urls(state), "web") as probe, Sampler(state, "web", check) as seen:
        ...                                 # roll out, drain, kill the manager
    assert probe.result.failed == 0, probe.result.describe()
    assert not seen.violations, seen.violations
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from colony.harness.jobs import read, records, voters_in, wanted
from colony.shared import subjects
from colony.shared.bus import Bus, BusError, connect
from colony.shared.changes import follow
from colony.shared.config import NatsSettings
from colony.shared.messages import (
    Endpoint,
    EndpointsReply,
    EndpointsRequest,
    InstanceRecord,
    JobRecord,
)
from colony.shared.statedir import StateDir

WEBAPP = Path(__file__).with_name("webapp.py")
"""The HTTP service the jobs here run (``python webapp.py PORT``)."""


# --- the job ------------------------------------------------------------------------


def web_job(
    name: str,
    replicas: int,
    version: str = "1",
    health: str = "ok",
    control: Path | None = None,
    check: dict[str, Any] | None = None,
    update: dict[str, Any] | None = None,
    cpu: float = 0.05,
    **fields: Any,
) -> dict[str, Any]:
    """A job of `replicas` `webapp` instances answering `<instance> v<version>`, checked
    over HTTP on /health (`check`'s keys change the check's); `health` is what /health
    says unless an instance's file in `control` says otherwise. Another `version` (or
    `health`) is a spec change that replaces the instances. The check's grace covers
    the server's start (its cpu is capped at `cpu` cores, where the host can)."""
    env = {"VERSION": version, "HEALTH": health}
    if control is not None:
        env["CONTROL"] = str(control)
    spec: dict[str, Any] = {
        "name": name,
        "replicas": replicas,
        "ports": ["http"],
        "resources": {"cpu": cpu, "memory": "48MiB"},
        "task": {"command": sys.executable, "args": [str(WEBAPP), "${PORT}"], "env": env},
        "checks": [
            {
                "type": "http",
                "name": "health",
                "port": "http",
                "path": "/health",
                "interval": "500ms",
                "timeout": "500ms",
                "healthy_threshold": 1,
                "unhealthy_threshold": 3,
                "grace": "5s",
                **(check or {}),
            }
        ],
        "update": {"max_parallel": 1, "min_healthy_time": "1s", **(update or {})},
        "shutdown_delay": "1s",
        "restart": {"attempts": 10, "interval": "5m", "delay": "200ms"},
    }
    return {**spec, **fields}


def sick(control: Path, instance: str, mode: str = "fail") -> None:
    """Make `instance`'s /health answer by `mode` (a `webapp` mode; "ok": healthy)."""
    control.mkdir(parents=True, exist_ok=True)
    (control / instance).write_text(f"{mode}\n")


def nats_urls(state: Path) -> list[str]:
    """The NATS servers of the `colony up` cluster in `state`."""
    return [url for node in StateDir(state).nodes() if (url := node.nats_url())]


def healthy(instance: InstanceRecord) -> bool:
    """Desired to run, running, and healthy by its node's monitor."""
    return (
        instance.desired == "run" and instance.state == "running" and instance.health == "healthy"
    )


def all_healthy(
    replicas: int, version: int | None = None
) -> Callable[[list[InstanceRecord]], list[InstanceRecord] | None]:
    """A check for `LocalJobs.until`: the instances desired to run once there is one per
    slot 0..replicas-1, each healthy (and at `version`); else None."""

    def check(seen: list[InstanceRecord]) -> list[InstanceRecord] | None:
        run = wanted(seen)
        ok = [i.slot for i in run] == list(range(replicas)) and all(map(healthy, run))
        ok = ok and (version is None or all(i.version == version for i in run))
        return run if ok else None

    return check


def rollout_ended(
    record: JobRecord | None, version: int, ends: Iterable[str] = ("succeeded",)
) -> JobRecord | None:
    """`record` if its rollout of `version` ended as one of `ends`; else None."""
    rollout = record.rollout if record else None
    done = rollout and rollout.version == version and rollout.status in tuple(ends)
    return record if done else None


# --- in a thread of its own -----------------------------------------------------------


class Background:
    """Runs `setup(bus)` then `loop(bus)` in a thread with its own event loop and NATS
    connection; `start` returns once `setup` did, `stop` cancels the loop (and raises
    what it raised)."""

    name = "test-background"

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._asyncio: asyncio.AbstractEventLoop | None = None
        self._looping: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def setup(self, bus: Bus) -> None:
        pass

    async def loop(self, bus: Bus) -> None:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        """Sleep `seconds` (pauses here are short: a stop waits for them)."""
        await asyncio.sleep(max(0.0, seconds))

    async def _main(self) -> None:
        bus = None
        try:
            settings = NatsSettings(servers=self.urls, connect_timeout=2.0)
            bus = await connect(settings, self.name)
            await self.setup(bus)
            self._looping = asyncio.create_task(self.loop(bus))
            self._asyncio = asyncio.get_running_loop()
            self._ready.set()
            await self._looping
        except asyncio.CancelledError:
            pass  # stopped while it waited
        except BaseException as e:  # kept for stop() to raise in the test's thread
            self.error = e
        finally:
            self._ready.set()
            if bus is not None:
                with contextlib.suppress(Exception):
                    await bus.close()

    def start(self, timeout: float = 30.0) -> Any:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"{self.name} did not start within {timeout:g} s")
        if self.error is not None:
            raise AssertionError(f"{self.name} could not start: {self.error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._asyncio is not None and self._looping is not None:
            # a loop waiting for a message, or a change, ends now
            self._asyncio.call_soon_threadsafe(self._looping.cancel)
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise AssertionError(f"{self.name} did not stop within 30 s")
        if self.error is not None:
            raise self.error

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a client of the job ----------------------------------------------------------------


async def get(host: str, port: int, path: str = "/", timeout: float = 2.0) -> str:
    """GET http://host:port/path (HTTP/1.0, a connection each): '' if it answered 200,
    else why not, in one line."""

    async def ask() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readline()
            await reader.read()
            return head
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        head = await asyncio.wait_for(ask(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    words = head.decode(errors="replace").split()
    if len(words) < 2 or words[1] != "200":
        return f"answered {head[:60].decode(errors='replace').strip()!r}"
    return ""


def body(host: str, port: int, path: str = "/", timeout: float = 5.0) -> str:
    """The body of GET http://host:port/path, stripped (HTTP/1.0, from a test's thread)."""

    async def ask() -> str:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return (await reader.read()).decode(errors="replace").split("\r\n\r\n", 1)[-1]
        finally:
            writer.close()

    return asyncio.run(asyncio.wait_for(ask(), timeout)).strip()


@dataclass
class Probed:
    """What the client loop saw."""

    requests: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Why requests failed ("<instance> at host:port: <error>"), with how often."""
    lookups: int = 0
    lookup_failures: Counter[str] = field(default_factory=Counter)
    """Endpoint requests that got no answer (no manager acting for a moment): the loop
    went on with the set it had."""
    empty: int = 0
    """Lookups that found no endpoint at all (nothing to send the request to)."""
    sets: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    """The endpoint set whenever it changed: (when, instance ids)."""
    started: float = 0.0
    ended: float = 0.0

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / max(1e-9, (self.ended or time.time()) - self.started)

    def describe(self) -> str:
        said = [
            f"{self.requests} requests ({self.rate:.0f}/s), {self.failed} failed, "
            f"{self.empty} lookups found no endpoint, "
            f"{sum(self.lookup_failures.values())} of {self.lookups} lookups unanswered"
        ]
        said += [f"  {n} x {why}" for why, n in self.failures.most_common(10)]
        said += [f"  lookup: {n} x {why}" for why, n in self.lookup_failures.most_common(3)]
        return "\n".join(said)


class Prober(Background):
    """A client loop of `job`: `workers` loops, each asking the job's endpoints and
    sending one GET to the next of them, `rate` requests a second in all (0: as fast
    as they go). `result` is what they saw so far."""

    name = "test-prober"

    def __init__(
        self,
        urls: list[str],
        job: str,
        port: str = "",
        workers: int = 2,
        rate: float = 40.0,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(urls)
        self.job, self.port, self.workers = job, port, workers
        self.every = workers / rate if rate > 0 else 0.0
        self.timeout = timeout
        self.result = Probed()
        self._last: list[Endpoint] = []

    async def lookup(self, bus: Bus) -> list[Endpoint]:
        self.result.lookups += 1
        try:
            reply = await bus.request(
                subjects.endpoints(), EndpointsRequest(job=self.job, port=self.port), timeout=2.0
            )
        except BusError as e:
            self.result.lookup_failures[str(e)[:200]] += 1
            return self._last  # as a client would: the set it knew
        ids = tuple(e.instance for e in reply.endpoints)
        if not self.result.sets or self.result.sets[-1][1] != ids:
            self.result.sets.append((time.time(), ids))
        self._last = reply.endpoints
        return reply.endpoints

    async def worker(self, bus: Bus, turn: int) -> None:
        while not self.stopping:
            began = time.monotonic()
            endpoints = await self.lookup(bus)
            if not endpoints:
                self.result.empty += 1
            else:
                to = endpoints[turn % len(endpoints)]
                turn += 1
                error = await get(to.host or "127.0.0.1", to.port, "/", self.timeout)
                self.result.requests += 1
                if error:
                    self.result.failed += 1
                    self.result.failures[f"{to.instance} at {to.host}:{to.port}: {error}"] += 1
            await self.pause(self.every - (time.monotonic() - began))

    async def loop(self, bus: Bus) -> None:
        self.result.started = time.time()
        try:
            await asyncio.gather(*(self.worker(bus, n) for n in range(self.workers)))
        finally:
            self.result.ended = time.time()


# --- the endpoint sets published ----------------------------------------------------------


@dataclass(frozen=True)
class Published:
    at: float
    """When it arrived here."""
    epoch: int
    index: int
    ids: tuple[str, ...]


class EndpointWatch(Background):
    """Every endpoint set of `job` published on `endpoints_changed(job)` from the moment
    `start` returns (subscribed by then), in `seen`."""

    name = "test-endpoint-watch"

    def __init__(self, urls: list[str], job: str) -> None:
        super().__init__(urls)
        self.job = job
        self.seen: list[Published] = []
        self._subscription: Any = None

    async def setup(self, bus: Bus) -> None:
        self._subscription = await bus.subscribe(subjects.endpoints_changed(self.job))

    async def loop(self, bus: Bus) -> None:
        try:
            while not self.stopping:
                try:
                    reply: EndpointsReply = await self._subscription.next(0.2)
                except TimeoutError:
                    continue
                ids = tuple(e.instance for e in reply.endpoints)
                self.seen.append(Published(time.time(), reply.epoch, reply.index, ids))
        finally:
            await self._subscription.stop()

    def current(self) -> tuple[str, ...] | None:
        return self.seen[-1].ids if self.seen else None

    def until(self, check: Callable[[tuple[str, ...]], bool], timeout: float, what: str) -> float:
        """When the first set published (from now on, or the last one before) that
        passes `check` arrived; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        looked = max(0, len(self.seen) - 1)
        while True:
            for published in self.seen[looked:]:
                if check(published.ids):
                    return published.at
            looked = max(looked, len(self.seen))
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no endpoint set of {self.job} with {what} within {timeout:g} s; "
                    f"last: {self.current()}"
                )
            if self.error is not None:
                raise self.error
            time.sleep(0.01)


# --- the job's instances, sampled or followed --------------------------------------------

Check = Callable[[list[InstanceRecord], JobRecord | None], Iterable[str]]


class Records:
    """Every distinct record seen of each instance, in order."""

    def __init__(self) -> None:
        self.seen: dict[str, list[InstanceRecord]] = {}

    def saw(self, record: InstanceRecord) -> None:
        history = self.seen.setdefault(record.id, [])
        if not history or history[-1] != record:
            history.append(record)

    def first(self, instance: str, where: Callable[[InstanceRecord], bool]) -> InstanceRecord:
        """The first record seen of `instance` that `where` holds for."""
        found = [r for r in self.seen.get(instance, []) if where(r)]
        if not found:
            raise AssertionError(
                f"no record of {instance} seen as wanted; seen: {self.seen.get(instance)}"
            )
        return found[0]


class InstanceChanges(Background, Records):
    """Every record of `job`'s instances the change stream carries from about when
    `start` returns (every change, where sampling could miss a short-lived one)."""

    name = "test-instance-changes"

    def __init__(self, urls: list[str], job: str) -> None:
        Background.__init__(self, urls)
        Records.__init__(self)
        self.job = job

    async def loop(self, bus: Bus) -> None:
        async for change in follow(bus, after=None, kinds=["instance"]):
            if change.detail.get("job") == self.job:
                with contextlib.suppress(msgspec.ValidationError):
                    self.saw(msgspec.convert(change.detail, InstanceRecord))


class Sampler(Background, Records):
    """Reads `job`'s instances and record through the voters every `every` seconds;
    `check(instances, job record)` names what is wrong in each sample (kept in
    `violations` with when). Reads that fail (an election) are counted and skipped."""

    name = "test-sampler"

    def __init__(self, state: Path, job: str, check: Check | None = None, every: float = 0.2):
        Background.__init__(self, nats_urls(state))
        Records.__init__(self)
        self.state, self.job, self.check, self.every = state, job, check, every
        self.samples = 0
        self.failed_reads: Counter[str] = Counter()
        self.violations: list[tuple[float, str]] = []
        self.records: list[JobRecord] = []
        """Every distinct record of the job sampled, in order."""
        self.last: list[InstanceRecord] = []

    async def loop(self, bus: Bus) -> None:
        voters = voters_in(self.state)
        while not self.stopping:
            began = time.monotonic()
            try:
                found = await read(bus, voters, "instances", {"job": self.job})
                jobs = await read(bus, voters, "jobs")
            except Exception as e:  # a read during an election: the next one will do
                self.failed_reads[type(e).__name__] += 1
                await self.pause(self.every)
                continue
            instances = records(found, InstanceRecord)
            record = next(
                (msgspec.convert(j, JobRecord) for j in jobs if j.get("name") == self.job), None
            )
            self.samples += 1
            self.last = instances
            if record is not None and (not self.records or self.records[-1] != record):
                self.records.append(record)
            for i in instances:
                self.saw(i)
            if self.check is not None:
                now = time.time()
                self.violations += [(now, v) for v in self.check(instances, record)]
            await self.pause(self.every - (time.monotonic() - began))


def rollout_violations(replicas: int, max_parallel: int, old: int, new: int) -> Check:
    """What must hold at every moment of a rolling update from version `old` to `new`:
    the job stays at version `new`, its rollout running or succeeded; no instance
    desired to run is at another version;
    no slot runs two instances of one version (an old and a new may run side by side);
    at least `replicas - max_parallel` instances are healthy."""

    def check(instances: list[InstanceRecord], job: JobRecord | None) -> list[str]:
        wrong = []
        if job is not None and job.version != new:
            wrong.append(f"the job is at version {job.version}, not {new}")
        if job is not None and job.rollout and job.rollout.status not in ("running", "succeeded"):
            wrong.append(f"the rollout {job.rollout.status}: {job.rollout.reason}")
        run = [i for i in instances if i.desired == "run"]
        if others := [i.id for i in run if i.version not in (old, new)]:
            wrong.append(f"desired to run at another version than {old} or {new}: {others}")
        twice = Counter((i.slot, i.version) for i in run)
        if doubled := sorted(key for key, n in twice.items() if n > 1):
            wrong.append(f"two instances of one slot and version (slot, version): {doubled}")
        count = sum(healthy(i) for i in run)
        if count < replicas - max_parallel:
            wrong.append(f"only {count} healthy instances (replicas {replicas}, "
                         f"max_parallel {max_parallel})")  # fmt: skip
        return wrong

    return check
