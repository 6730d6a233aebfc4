"""Messages only the cluster's own nodes may send, signed with the cluster secret.

Until per-service NATS credentials arrive, anything that can reach a node's
NATS can publish on any subject. A few messages change what the cluster does
when believed (a node's metrics move leadership; `join` and `retire` change
who votes), so they carry an HMAC-SHA256 over their encoding, keyed with the
cluster secret that `colony up` writes (0600) for every node. A signature
also binds the message's time: an old one replayed later is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import TypeVar

import msgspec

from colony.shared.messages import Signed, encode

S = TypeVar("S", bound=Signed)

FRESH_FOR = 30.0
"""Seconds a signed message stays acceptable after it was made (its `ts`): longer
than any delivery, shorter than a replay worth making. Clocks of the cluster's
hosts are assumed to agree within this."""


class BadSignature(ValueError):
    """A signed message that is unsigned, tampered with, or too old."""


def read_secret(path: str | Path) -> bytes:
    """The cluster secret from its file; a clear error if it is missing or too short."""
    if not path:
        raise ValueError("consensus.secret_file is not set: nodes need the cluster secret")
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"cannot read the cluster secret {path}: {e.strerror}") from None
    if len(secret) < 16:
        raise ValueError(f"the cluster secret in {path} is too short (16 bytes at least)")
    return secret


def _mac(secret: bytes, msg: Signed) -> str:
    unsigned = encode(msgspec.structs.replace(msg, mac=""))
    return hmac.new(secret, unsigned, hashlib.sha256).hexdigest()


def sign(secret: bytes, msg: S) -> S:
    """`msg` with its signature."""
    return msgspec.structs.replace(msg, mac=_mac(secret, msg))


def verify(
    secret: bytes, msg: S, now: float | None = None, fresh_for: float | None = FRESH_FOR
) -> S:
    """`msg` if it was signed with `secret` within `fresh_for` seconds (None: whenever,
    for records such as the change stream's); else BadSignature."""
    if not msg.mac:
        raise BadSignature(f"unsigned {type(msg).__name__}: only the cluster's nodes send it")
    if not hmac.compare_digest(msg.mac, _mac(secret, msg)):
        raise BadSignature(f"bad signature on {type(msg).__name__}: not from this cluster")
    if fresh_for is None:
        return msg
    age = (time.time() if now is None else now) - msg.ts
    if abs(age) > fresh_for:
        raise BadSignature(
            f"{type(msg).__name__} made {age:.0f} s ago: older than {fresh_for:g} s (a replay?)"
        )
    return msg


def token(secret: bytes, what: str) -> str:
    """A short keyed digest of `what`: the same on every node, unguessable elsewhere."""
    return hmac.new(secret, what.encode(), hashlib.sha256).hexdigest()[:16]
