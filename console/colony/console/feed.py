"""Where the console's model items come from: the only code that reads the bus.

A feed runs until cancelled and emits feed items (colony.console.model) through a
callback that never blocks (the app buffers them and applies them in batches).
`BusFeed` is the real one; `ScriptedFeed` plays a script, then whatever a test pushes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from colony.console.model import FeedItem

Emit = Callable[[FeedItem], None]
"""Takes one item; never blocks (the app batches)."""


class Feed(Protocol):
    async def run(self, emit: Emit) -> None:
        """Emit items until cancelled; reconnects by itself."""
        ...


class ScriptedFeed:
    """Plays `items` in order (a float: a pause of that many seconds), then each item
    `push`ed, until cancelled."""

    def __init__(self, items: Iterable[FeedItem | float] = ()) -> None:
        self.items = list(items)
        self._pushed: asyncio.Queue[FeedItem] = asyncio.Queue()

    def push(self, *items: FeedItem) -> None:
        """Inject live items (tests)."""
        for item in items:
            self._pushed.put_nowait(item)

    async def run(self, emit: Emit) -> None:
        for item in self.items:
            if isinstance(item, float | int):
                await asyncio.sleep(item)
            else:
                emit(item)
        while True:
            emit(await self._pushed.get())
