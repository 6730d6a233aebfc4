"""Following the change stream (colony.shared.changes) on a real nats-server: replay from a
point, then live; only the kinds asked for; forged changes dropped."""

from __future__ import annotations

import asyncio

from colony.shared import changes, subjects
from colony.shared.messages import Change
from colony.shared.signing import sign

SECRET = b"k" * 32


async def store(bus, index: int, kind: str = "job", secret: bytes = SECRET) -> None:
    change = Change(index=index, kind=kind, id=f"o{index}", version=1, log_index=index)
    await bus.stream_publish(subjects.change(kind, change.id), sign(secret, change))


async def take(feed, count: int) -> list[int]:
    async with asyncio.timeout(10):
        return [(await anext(feed)).index for _ in range(count)]


async def test_replays_after_a_point_then_follows_live_and_filters(bus):
    await bus.ensure_stream(subjects.CHANGES_STREAM, [subjects.every_change()])
    for index in (1, 2, 3):
        await store(bus, index, kind="job" if index != 2 else "node")
    everything = changes.follow(bus, after=0, secret=SECRET)
    jobs_after_1 = changes.follow(bus, after=1, kinds=["job"], secret=SECRET)
    assert await take(everything, 3) == [1, 2, 3]
    assert await take(jobs_after_1, 1) == [3]
    await store(bus, 4, secret=b"x" * 32)  # a forgery: dropped
    await store(bus, 5)
    assert await take(everything, 1) == [5]
    assert await take(jobs_after_1, 1) == [5]
    await everything.aclose()
    await jobs_after_1.aclose()


async def test_only_new_changes(bus):
    await bus.ensure_stream(subjects.CHANGES_STREAM, [subjects.every_change()])
    await store(bus, 1)
    feed = changes.follow(bus, after=None, secret=SECRET)
    pending = asyncio.ensure_future(take(feed, 1))
    await asyncio.sleep(0)  # let it subscribe before the next change is stored

    async def stored_until_seen() -> list[int]:
        index = 2
        while not pending.done():  # the subscription may start after a store: store again
            await store(bus, index)
            index += 1
            await asyncio.wait([pending], timeout=0.2)
        return pending.result()

    seen = await asyncio.wait_for(stored_until_seen(), 10)
    assert seen[0] >= 2
    await feed.aclose()


async def test_last_index_and_follow_speak_change_indexes_when_sequences_are_not(bus):
    """A stream recreated holds changes 101.. at sequences 1..: the last index is read from
    the last change, and following after change 102 starts where 102 is, not at sequence
    102 (past the stream's end, which would miss every change until it got there)."""
    assert await changes.last_index(bus) == 0  # no stream yet
    await bus.ensure_stream(subjects.CHANGES_STREAM, [subjects.every_change()])
    assert await changes.last_index(bus) == 0
    for index in (101, 102, 103):
        await store(bus, index)
    await store(bus, 999, secret=b"x" * 32)  # a forgery at the tail
    assert await changes.last_index(bus, SECRET) == 103
    feed = changes.follow(bus, after=102, secret=SECRET)
    assert await take(feed, 1) == [103]
    await store(bus, 104)
    assert await take(feed, 1) == [104]
    await feed.aclose()


async def test_follow_after_an_index_behind_its_sequence(bus):
    """Forgeries took sequences: change 3 is at sequence 5; after 3 comes 4, once."""
    await bus.ensure_stream(subjects.CHANGES_STREAM, [subjects.every_change()])
    await store(bus, 1)
    await store(bus, 50, secret=b"x" * 32)
    await store(bus, 2)
    await store(bus, 60, secret=b"x" * 32)
    await store(bus, 3)
    await store(bus, 3)  # a duplicate sent again
    await store(bus, 4)
    assert await changes.last_index(bus, SECRET) == 4
    feed = changes.follow(bus, after=3, secret=SECRET)
    assert await take(feed, 1) == [4]
    await store(bus, 5)
    assert await take(feed, 1) == [5]
    await feed.aclose()
