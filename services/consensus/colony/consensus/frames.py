"""Raft frames on the wire: signed with the cluster secret, decoded without running code.

pysyncobj hands the transport plain Python values (dicts, lists, tuples,
bytes, numbers, strings) and, on the receiving side, unpickles the commands
inside log entries when it applies them. So a frame from anything but a
voter must never reach it. Every frame carries an HMAC-SHA256 over the
sender and the body, keyed with the cluster secret; a frame that fails it is
dropped before decoding. The body is a pickle restricted to builtin
containers and scalars: an unpickler that refuses every global cannot build
objects or call functions, whatever the bytes say.

A signature alone would let a captured frame be published again later, to
its recipient or to another voter, and be taken for new. So the transport
signs each frame for one recipient, with its sender's incarnation (when its
`Link` started, and a random nonce) and a sequence number that grows per
(sender, recipient): `seal_for` / `unseal_for`. A receiver's `ReplayGuard`
accepts from each sender only its latest incarnation, in sequence: a
restarted sender starts later, so it is heard at once, and nothing from an
earlier incarnation is accepted again once a later one was heard.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import pickle
import time
from typing import Any, NamedTuple

MAC_BYTES = 32
MAX_FRAME = 1024 * 1024 - 1024
"""Below NATS's 1 MiB max_payload, with room for headers."""


class BadFrame(ValueError):
    """A frame that is not signed by a voter, or not well formed."""


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise BadFrame(f"frame refers to {module}.{name}: only plain values may travel")


def dumps(value: Any) -> bytes:
    """Encode plain values (what `loads` accepts back)."""
    return pickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    """Decode plain values; raises BadFrame for anything that would need a global."""
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except BadFrame:
        raise
    except Exception as e:  # any malformed pickle: truncated, bad opcode, ...
        raise BadFrame(f"undecodable frame: {e}") from None


def seal(secret: bytes, sender: str, message: Any) -> bytes:
    """Sign and encode `message` from `sender`."""
    body = dumps((sender, message))
    return hmac.digest(secret, body, hashlib.sha256) + body


def unseal(secret: bytes, frame: bytes) -> tuple[str, Any]:
    """Check the signature, then decode: (sender, message). Raises BadFrame."""
    if len(frame) > MAX_FRAME:
        raise BadFrame(f"frame of {len(frame)} bytes is over {MAX_FRAME}")
    mac, body = frame[:MAC_BYTES], frame[MAC_BYTES:]
    if len(mac) < MAC_BYTES or not hmac.compare_digest(
        mac, hmac.digest(secret, body, hashlib.sha256)
    ):
        raise BadFrame("bad signature: not from a voter of this cluster")
    decoded = loads(body)
    if not (isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[0], str)):
        raise BadFrame("frame is not (sender, message)")
    return decoded


class Incarnation(NamedTuple):
    """One run of a sender's `Link`: frames of a later run supersede those of earlier ones."""

    started: int
    """Wall-clock nanoseconds when it started: a restart starts later."""
    nonce: bytes
    """Random: two runs never share a sequence, even if they started in the same instant."""


def new_incarnation() -> Incarnation:
    return Incarnation(time.time_ns(), os.urandom(8))


class Frame(NamedTuple):
    """A frame signed for one recipient, at its place in its sender's stream to it."""

    sender: str
    recipient: str
    incarnation: Incarnation
    seq: int
    message: Any


def seal_for(
    secret: bytes, sender: str, recipient: str, incarnation: Incarnation, seq: int, message: Any
) -> bytes:
    """Sign `message` from `sender` for `recipient` only, as number `seq` of `incarnation`
    (everything but the message is inside the signed part too)."""
    envelope = (recipient, incarnation.started, incarnation.nonce, seq, message)
    return seal(secret, sender, envelope)


def unseal_for(secret: bytes, frame: bytes) -> Frame:
    """Check the signature, then decode a frame made by `seal_for`. Raises BadFrame."""
    sender, envelope = unseal(secret, frame)
    if not (isinstance(envelope, tuple) and len(envelope) == 5):
        raise BadFrame("frame names no recipient and sequence (a voter of an older version?)")
    recipient, started, nonce, seq, message = envelope
    if not (
        isinstance(recipient, str)
        and isinstance(started, int)
        and isinstance(nonce, bytes)
        and isinstance(seq, int)
    ):
        raise BadFrame("frame's recipient, incarnation or sequence is malformed")
    return Frame(sender, recipient, Incarnation(started, nonce), seq, message)


class ReplayGuard:
    """One receiver's memory of the latest incarnation of each sender and the last sequence
    number accepted from it. Used on one thread (the asyncio loop)."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[Incarnation, int]] = {}

    def refusal(self, frame: Frame) -> str:
        """Why `frame` must be dropped ('' if it is new: then it is remembered)."""
        latest = self._latest.get(frame.sender)
        if latest is not None:
            incarnation, seq = latest
            if frame.incarnation == incarnation:
                if frame.seq <= seq:
                    return f"replayed: number {frame.seq}, after {seq} from {frame.sender}"
            elif frame.incarnation.started <= incarnation.started:
                return (
                    f"replayed: from an earlier run of {frame.sender} (started "
                    f"{frame.incarnation.started} ns, the latest heard {incarnation.started} ns; "
                    "or its clock went back)"
                )
        self._latest[frame.sender] = (frame.incarnation, frame.seq)
        return ""
