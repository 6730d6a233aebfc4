"""Stopping asyncio tasks for sure.

On Python 3.11 `asyncio.wait_for` loses a cancellation that arrives just as the awaited
future completes: it returns the result instead (CPython gh-86296, fixed in 3.12). nats-py
waits for replies with it, and so do our queue reads, so a single `task.cancel()` can be
swallowed and the task goes on running. `cancel` cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

AGAIN = 0.05
"""Seconds to wait for a cancelled task before cancelling it again."""


async def cancel(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel `tasks` and return once every one has ended, whatever each raised."""
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=AGAIN)
    for task in tasks:  # retrieve outcomes: no "exception was never retrieved" later
        if task is not None and task.done() and not task.cancelled():
            task.exception()
