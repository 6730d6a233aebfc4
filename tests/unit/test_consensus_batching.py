"""The leader's batching of requests that arrive together into one log entry: each request
gets its own outcomes, only a bad request is refused, and the idempotency window's `made`
is never weakened. The commit is a real Machine applying each entry at the next index."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from colony.consensus.batching import MADE_SPREAD, Batcher
from colony.consensus.machine import MAX_BATCH, MAX_ENTRY_BYTES, BadBatch, Machine, decode_entry
from colony.shared.messages import KvCas, KvPut, Proposal

_ids = itertools.count()


def puts(*keys: str) -> list[Proposal]:
    return [Proposal(f"p{next(_ids)}", KvPut(key, key.upper())) for key in keys]


class Log:
    """Applies each committed entry to a Machine at the next index, and keeps it."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.entries: list[bytes] = []
        self.fail: Exception | None = None

    async def commit(self, entry: bytes):
        await asyncio.sleep(0)  # a commit always yields
        if self.fail:
            raise self.fail
        self.entries.append(entry)
        index = len(self.entries) + 1
        return index, self.machine.apply(index, entry)


@pytest.fixture
def log(tmp_path):
    machine = Machine(tmp_path / "management.db")
    yield Log(machine)
    machine.close()


async def test_requests_arriving_together_share_one_entry_and_each_gets_its_own_outcomes(log):
    batcher = Batcher(log.commit)
    first, second, third = await asyncio.gather(
        batcher.propose(puts("a", "b"), made=100.0),
        batcher.propose(puts("c"), made=100.2),
        batcher.propose([Proposal(f"p{next(_ids)}", KvCas("a", "A", "A2"))], made=100.1),
    )
    assert len(log.entries) == 1
    assert first[0] == second[0] == third[0] == 2
    assert [o.ok for o in first[1]] == [True, True] and len(second[1]) == 1
    assert third[1][0].ok and third[1][0].value == "A2"  # after the puts: arrival order
    assert decode_entry(2, log.entries[0]).made == 100.0  # the earliest: never weaker
    assert (batcher.entries, batcher.requests) == (1, 3)


async def test_a_lone_request_goes_at_once(log):
    batcher = Batcher(log.commit)
    index, outcomes = await asyncio.wait_for(batcher.propose(puts("a"), made=1.0), 5)
    assert (index, len(outcomes), len(log.entries)) == (2, 1, 1)
    # and the next request after it gets an entry of its own
    await batcher.propose(puts("b"), made=1.0)
    assert len(log.entries) == 2


async def test_only_the_request_that_cannot_be_encoded_is_refused(log):
    batcher = Batcher(log.commit)
    huge = [Proposal(f"p{next(_ids)}", KvPut("big", "x" * (MAX_ENTRY_BYTES // 2))) for _ in "ab"]
    good, bad, also_good = await asyncio.gather(
        batcher.propose(puts("a"), made=5.0),
        batcher.propose(huge, made=5.0),
        batcher.propose(puts("b"), made=5.0),
        return_exceptions=True,
    )
    assert isinstance(bad, BadBatch) and "split it" in str(bad)
    assert good[1][0].ok and also_good[1][0].ok
    assert len(log.entries) == 2


async def test_requests_made_far_apart_or_unknown_are_not_grouped(log):
    batcher = Batcher(log.commit)
    await asyncio.gather(
        batcher.propose(puts("a"), made=50.0),
        batcher.propose(puts("b"), made=50.0 + MADE_SPREAD / 2),
        batcher.propose(puts("c"), made=50.0 + MADE_SPREAD * 1.5),  # too far from the first
        batcher.propose(puts("d"), made=0.0),  # unknown: never with a known one
    )
    made = [decode_entry(2, e).made for e in log.entries]
    assert made == [50.0, 50.0 + MADE_SPREAD * 1.5, 0.0]


async def test_an_entry_holds_at_most_max_batch_proposals(log):
    batcher = Batcher(log.commit)
    half = MAX_BATCH // 2 + 1
    await asyncio.gather(*(batcher.propose(puts(*"k" * half), made=9.0) for _ in range(3)))
    assert [len(decode_entry(2, e).proposals) for e in log.entries] == [half] * 3


async def test_a_failed_commit_fails_every_request_of_its_entry(log):
    batcher = Batcher(log.commit)
    log.fail = RuntimeError("no quorum")
    results = await asyncio.gather(
        batcher.propose(puts("a"), made=1.0),
        batcher.propose(puts("b"), made=1.0),
        return_exceptions=True,
    )
    assert [str(r) for r in results] == ["no quorum", "no quorum"]
    log.fail = None
    assert (await batcher.propose(puts("c"), made=1.0))[1][0].ok  # and it goes on
