"""FakeClock: time stands still until a test advances it; sleepers wake when due."""

import asyncio

import pytest

from colony.shared.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


async def sleeper(clock: FakeClock, seconds: float, woke: list) -> None:
    await clock.sleep(seconds)
    woke.append((seconds, clock.monotonic()))


async def start(*coros) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(c) for c in coros]
    await asyncio.sleep(0)  # let each task reach its clock.sleep
    return tasks


async def test_time_moves_only_on_advance(clock):
    assert clock.time() == 1000.0
    assert clock.monotonic() == 0.0
    await asyncio.sleep(0.01)
    assert clock.time() == 1000.0
    await clock.advance(2.5)
    assert clock.time() == 1002.5
    assert clock.monotonic() == 2.5


async def test_sleepers_wake_in_deadline_order_at_their_deadline(clock):
    woke: list = []
    await start(*(sleeper(clock, s, woke) for s in (3.0, 1.0, 2.0)))
    assert clock.sleepers == 3
    await clock.advance(10.0)
    assert woke == [(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]
    assert clock.sleepers == 0
    assert clock.monotonic() == 10.0


async def test_sleepers_wake_only_when_due(clock):
    woke: list = []
    await start(sleeper(clock, 1.0, woke), sleeper(clock, 2.0, woke))
    await clock.advance(0.5)
    assert woke == []
    await clock.advance(0.5)
    assert woke == [(1.0, 1.0)]
    assert clock.sleepers == 1
    await clock.advance(0.9)
    assert woke == [(1.0, 1.0)]
    await clock.advance(0.1)
    assert [s for s, _ in woke] == [1.0, 2.0]


async def test_equal_deadlines_wake_in_the_order_they_slept(clock):
    woke: list = []

    async def named(name: str) -> None:
        await clock.sleep(1.0)
        woke.append(name)

    await start(named("a"), named("b"), named("c"))
    await clock.advance(1.0)
    assert woke == ["a", "b", "c"]


async def test_zero_and_negative_sleeps_wake_on_the_next_advance(clock):
    woke: list = []
    await start(sleeper(clock, 0.0, woke), sleeper(clock, -5.0, woke))
    assert woke == []
    await clock.advance(0.0)
    assert woke == [(0.0, 0.0), (-5.0, 0.0)]


async def test_a_periodic_loop_ticks_once_per_period_within_one_advance(clock):
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await clock.sleep(1.0)
            ticks.append(clock.monotonic())

    [task] = await start(loop())
    await clock.advance(3.5)
    assert ticks == [1.0, 2.0, 3.0]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
