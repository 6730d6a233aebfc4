"""Following the change stream: every change of the management database, in order.

The Raft leader relays each change to the `COLONY_CHANGES` stream, whose sequence
is the change's index. `follow` replays what the stream keeps from a point, then
goes on with each change as it is relayed; it checks each change's signature
when given the cluster secret, and drops (with a log line) what is not a valid
change. A follower that must never miss a change (the node agent, the curator)
also re-reads the state it needs on start and after a reconnect: the stream
keeps a bounded history.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from colony.shared import subjects
from colony.shared.bus import Bus
from colony.shared.messages import Change, decode_or_drop
from colony.shared.signing import BadSignature, verify

log = logging.getLogger("colony.changes")


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
    async for stored in bus.follow(subjects.CHANGES_STREAM, subject, after):
        change = decode_or_drop(stored.data, Change, stored.subject, logger)
        if change is None:
            continue
        if secret is not None:
            try:
                verify(secret, change, fresh_for=None)
            except BadSignature as e:
                logger.warning("dropped a change", extra={"subject": stored.subject, "why": str(e)})
                continue
        if not wanted or change.kind in wanted:
            yield change
