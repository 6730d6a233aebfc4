"""The service runner: what every Colony service does around its own logic.

`main(service)` is a service's whole ``__main__``: it loads the config
(clear error and exit code 2 when invalid), sets up structured logging,
connects to the node's NATS server (retrying until it is up), registers the
service with the NATS micro protocol (so ``$SRV.PING/INFO/STATS`` discover
it, with its node in the metadata), runs the service, and on SIGTERM or
SIGINT shuts down within `SHUTDOWN_GRACE` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import nats.micro
from nats.micro.request import Request

from colony.shared import __version__, logs
from colony.shared.bus import Bus, BusError, connect
from colony.shared.clock import Clock, SystemClock
from colony.shared.config import Config, ConfigError, load
from colony.shared.messages import DecodeError, Message, decode, encode
from colony.shared.subjects import SERVICE_PREFIX, RequestSubject, Subject

P = TypeVar("P", bound=Message)
Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)

SHUTDOWN_GRACE = 5.0
"""Seconds from SIGTERM to exit, at most."""


class Service(Protocol):
    name: str
    """Short name (monitor); registered as colony-<name>."""
    description: str

    async def run(self, ctx: Context) -> None:
        """The service's loop; runs until cancelled at shutdown."""
        ...


class Refused(Exception):
    """A handler's expected refusal: answered with `code`, not logged as a failure."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class Unbuilt:
    """A service whose behaviour is not built yet: it says so and exits.

    Supervisors do not start such services (no idle placeholder processes).
    """

    name: str
    description: str

    async def run(self, ctx: Context) -> None:
        """Never reached: the runner exits before connecting for an Unbuilt service."""


@dataclass
class Context:
    """What a running service gets from the runner."""

    config: Config
    bus: Bus
    clock: Clock
    log: logging.Logger
    micro: nats.micro.Service
    endpoints: list[str] = field(default_factory=list)
    _served: int = 0
    """Endpoints served so far (each one's name is its number)."""
    _requests: set[asyncio.Task[None]] = field(default_factory=set)
    """Requests being answered concurrently (kept so they are not collected)."""
    _listeners: set[asyncio.Task[None]] = field(default_factory=set)
    deaf: asyncio.Future[str] = field(default_factory=asyncio.Future)
    """Set (with why) when a listener stopped: the runner then stops the service with a
    failure, so that its supervisor restarts it. A service never runs deaf."""

    async def listen(self, subject: Subject[P], handler: Callable[[P], Awaitable[None]]) -> None:
        """Handle every valid message on `subject` with `handler`, in order, until shutdown.

        A message that does not decode is logged and dropped (by the bus); a handler
        that raises is logged and the next message is handled. Returns once the
        server has the subscription."""
        subscription = await self.bus.subscribe(subject)

        async def listening() -> None:
            async for message in subscription:
                try:
                    await handler(message)
                except Exception:
                    self.log.exception("message handler failed", extra={"subject": subject.name})
            raise ConnectionError(f"the subscription to {subject.name} ended")

        task = asyncio.get_running_loop().create_task(listening(), name=subject.name)
        self._listeners.add(task)
        task.add_done_callback(self._listener_stopped)

    def _listener_stopped(self, task: asyncio.Task[None]) -> None:
        self._listeners.discard(task)
        if task.cancelled() or self.deaf.done():
            return
        error = task.exception()
        self.deaf.set_result(f"the listener on {task.get_name()} stopped: {error}")

    def stop_listening(self) -> None:
        for task in list(self._listeners):
            task.cancel()

    async def serve(
        self,
        subject: RequestSubject[Q, R],
        handler: Callable[[Q], Awaitable[R]],
        concurrent: bool = False,
    ) -> None:
        """Answer requests on `subject` with `handler`, as a micro endpoint (with stats).

        A request that does not decode gets a 400 error reply; a handler that
        raises gets a 500. Either way the service keeps serving. Requests are
        handled one after another, unless `concurrent`: then each runs in its
        own task, for handlers that wait on something else (a probe, a commit)
        and must not hold up the requests behind them.
        """

        async def endpoint(request: Request) -> None:
            if concurrent:
                task = asyncio.get_running_loop().create_task(answer(request))
                self._requests.add(task)
                task.add_done_callback(self._answered)
            else:
                await answer(request)

        async def answer(request: Request) -> None:
            try:
                msg = decode(request.data, subject.payload)
            except DecodeError as e:
                self.log.warning(
                    "rejected request", extra={"subject": subject.name, "reason": str(e)}
                )
                await request.respond_error("400", str(e))
                return
            try:
                reply = await handler(msg)
            except Refused as e:
                await request.respond_error(str(e.code), str(e))
                return
            except Exception as e:
                self.log.exception("request failed", extra={"subject": subject.name})
                await request.respond_error("500", f"{type(e).__name__}: {e}")
                return
            await request.respond(encode(reply))

        self._served += 1  # names stay unique when an endpoint is removed and served again
        await self.micro.add_endpoint(
            name=f"e{self._served}", subject=subject.name, handler=endpoint
        )
        self.endpoints.append(subject.name)
        await self._flushed()  # the server has the subscription: a request finds it

    async def unserve(self, subject: RequestSubject[Any, Any]) -> None:
        """Stop answering requests on `subject` (served by `serve`): requests find no
        responder from now on. Nothing happens if it is not served."""
        # nats.micro has no call to remove one endpoint: its own stop() does this per endpoint
        for served in [e for e in self.micro._endpoints if e._subject == subject.name]:
            self.micro._endpoints.remove(served)
            await served._stop()
        if subject.name in self.endpoints:
            self.endpoints.remove(subject.name)
        await self._flushed()  # the server has forgotten it: a request finds no responder

    async def _flushed(self) -> None:
        """Wait for the server to have what was sent (if the connection is down, it gets
        the subscriptions again when it is back)."""
        with contextlib.suppress(BusError):
            await self.bus.flush()

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._requests.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the reply could not be sent (connection closing): the requester times out
            self.log.warning("reply not sent", extra={"reason": str(task.exception())})


def main(service: Service, argv: list[str] | None = None) -> None:
    """Entry point of ``python -m colony.<service>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m colony.{service.name}", description=service.description
    )
    parser.add_argument(
        "--config", help="node config file (TOML); default: $COLONY_CONFIG, then built-in defaults"
    )
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"{SERVICE_PREFIX}{service.name}: {e}", file=sys.stderr)
        sys.exit(2)
    logs.setup(config.log.level, config.log.format, service=service.name, node=config.node.id)
    sys.exit(asyncio.run(run(service, config, handle_signals=True)))


async def run(
    service: Service,
    config: Config,
    *,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
) -> int:
    """Run `service` until `stop` is set (or a signal arrives); return the exit code."""
    stop = stop or asyncio.Event()
    log = logging.getLogger(f"colony.{service.name}")
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    if isinstance(service, Unbuilt):
        log.warning(f"{SERVICE_PREFIX}{service.name} has nothing to do yet; exiting")
        return 0
    bus = await _connect_until(config, service.name, stop, log)
    if bus is None:
        return 0
    micro = await nats.micro.add_service(
        bus.nc,
        name=SERVICE_PREFIX + service.name,
        version=__version__,
        description=service.description,
        metadata={"node": config.node.id, "node_name": config.node_name},
    )
    ctx = Context(config, bus, clock or SystemClock(), log, micro)
    task = asyncio.create_task(service.run(ctx), name=service.name)
    stopping = asyncio.create_task(stop.wait())
    log.info("started", extra={"servers": config.nats.servers})
    await asyncio.wait({task, stopping, ctx.deaf}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if task.done() and not task.cancelled() and task.exception():
        log.error("service failed", exc_info=task.exception())
        code = 1
    elif ctx.deaf.done():
        log.error("service failed", extra={"reason": ctx.deaf.result()})
        code = 1
    stopping.cancel()
    ctx.stop_listening()
    task.cancel()
    # Shut down inside the grace period even if the service ignores cancellation.
    await asyncio.wait({task}, timeout=SHUTDOWN_GRACE / 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(micro.stop(), timeout=1.0)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.close(), timeout=1.0)
    log.info("stopped", extra={"code": code})
    return code


async def _connect_until(
    config: Config, name: str, stop: asyncio.Event, log: logging.Logger
) -> Bus | None:
    """Connect (the bus retries while the node's server is not up yet), unless stopped first."""
    connecting = asyncio.create_task(
        connect(config.nats, f"{SERVICE_PREFIX}{name}@{config.node.id}", logger=log)
    )
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    await asyncio.wait({connecting}, timeout=1.0)
    return None
