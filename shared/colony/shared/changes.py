"""Following the change stream: every change of the management database, in order.

The Raft leader relays each change to the `COLONY_CHANGES` stream, in index order.
A stream sequence is usually the change's index, but not always: a forgery or a
duplicate takes a sequence too, and a stream recreated (lost, emptied) starts its
sequences at 1 again while the change log goes on. So everything here speaks in
change indexes (`Change.index`), read from the changes themselves: `last_index`
is the index of the last change the stream holds, and `follow(after=N)` finds
where change N is on the stream before it replays from there, then goes on with
each change as it is relayed; it checks each change's signature when given the
cluster secret, and drops (with a log line) what is not a valid change. A
follower that must never miss a change (the node agent, the curator) reads
`last_index` first, then the state it needs, then follows after that index; it
reads again after a reconnect: the stream keeps a bounded history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from colony.shared import subjects
from colony.shared.bus import Bus, NotFound
from colony.shared.messages import Change, DecodeError, decode, decode_or_drop
from colony.shared.signing import BadSignature, verify

log = logging.getLogger("colony.changes")

WALK_BACK = 16
"""Messages `last_index` looks back over from the stream's end for a change (forgeries
and deleted ones are skipped)."""


async def last_index(bus: Bus, secret: bytes | None = None) -> int:
    """The index of the last change the stream holds; 0 if it holds none (or there is no
    stream yet). Read from the last message that is a change (with `secret`: signed with
    it), not from the stream's last sequence, which is no change index (see above).
    Raises the bus's errors (BusError) if the stream cannot be read."""
    try:
        state = await bus.stream_state(subjects.CHANGES_STREAM)
    except NotFound:
        return 0
    for seq in range(state.last_seq, max(state.first_seq, 1) - 1, -1)[:WALK_BACK]:
        change = await _change_at(bus, seq, secret)
        if change is not None:
            return change.index
    return 0


async def _change_at(bus: Bus, seq: int, secret: bytes | None) -> Change | None:
    """The change at stream sequence `seq`; None if there is none (deleted, a forgery)."""
    stored = await bus.stored(subjects.CHANGES_STREAM, seq)
    if stored is None:
        return None
    try:
        change = decode(stored.data, Change)
        if secret is not None:
            verify(secret, change, fresh_for=None)
    except (DecodeError, BadSignature):
        return None
    return change


async def _sequence_after(bus: Bus, after: int, secret: bytes | None) -> int:
    """The stream sequence to replay after so as to meet every change after change index
    `after`: the last one holding a change of index <= `after` (changes are stored in
    index order). One look when sequences are indexes (the usual case); else a binary
    search, which treats a message that is no change as a later one (it starts earlier:
    `follow` drops what it replays again)."""
    state = await bus.stream_state(subjects.CHANGES_STREAM)
    first = max(state.first_seq, 1)
    if first <= after <= state.last_seq:
        change = await _change_at(bus, after, secret)
        if change is not None and change.index == after:
            return after
    low, high = first - 1, state.last_seq
    while low < high:
        middle = (low + high + 1) // 2
        change = await _change_at(bus, middle, secret)
        if change is not None and change.index <= after:
            low = middle
        else:
            high = middle - 1
    return low


async def follow(
    bus: Bus,
    *,
    after: int | None = 0,
    kinds: Iterable[str] = (),
    secret: bytes | None = None,
    logger: logging.Logger = log,
) -> AsyncIterator[Change]:
    """The changes after change index `after` (0: every one kept; None: only new ones),
    then each new one, of the given `kinds` (none given: every kind), in index order.
    With `secret`, a change not signed with it is dropped. Ends with the bus's NotFound
    while the stream does not exist."""
    wanted = set(kinds)
    only = next(iter(wanted)) if len(wanted) == 1 else None
    subject = subjects.change(only, subjects.ANY).name if only else subjects.every_change()
    start = await _sequence_after(bus, after, secret) if after else after
    async for stored in bus.follow(subjects.CHANGES_STREAM, subject, start):
        change = decode_or_drop(stored.data, Change, stored.subject, logger)
        if change is None or (after and change.index <= after):
            continue  # (a copy sent again, or one before `after` replayed to be safe)
        if secret is not None:
            try:
                verify(secret, change, fresh_for=None)
            except BadSignature as e:
                logger.warning("dropped a change", extra={"subject": stored.subject, "why": str(e)})
                continue
        if not wanted or change.kind in wanted:
            yield change
