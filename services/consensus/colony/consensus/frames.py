"""Raft frames on the wire: signed with the cluster secret, decoded without running code.

pysyncobj hands the transport plain Python values (dicts, lists, tuples,
bytes, numbers, strings) and, on the receiving side, unpickles the commands
inside log entries when it applies them. So a frame from anything but a
voter must never reach it. Every frame carries an HMAC-SHA256 over the
sender and the body, keyed with the cluster secret; a frame that fails it is
dropped before decoding. The body is a pickle restricted to builtin
containers and scalars: an unpickler that refuses every global cannot build
objects or call functions, whatever the bytes say.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
from typing import Any

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
