"""Members restarted together are known alive again by every member at once.

Each restarted member has forgotten its past life, which the others hold dead; it
soon hears a peer restarted with it and is no longer alone, so it must not wait for
the others to tell it of its past (or for a push-pull) to be taken alive again.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from test_membership import everyone_sees, group, member_process, view  # noqa: F401

from colony.harness.processes import poll

ALL = ["m1", "m2", "m3", "m4", "m5", "m6"]


@pytest.mark.parametrize("count", [2, 4])
async def test_members_restarted_together_are_alive_everywhere_within_2_s(
    count,
    group,  # noqa: F811
    bus,
    member_process,  # noqa: F811
):
    group.start("m1")
    group.start("m2")
    processes = {n: member_process(n) for n in ALL[2:]}
    alive = dict.fromkeys(ALL, "alive")
    await poll(lambda: everyone_sees(bus, ALL, alive), 30, "all to see all alive")
    restarted = ALL[-count:]
    for node in restarted:
        processes[node].send_signal(signal.SIGKILL)
    for node in restarted:
        processes[node].wait()
    survivors = [n for n in ALL if n not in restarted]
    dead = dict.fromkeys(restarted, "dead")
    await poll(lambda: everyone_sees(bus, survivors, dead), 20, "the killed to be dead")
    for node in restarted:
        member_process(node)  # back together, with no memory of their past lives
    # The 2 s start once they run (each answers for its view before it first
    # announces itself): Python starting on a busy machine is no part of them.
    await poll(lambda: all_answer(bus, restarted), 30, "the restarted members to start")
    started = time.monotonic()
    back = dict.fromkeys(restarted, "alive")
    try:
        await poll(lambda: everyone_sees(bus, ALL, back), 2, "the restarted alive everywhere")
    except TimeoutError:
        views = {n: await view(bus, n) for n in ALL}
        raise AssertionError(f"not all alive everywhere within 2 s: {views}") from None
    took = time.monotonic() - started
    await poll(lambda: everyone_sees(bus, ALL, alive), 10, "the restarted to know everyone")
    print(f"{count} restarted: alive everywhere {took:.2f} s after start")


async def all_answer(bus, nodes: list[str]) -> bool:
    views = await asyncio.gather(*(view(bus, n) for n in nodes))
    return all(views)
