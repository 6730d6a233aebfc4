"""The bus: a typed wrapper over nats-py.

Publish, request and subscribe take subjects from `colony.shared.subjects`,
which carry their payload types, so the bus encodes and validates for the
caller. A malformed message is logged with its subject and dropped; the
subscriber keeps running. Requests fail with a clear error when nobody
answers or the answer is late.

Every failure is one of the bus's own errors (BusError and its subclasses),
never nats-py's: callers catch Colony's errors and need not know the client
library. The JetStream calls (streams, stored messages, acknowledged
publishes) are here too, typed, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    Placement,
    StorageType,
    StreamConfig,
)

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
    """No connection to a nats-server (closed, draining, or never made)."""


class NoResponders(BusError):
    """Nobody listens on the subject (or no stream replica can answer now)."""


class RequestTimeout(BusError):
    """An answer did not come in time."""


class BadReply(BusError):
    """The reply did not decode as the subject's reply type."""


class RemoteError(BusError):
    """The service answered with an error."""

    def __init__(self, subject: str, code: int, description: str) -> None:
        super().__init__(f"{subject}: {description} (code {code})")
        self.code = code
        self.description = description


class StreamError(BusError):
    """JetStream refused a call; `code` is its HTTP-like status (0: unknown), `err_code`
    JetStream's own finer one."""

    def __init__(self, what: str, code: int, description: str, err_code: int = 0) -> None:
        super().__init__(f"{what}: {description or 'refused'} (code {code})")
        self.code = code
        self.description = description
        self.err_code = err_code


class NotFound(StreamError):
    """No such stream, or no message at that sequence."""


@dataclass(frozen=True, slots=True)
class StreamState:
    """Where a stream stands: its sequences run from first_seq to last_seq."""

    first_seq: int
    last_seq: int
    messages: int


@dataclass(frozen=True, slots=True)
class Stored:
    """A message as a stream stores it, not yet decoded (the caller knows its type)."""

    subject: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Publication(Generic[P]):
    """A message to publish into a stream; `msg_id` lets the stream drop a repeat."""

    subject: Subject[P]
    msg: P
    msg_id: str = ""


@dataclass(frozen=True, slots=True)
class PubAck:
    """The stream stored the `position`-th publication of a batch at `seq`
    (`duplicate`: it held that msg_id already, and stored nothing)."""

    position: int
    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StreamPeer:
    """A server holding a replica of a stream; `current`: caught up with the stream's leader."""

    name: str
    current: bool


@dataclass(frozen=True, slots=True)
class StreamPlacement:
    """Where a stream's replicas are: every peer (the leader first), how many it should have,
    and the placement tags that choose their servers."""

    leader: str | None
    peers: tuple[StreamPeer, ...]
    replicas: int
    tags: tuple[str, ...]


