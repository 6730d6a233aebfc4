"""Management gives up a request by cancelling its task; an answer that comes at that very
moment wins (nats-py's wait_for keeps it on Python 3.11), and the task must not be left
counting a cancellation (a later asyncio.timeout in it would misread its expiry)."""

from __future__ import annotations

import asyncio

import pytest

from colony.shared.bus import NoResponders
from colony.shared.management import PROBE_EVERY, Management
from colony.shared.messages import KvPut, ProposeReply


class AnsweredAsGone:
    """A voter whose answer arrives in the same instant as the probe that finds it gone.
    Its request waits as nats-py's does (wait_for on a future the reply completes)."""

    def __init__(self) -> None:
        self.reply: asyncio.Future | None = None
        self.proposals = 0

    async def request(self, subject, request, timeout: float):
        if ".status." in subject.name:
            assert self.reply is not None
            self.reply.set_result(ProposeReply(index=5, outcomes=[]))
            raise NoResponders(f"no service answers on {subject.name}")
        self.proposals += 1
        self.reply = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.reply, timeout)


async def test_an_answer_that_comes_as_its_voter_is_given_up_is_kept_and_leaves_no_cancel():
    bus = AnsweredAsGone()
    reply = await Management(bus, ["v1", "v2"]).propose(KvPut("k", "v"))
    assert reply.index == 5 and bus.proposals == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    with pytest.raises(TimeoutError):  # the timeout it is, not a cancellation from outside
        async with asyncio.timeout(PROBE_EVERY / 10):
            await asyncio.sleep(1)
