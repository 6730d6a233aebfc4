"""A feed reading the bus runs in a thread of its own (FeedThread): what it emits reaches
the screen, the app's loop never runs it, and it is stopped (cancelled, its cleanup run,
the thread ended) when the app ends; a feed failing there still says so on screen."""

from __future__ import annotations

import asyncio
import threading

from _console import FIXED, LAST_INDEX, FakeActions, change, cluster_items, node, settle, until

from colony.console.app import ConsoleApp
from colony.console.widgets.status import StatusBar
from colony.console.widgets.table import LiveTable

SIZE = (100, 30)


class ThreadedFeed:
    """The cluster's items, emitted from the feed's own loop, then waits to be cancelled."""

    in_thread = True

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.thread: threading.Thread | None = None
        self.cleaned_up = threading.Event()

    async def run(self, emit) -> None:
        self.thread = threading.current_thread()
        for item in cluster_items():
            emit(item)
            await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("decoder bug")
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await asyncio.sleep(0)  # (cleanup that awaits, as closing a connection does)
            self.cleaned_up.set()


async def test_a_threaded_feed_is_read_and_stopped_with_the_app():
    feed = ThreadedFeed()
    app = ConsoleApp(feed, FakeActions(), clock=lambda: FIXED, batch_interval=0.01)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.screen.query_one("#nodes", LiveTable).row_count == 3
        assert feed.thread is not None and feed.thread is not threading.current_thread()
        running = feed.thread
    assert feed.cleaned_up.is_set(), "the feed should have been cancelled and cleaned up"
    assert not running.is_alive(), "the feed's thread should have ended with the app"


async def test_a_threaded_feed_that_fails_says_so():
    app = ConsoleApp(ThreadedFeed(fail=True), FakeActions(), clock=lambda: FIXED)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model.connection.state == "disconnected", "disconnected")
        await pilot.pause()
        assert "the console stopped" in app.screen.query_one(StatusBar).render().plain


class BusyFeed:
    """The cluster's items, then `count` changes as fast as the thread can emit them, a
    short pause every 20 (while the app drains the buffer in its own thread); half way, it
    waits for the app to drain the buffer, so that there are several however the threads are
    scheduled."""

    in_thread = True

    def __init__(self, count: int) -> None:
        self.count = count
        self.app: ConsoleApp | None = None

    async def run(self, emit) -> None:
        for item in cluster_items():
            emit(item)
        for n in range(1, self.count + 1):
            emit(change(LAST_INDEX + n, "node", "n2", 100 + n, node("n2")))
            if n % 20 == 0:
                await asyncio.sleep(0.0002)  # (the app's thread takes the interpreter)
            if n == self.count // 2 and self.app is not None:
                # (emptied only by a batch: the rest make another; the app is in another
                # thread and loop, so no asyncio.Event of this loop can say so)
                while self.app._buffer:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        await asyncio.Event().wait()


async def test_no_item_is_lost_between_the_feed_thread_and_a_batch():
    count = 4000
    feed = BusyFeed(count)
    app = feed.app = ConsoleApp(feed, FakeActions(), clock=lambda: FIXED, batch_interval=0.001)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, LAST_INDEX + count)
        indexes = [row.index for row in app.model.events]
        assert indexes[-count:] == list(range(LAST_INDEX + 1, LAST_INDEX + count + 1))
        assert app.batches > 1  # (drained while it emitted)