NOT_FOUND_ERR_CODES = (10037, 10043, 10059)
"""JetStream's own codes for no message found, sequence not found (a 400), no stream."""
STREAM_EXISTS = 10058
"""JetStream's code for a stream name in use with another configuration."""
DELETE_FAILED = 10057
"""JetStream's code for a delete that failed: past the stream's end, among others."""


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Raise nats-py's errors as the bus's own, saying what was being done."""
    try:
        yield
    except BusError:
        raise
    except nats.errors.NoRespondersError:
        raise NoResponders(f"{what}: no one answers") from None
    except nats.js.errors.ServiceUnavailableError:
        raise NoResponders(f"{what}: JetStream cannot answer right now") from None
    except nats.js.errors.APIError as e:
        found_not = isinstance(e, nats.js.errors.NotFoundError)  # a direct get's has no code
        if found_not or e.code == 404 or e.err_code in NOT_FOUND_ERR_CODES:
            raise NotFound(what, e.code or 404, e.description or "not found") from None
        raise StreamError(what, e.code or 0, e.description or "", e.err_code or 0) from None
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionDrainingError,
        nats.errors.StaleConnectionError,
        nats.errors.NoServersError,
    ):
        raise NotConnected(f"{what}: the connection to nats is closed") from None
    except nats.errors.TimeoutError:
        raise RequestTimeout(f"{what}: no answer in time") from None
    except nats.errors.Error as e:  # any other: bad subject, payload too big, buffer full...
        raise BusError(f"{what}: {e or type(e).__name__}") from None


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
    except (nats.errors.Error, OSError, TimeoutError) as e:  # no server, refused, TLS...
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
        with _translated(f"publishing on {subject.name}"):
            await self.nc.publish(subject.name, encode(msg))

    async def request(self, subject: RequestSubject[Q, R], msg: Q, timeout: float = 1.0) -> R:
        """Send `msg` and return the decoded reply, or raise a BusError saying why not."""
        _check(subject, msg)
        with _translated(f"asking {subject.name}"):  # the rest: closed connection, ...
            try:
                reply = await self.nc.request(subject.name, encode(msg), timeout=timeout)
            except nats.errors.NoRespondersError:  # the usual two, said more precisely
                raise NoResponders(f"no service answers on {subject.name}") from None
            except nats.errors.TimeoutError:
                raise RequestTimeout(f"no reply on {subject.name} within {timeout:g} s") from None
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
        with _translated(f"subscribing to {subject.name}"):
            sub = await self.nc.subscribe(subject.name, queue=queue)
            # Twice: nats-py writes a flush's PING straight to the socket, ahead of commands
            # still queued for its writer task (the SUB), so the first PONG proves nothing.
            # By the time it arrives the writer has sent the SUB, and the second PING
            # follows it.
            await self.nc.flush(timeout=5)
            await self.nc.flush(timeout=5)
        return Subscription(sub, subject, self.log)

    async def gather(self, subject: str, wait: float, data: bytes = b"") -> list[bytes]:
        """Scatter a request and collect every reply that arrives within `wait` seconds."""
        inbox = self.nc.new_inbox()
        replies: list[Msg] = []
        with _translated(f"asking everyone on {subject}"):
            sub = await self.nc.subscribe(inbox, cb=_append_to(replies))
            try:
                await self.nc.publish(subject, data, reply=inbox)
                await asyncio.sleep(wait)  # the scatter-gather window: replies have no count
            finally:
                with contextlib.suppress(nats.errors.Error):  # gone with the connection
                    await sub.unsubscribe()
        return [reply.data for reply in replies]

    # --- JetStream -------------------------------------------------------------

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        replicas: int = 1,
        max_msgs_per_subject: int = -1,
        max_age: float = 0,
        max_msgs: int = -1,
        max_bytes: int = -1,
        duplicate_window: float = 0,
        memory: bool = False,
        placement: list[str] | None = None,
    ) -> None:
        """Create the stream, or bring an existing one to this configuration.

        Limits (-1, 0: none): the oldest messages go first. `duplicate_window`: seconds
        the stream remembers message ids to drop duplicates (0: the server's 2 min).
        `placement`: tags a replica's server must have ("!tag": must not have)."""
        config = StreamConfig(
            name=name,
            subjects=subjects,
            num_replicas=replicas,
            placement=Placement(tags=placement) if placement else None,
            max_msgs_per_subject=max_msgs_per_subject,
            max_age=max_age,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            duplicate_window=duplicate_window,
            storage=StorageType.MEMORY if memory else StorageType.FILE,
            discard=DiscardPolicy.OLD,
            # Every replica answers direct gets: reads work while a leader is re-elected.
            allow_direct=True,
        )
        with _translated(f"making stream {name}"):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != STREAM_EXISTS:
                    raise  # a real refusal (subjects taken, bad config): say that one
                await self.js.update_stream(config)

    async def last_message(self, stream: str, subject: Subject[P]) -> P | None:
        """The newest message the stream holds on `subject`, or None if it holds none.

        Read with a direct get, which any current replica answers (the stream
        must allow it, as `ensure_stream` makes them). Raises NoResponders
        while no replica can answer: no such stream, or its replicas are
        electing a new leader.
        """
        try:
            with _translated(f"reading the last message on {subject.name} in {stream}"):
                raw = await self.js.get_last_msg(stream, subject.name, direct=True)
        except NotFound:
            return None
        except (NoResponders, StreamError) as e:
            if isinstance(e, StreamError) and e.code not in (0, 503):
                raise
            # no replica, or one that is catching up or electing (a status without a code)
            raise NoResponders(f"stream {stream} cannot answer right now") from None
        return decode_or_drop(raw.data or b"", subject.payload, subject.name, self.log)

    async def stream_subjects(self, stream: str) -> list[str]:
        """The subjects a stream holds messages on."""
        try:
            with _translated(f"listing the subjects of stream {stream}"):
                info = await self.js.stream_info(stream, subjects_filter=">")
        except NotFound:
            return []
        return sorted((info.state.subjects or {}).keys())

    async def stream_state(self, stream: str) -> StreamState:
        """Where `stream` stands; NotFound if there is no such stream."""
        with _translated(f"reading the state of stream {stream}"):
            info = await self.js.stream_info(stream)
        state = info.state
        return StreamState(state.first_seq, state.last_seq, state.messages)

    async def stored(self, stream: str, seq: int) -> Stored | None:
        """The message `stream` holds at `seq`, or None (deleted, aged out, not yet)."""
        if seq < 1:  # JetStream numbers from 1, and refuses 0 as a bad request; an empty
            return None  # stream says first_seq 0, so a walk over its range may ask for it
        try:
            with _translated(f"reading message {seq} of stream {stream}"):
                raw = await self.js.get_msg(stream, seq)
        except NotFound:
            return None
        return Stored(raw.subject or "", raw.seq or seq, raw.data or b"")

    async def delete_stored(self, stream: str, seq: int) -> bool:
        """Delete the message at `seq` from `stream`; False if it was not there."""
        try:
            with _translated(f"deleting message {seq} of stream {stream}"):
                return await self.js.delete_msg(stream, seq)
        except NotFound:
            return False
        except StreamError as e:
            if e.err_code == DELETE_FAILED and seq > (await self.stream_state(stream)).last_seq:
                return False  # never stored yet
            raise

    async def stream_publish(
        self, subject: Subject[P], msg: P, msg_id: str = "", timeout: float = 2.0
    ) -> PubAck:
        """Publish `msg` into the stream that captures `subject`; return once it is stored."""
        async for ack in self.stream_publish_all([Publication(subject, msg, msg_id)], timeout):
            return ack
        raise AssertionError("unreachable: one publication, one ack or an error")

    async def stream_publish_all(
        self, publications: Iterable[Publication[Any]], timeout: float = 2.0
    ) -> AsyncIterator[PubAck]:
        """Publish every publication, then yield the stream's acknowledgements as they come.

        Pipelined: all are sent before any ack is awaited (the server stores one
        connection's publishes in the order sent). `publications` is read lazily,
        so a generator may stop early. Raises, at the first one that is missing or
        refused, NoResponders (no stream captures the subject), StreamError, or
        RequestTimeout (none within `timeout` seconds of the previous one).
        """
        acks: asyncio.Queue[Msg] = asyncio.Queue()
        with _translated("publishing into a stream"):
            inbox = self.nc.new_inbox()
            sub = await self.nc.subscribe(f"{inbox}.*", cb=acks.put)
            try:
                sent = 0
                for p in publications:
                    _check(p.subject, p.msg)
                    headers = {"Nats-Msg-Id": p.msg_id} if p.msg_id else None
                    await self.nc.publish(
                        p.subject.name, encode(p.msg), reply=f"{inbox}.{sent}", headers=headers
                    )
                    sent += 1
                for _ in range(sent):
                    try:
                        # Not wait_for: on Python 3.11 it loses a cancellation that comes as
                        # the ack does, and a relay told to stop would go on publishing.
                        async with asyncio.timeout(timeout):
                            reply = await acks.get()
                    except TimeoutError:
                        raise RequestTimeout(
                            f"the stream did not acknowledge within {timeout:g} s"
                        ) from None
                    yield _pub_ack(reply)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    # --- Stream placement: where a replicated stream's copies are -------------

    async def stream_placement(self, stream: str) -> StreamPlacement:
        """Which servers hold `stream`'s replicas, and its placement tags; NotFound if there
        is no such stream. A stream without a leader is described by the JetStream meta
        leader, and only once it has been leaderless for a while (RequestTimeout until then)."""
        with _translated(f"reading where stream {stream} is"):
            info = await self.js.stream_info(stream)
        cluster = info.cluster
        peers = [StreamPeer(cluster.leader, True)] if cluster and cluster.leader else []
        for peer in (cluster.replicas if cluster else None) or []:
            peers.append(StreamPeer(peer.name or "", bool(peer.current)))
        placement = info.config.placement
        return StreamPlacement(
            leader=cluster.leader if cluster else None,
            peers=tuple(peers),
            replicas=info.config.num_replicas or 1,
            tags=tuple(placement.tags or ()) if placement else (),
        )

    async def place_stream(self, stream: str, tags: list[str]) -> None:
        """Set `stream`'s placement tags, all else unchanged. JetStream then moves each replica
        whose server the tags rule out: it adds a new one, and drops the old one once the new
        one has caught up. RequestTimeout from a stream without a leader: the meta leader
        records the change, but no stream leader confirms it."""
        with _translated(f"placing stream {stream}"):
            config = (await self.js.stream_info(stream)).config
            config.placement = Placement(tags=tags) if tags else None
            await self.js.update_stream(config)

    async def recreate_stream(self, stream: str, tags: list[str]) -> None:
        """Delete `stream` and make it again, empty, with its configuration but placement
        `tags`: the way back for a replicated stream whose replicas lost their quorum for good
        (the JetStream meta leader does both without a stream leader). What it held is gone:
        only for a stream whose writer can send it all again. If someone made it again in
        between (its writer), that one stays."""
        with _translated(f"re-creating stream {stream}"):
            config = (await self.js.stream_info(stream)).config
            config.placement = Placement(tags=tags) if tags else None
            await self.js.delete_stream(stream)
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as e:
                if e.err_code != STREAM_EXISTS:
                    raise

    async def remove_stream_peer(self, stream: str, server: str, timeout: float = 2.0) -> None:
        """Drop `stream`'s replica on `server`; the JetStream meta leader picks a replacement
        where the stream's placement allows. Works on a stream without a leader too."""
        what = f"removing {server}'s replica of stream {stream}"
        with _translated(what):
            reply = await self.nc.request(
                f"$JS.API.STREAM.PEER.REMOVE.{stream}",  # nats-py has no call for it
                json.dumps({"peer": server}).encode(),
                timeout=timeout,
            )
        try:
            error = json.loads(reply.data).get("error")
        except ValueError:
            raise BadReply(f"{what}: the answer is not JSON: {reply.data[:80]!r}") from None
        if error:
            code = error.get("code", 0)
            kind = NotFound if code == 404 else StreamError
            raise kind(what, code, error.get("description", ""), error.get("err_code", 0))

    async def follow(self, stream: str, subject: str, after: int | None) -> AsyncIterator[Stored]:
        """The messages of `stream` on `subject` (wildcards allowed) in order: those stored
        after sequence `after` (0: every one kept; None: none, only new ones), then each
        new one as it is stored. An ordered consumer: a message it misses (a server lost, a
        reconnect) makes it start again from the last one delivered, so nothing is skipped
        or repeated. Ends with NotFound if there is no such stream."""
        if after is None:
            policy = {"deliver_policy": DeliverPolicy.NEW}
        elif after == 0:
            policy = {"deliver_policy": DeliverPolicy.ALL}
        else:
            policy = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
        with _translated(f"following stream {stream} on {subject}"):
            sub = await self.js.subscribe(
                subject,
                stream=stream,
                ordered_consumer=True,
                idle_heartbeat=2.0,
                config=ConsumerConfig(**policy),
            )
        try:
            async for msg in sub.messages:
                yield Stored(msg.subject, msg.metadata.sequence.stream, msg.data)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once the server has everything published so far (one round trip)."""
        with _translated("flushing to the nats server"):
            await self.nc.flush(timeout=timeout)

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


def _pub_ack(reply: Msg) -> PubAck:
    """A stream's acknowledgement of one publication, or the bus's error for its refusal."""
    position = int(reply.subject.rsplit(".", 1)[1])
    if not reply.data:  # a status message: no stream captures the subject (yet)
        raise NoResponders(f"no stream stores publication {position}")
    try:
        ack = json.loads(reply.data)
    except ValueError:
        raise BadReply(f"the stream's acknowledgement is not JSON: {reply.data[:80]!r}") from None
    if "error" in ack:
        error = ack["error"]
        code = error.get("code", 0)
        kind = NotFound if code == 404 else StreamError
        raise kind(f"publication {position}", code, error.get("description", ""))
    return PubAck(position, ack.get("stream", ""), ack["seq"], bool(ack.get("duplicate")))


def _append_to(replies: list[Msg]):
    async def append(msg: Msg) -> None:
        replies.append(msg)

    return append
