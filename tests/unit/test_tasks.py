"""`tasks.cancel` ends a task even when one cancellation is lost (Python 3.11's wait_for)."""

from __future__ import annotations

import asyncio

from colony.shared import tasks


async def test_a_task_that_swallows_a_cancellation_is_still_ended():
    swallowed = []

    async def stubborn():
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:  # the second one ends it
                    raise
                swallowed.append(True)  # what wait_for does when its future just finished

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.cancel(task), 5)
    assert task.cancelled() and swallowed


async def test_finished_failed_and_missing_tasks_are_fine():
    async def fails():
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    await tasks.cancel(done, failed, None)
    assert done.done() and isinstance(failed.exception(), ValueError)


async def test_a_lost_cancellation_in_wait_for_is_real_on_this_python():
    """Why the module exists: the race it guards against (3.11 only)."""
    import sys

    if sys.version_info >= (3, 12):
        return
    ready = asyncio.get_running_loop().create_future()

    async def waiting():
        return await asyncio.wait_for(ready, 10)

    task = asyncio.create_task(waiting())
    await asyncio.sleep(0)
    ready.set_result("reply")  # the reply and the cancel arrive in the same loop turn
    task.cancel()
    assert await task == "reply"  # the cancellation was lost
