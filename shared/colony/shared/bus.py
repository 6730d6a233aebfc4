"""The bus: a typed wrapper over nats-py.

Publish, request and subscribe take subjects from `colony.shared.subjects`,
which carry their payload types, so the bus encodes and validates for the
caller. A malformed message is logged with its subject and dropped; the
subscriber keeps running. Requests fail with a clear error when nobody
answers or the answer is late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from colony.shared.config import NatsSettings
from colony.shared.messages import DecodeError, Message, decode, decode_or_drop, encode
from colony.shared.subjects import RequestSubject, Subject

P = TypeVar("P", bound=Message)
Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)

log = logging.getLogger("colony.bus")

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


class BusError(Exception):
    """A bus operation failed; the message says what and where."""


class NotConnected(BusError):
    pass


class NoResponders(BusError):
    pass


class RequestTimeout(BusError):
    pass


class BadReply(BusError):
    """The reply did not decode as the subject's reply type."""


class RemoteError(BusError):
    """The service answered with an error."""

    def __init__(self, subject: str, code: int, description: str) -> None:
        super().__init__(f"{subject}: {description} (code {code})")
        self.code = code
        self.description = description


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """An SSL context from the tls_* settings, or None when TLS is not configured."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    reconnect: bool = True,
    logger: logging.Logger = log,
) -> Bus:
    """Connect to the first reachable server of `settings.servers`.

    With `reconnect` (services), connecting is retried until it succeeds
    (cancel to give up) and a lost connection is retried forever. Without
    (one-shot CLI commands), it fails fast with NotConnected.
    """
    waiting = False

    async def on_disconnect() -> None:
        if reconnect and not (nc.is_closed or nc.is_draining):
            logger.warning("disconnected from nats; reconnecting")

    async def on_reconnect() -> None:
        logger.info("reconnected to nats", extra={"server": str(nc.connected_url.netloc)})

    async def on_error(e: Exception) -> None:
        nonlocal waiting
        if reconnect and not nc.is_connected and not waiting:
            waiting = True  # say it once, not at every attempt
            logger.warning("waiting for nats", extra={"servers": settings.servers, "error": str(e)})
        else:
            logger.debug("nats error", extra={"error": repr(e)})

    nc = Client()
    try:
        await nc.connect(
            servers=settings.servers,
            name=name,
            connect_timeout=settings.connect_timeout,
            ping_interval=settings.ping_interval,
            max_outstanding_pings=2,
            allow_reconnect=reconnect,
            reconnect_time_wait=0.25,
            max_reconnect_attempts=-1 if reconnect else 1,
            tls=tls_context(settings),
            user_credentials=settings.creds,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
    except (nats.errors.NoServersError, OSError, TimeoutError) as e:
        servers = ", ".join(settings.servers)
        reason = str(e) or type(e).__name__
        raise NotConnected(f"cannot reach any nats server of {servers} ({reason})") from None
    return Bus(nc, logger)


class Bus:
    def __init__(self, nc: Client, logger: logging.Logger = log) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=2.0)
        self.log = logger

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def publish(self, subject: Subject[P], msg: P) -> None:
        _check(subject, msg)
        await self.nc.publish(subject.name, encode(msg))

    async def request(self, subject: RequestSubject[Q, R], msg: Q, timeout: float = 1.0) -> R:
        """Send `msg` and return the decoded reply, or raise a BusError saying why not."""
        _check(subject, msg)
        try:
            reply = await self.nc.request(subject.name, encode(msg), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no service answers on {subject.name}") from None
        except nats.errors.TimeoutError:
            raise RequestTimeout(f"no reply on {subject.name} within {timeout:g} s") from None
        except nats.errors.ConnectionClosedError:
            raise NotConnected(f"connection closed while asking {subject.name}") from None
        headers = reply.headers or {}
        if ERROR_CODE_HEADER in headers:
            code = headers[ERROR_CODE_HEADER]
            raise RemoteError(
                subject.name, int(code) if code.isdigit() else 0, headers.get(ERROR_HEADER, "")
            )
        try:
            return decode(reply.data, subject.reply)
        except DecodeError as e:
            raise BadReply(f"reply on {subject.name}: {e}") from None

    async def subscribe(self, subject: Subject[P], queue: str = "") -> Subscription[P]:
        """Subscribe; iterate the result for decoded messages (bad ones are dropped).

        Returns once the server has the subscription (a flush round trip): a message
        another connection publishes after this returns is never missed."""
        sub = await self.nc.subscribe(subject.name, queue=queue)
        # Twice: nats-py writes a flush's PING straight to the socket, ahead of commands
        # still queued for its writer task (the SUB), so the first PONG proves nothing. By
        # the time it arrives the writer has sent the SUB, and the second PING follows it.
        await self.nc.flush(timeout=5)
        await self.nc.flush(timeout=5)
        return Subscription(sub, subject, self.log)

    async def gather(self, subject: str, wait: float, data: bytes = b"") -> list[Msg]:
        """Scatter a request and collect every reply that arrives within `wait` seconds."""
        inbox = self.nc.new_inbox()
        replies: list[Msg] = []
        sub = await self.nc.subscribe(inbox, cb=_append_to(replies))
        try:
            await self.nc.publish(subject, data, reply=inbox)
            await asyncio.sleep(wait)  # the scatter-gather window: replies have no count
        finally:
            await sub.unsubscribe()
        return replies

    # --- JetStream -------------------------------------------------------------

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        replicas: int = 1,
        max_msgs_per_subject: int = -1,
        max_age: float = 0,
        memory: bool = False,
    ) -> None:
        """Create the stream, or bring an existing one to this configuration."""
        config = StreamConfig(
            name=name,
            subjects=subjects,
            num_replicas=replicas,
            max_msgs_per_subject=max_msgs_per_subject,
            max_age=max_age,
            storage=StorageType.MEMORY if memory else StorageType.FILE,
            discard=DiscardPolicy.OLD,
            # Every replica answers direct gets: reads work while a leader is re-elected.
            allow_direct=True,
        )
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config)

    async def last_message(self, stream: str, subject: Subject[P]) -> P | None:
        """The newest message the stream holds on `subject`, or None if it holds none.

        Read with a direct get, which any current replica answers (the stream
        must allow it, as `ensure_stream` makes them). Raises NoResponders
        while no replica can answer: no such stream, or its replicas are
        electing a new leader.
        """
        try:
            raw = await self.js.get_last_msg(stream, subject.name, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except nats.errors.NoRespondersError:
            raise NoResponders(f"stream {stream} cannot answer right now") from None
        return decode_or_drop(raw.data or b"", subject.payload, subject.name, self.log)

    async def stream_subjects(self, stream: str) -> list[str]:
        """The subjects a stream holds messages on."""
        try:
            info = await self.js.stream_info(stream, subjects_filter=">")
        except nats.js.errors.NotFoundError:
            return []
        return sorted((info.state.subjects or {}).keys())

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        # flush, then close: a drain cut short by a deadline leaves asyncio errors behind
        with contextlib.suppress(TimeoutError, nats.errors.Error):
            await self.nc.flush(timeout=0.5)
        await self.nc.close()


class Subscription(Generic[P]):
    """An async iterator of decoded messages on one subject."""

    def __init__(self, sub: Any, subject: Subject[P], logger: logging.Logger) -> None:
        self._sub = sub
        self.subject = subject
        self._log = logger

    def __aiter__(self) -> AsyncIterator[P]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[P]:
        async for raw in self._sub.messages:
            msg = decode_or_drop(raw.data, self.subject.payload, raw.subject, self._log)
            if msg is not None:
                yield msg

    async def next(self, timeout: float) -> P:
        """The next valid message, or TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            async for msg in self:
                return msg
        raise NotConnected(f"subscription to {self.subject.name} ended")

    async def stop(self) -> None:
        # if the connection is already gone, the subscription went with it
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


def _check(subject: Subject[Any] | RequestSubject[Any, Any], msg: Message) -> None:
    if not isinstance(msg, subject.payload):
        raise TypeError(
            f"{subject.name} carries {subject.payload.__name__}, not {type(msg).__name__}"
        )


def _append_to(replies: list[Msg]):
    async def append(msg: Msg) -> None:
        replies.append(msg)

    return append
