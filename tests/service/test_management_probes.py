"""How `Management` waits on the voter it asked, against stand-in voters on a real nats-server.

A stand-in answers its status subject (the client's probe) and handles proposals as its
test scripts it: slowly, never, or by dropping its connection mid-request, as a voter
killed -9 does (NATS then drops its subscriptions). A real voter cannot be made slow, or
to die at one chosen point of a request, on demand; the real kill is in
test_management_failover.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from colony.shared import management, subjects
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.management import ATTEMPT, PROBE_EVERY, Management
from colony.shared.messages import (
    ConsensusStatus,
    KvPut,
    Outcome,
    ProposeReply,
    ProposeRequest,
    decode,
    encode,
)


class StandIn:
    """A voter's propose and status subjects, answered as `on_propose` says: it gets the
    request and the stand-in; what it returns (if anything) is the reply."""

    def __init__(self, node: str, leader: str | None, on_propose) -> None:
        self.node = node
        self.leader = leader
        self.on_propose = on_propose
        self.proposals: list[ProposeRequest] = []
        self.probed = 0
        self.told = asyncio.Event()
        """Set once a probe was answered (its answer flushed to the server)."""
        self.hung = False
        """Gets requests and answers none, status neither."""
        self.bus = None
        self._answering: set[asyncio.Task] = set()

    async def start(self, url: str) -> StandIn:
        self.bus = await connect(NatsSettings(servers=[url]), self.node, reconnect=False)
        await self.bus.nc.subscribe(subjects.propose(self.node).name, cb=self._propose)
        await self.bus.nc.subscribe(subjects.consensus_status(self.node).name, cb=self._status)
        await self.bus.nc.flush()
        return self

    async def _propose(self, msg) -> None:
        request = decode(msg.data, ProposeRequest)
        self.proposals.append(request)
        # its own task: the status subject is answered meanwhile, as a voter's is
        task = asyncio.create_task(self._answer(msg, request))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg, request: ProposeRequest) -> None:
        reply = await self.on_propose(request, self)
        if reply is not None:
            await msg.respond(encode(reply))

    async def _status(self, msg) -> None:
        self.probed += 1
        if self.hung:
            return
        role = "leader" if self.leader == self.node else "follower"
        status = ConsensusStatus(
            node=self.node, role=role, leader=self.leader, term=1, commit_index=1,
            applied_index=1, has_quorum=True, voters=[],
        )  # fmt: skip
        await msg.respond(encode(status))
        await self.bus.nc.flush()
        self.told.set()

    async def vanish(self) -> None:
        """Drop the connection, answering nothing more (as a process killed -9)."""
        await self.bus.nc.close()


def committed(index: int) -> ProposeReply:
    return ProposeReply(index=index, outcomes=[Outcome(ok=True, value="v", version=1)])


def answer_after(seconds: float, index: int):
    async def answer(_request, _me):
        await asyncio.sleep(seconds)  # the slow commit being modelled
        return committed(index)

    return answer


@pytest.fixture
async def stand_ins(nats_server):
    started: list[StandIn] = []

    async def make(node: str, leader: str | None, on_propose) -> StandIn:
        started.append(await StandIn(node, leader, on_propose).start(nats_server.url))
        return started[-1]

    yield make
    for stand_in in started:
        if not stand_in.bus.nc.is_closed:
            await stand_in.bus.close()


@pytest.fixture
async def client_bus(nats_server):
    bus = await connect(NatsSettings(servers=[nats_server.url]), "client")
    yield bus
    await bus.close()


async def never(_request, _me):
    return None


async def test_a_slow_voter_that_answers_probes_is_waited_for_and_never_left(stand_ins, client_bus):
    slow = await stand_ins("v1", "v1", answer_after(8 * PROBE_EVERY, index=7))
    other = await stand_ins("v2", "v1", never)
    began = time.monotonic()
    reply = await Management(client_bus, ["v1", "v2"]).propose(KvPut("k", "v"))
    assert reply.index == 7  # the slow voter's own answer
    assert time.monotonic() - began >= 8 * PROBE_EVERY
    assert len(slow.proposals) == 1 and other.proposals == []  # asked once, nobody else
    assert slow.probed >= 4  # it was probed while it worked, and answered


async def test_a_voter_gone_mid_request_is_left_at_once_for_the_leader_it_named(
    stand_ins, client_bus
):
    async def die_once_probed(_request, me: StandIn):
        await me.told.wait()  # the client has heard it name the leader
        await me.vanish()

    gone = await stand_ins("v1", "v3", die_once_probed)  # a follower, v3 leads
    skipped = await stand_ins("v2", "v3", never)
    chief = await stand_ins("v3", "v3", answer_after(0, index=9))
    ids = ["proposal-one"]
    began = time.monotonic()
    reply = await Management(client_bus, ["v1", "v2", "v3"]).propose(KvPut("k", "v"), ids=ids)
    took = time.monotonic() - began
    assert reply.index == 9
    assert took < 5 * PROBE_EVERY, f"{took:.3f} s to leave a voter that is gone"
    assert skipped.proposals == []  # straight to the leader v1 named
    [first] = gone.proposals
    [again] = chief.proposals
    assert again.proposals == first.proposals and first.proposals[0].id == "proposal-one"


async def test_a_voter_answering_neither_request_nor_probes_is_left_after_attempt(
    stand_ins, client_bus
):
    hung = await stand_ins("v1", "v1", never)
    hung.hung = True  # hung (or cut off): it still holds its subscriptions
    live = await stand_ins("v2", "v2", answer_after(0, index=3))
    began = time.monotonic()
    reply = await Management(client_bus, ["v1", "v2"]).propose(KvPut("k", "v"))
    took = time.monotonic() - began
    assert reply.index == 3 and len(hung.proposals) == 1 and len(live.proposals) == 1
    assert ATTEMPT <= took < ATTEMPT + 1, f"left after {took:.3f} s"


async def test_a_live_voter_whose_answer_never_comes_is_asked_again_after_patience(
    stand_ins, client_bus, monkeypatch
):
    monkeypatch.setattr(management, "PATIENCE", 5 * PROBE_EVERY)  # not 6 s in a test
    lost = await stand_ins("v1", "v1", never)  # its answer lost (a reconnection of NATS)
    live = await stand_ins("v2", "v1", answer_after(0, index=4))
    began = time.monotonic()
    reply = await Management(client_bus, ["v1", "v2"]).propose(KvPut("k", "v"))
    took = time.monotonic() - began
    assert reply.index == 4 and len(lost.proposals) == 1 and len(live.proposals) == 1
    assert lost.probed >= 3  # it answered probes all along
    assert 5 * PROBE_EVERY <= took < ATTEMPT, f"asked again after {took:.3f} s"
