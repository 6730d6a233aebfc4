"""`join` and `retire` change who votes: a node obeys them only signed with the cluster
secret, fresh, once, and addressed to it. Three voters and a standby node in this process,
against a real nats-server."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from colony.consensus.service import ConsensusService
from colony.harness.processes import poll
from colony.shared import runner, subjects
from colony.shared.bus import RemoteError
from colony.shared.cluster import Cluster
from colony.shared.config import ConsensusSettings
from colony.shared.messages import (
    JoinRequest,
    KvPut,
    Proposal,
    ProposeRequest,
    RetireRequest,
    new_id,
)
from colony.shared.signing import sign

VOTERS = ["v1", "v2", "v3"]
SECRET = b"a-cluster-secret-for-tests"


@pytest.fixture
async def nodes(nats_server, tmp_path):
    """The three voters and s4, a standby node."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    stops, tasks = {}, {}
    for node in [*VOTERS, "s4"]:
        config = nats_server.node_config(node)
        config.consensus = ConsensusSettings(
            voters=VOTERS, secret_file=str(secret), change_stream_replicas=1
        )
        stops[node] = asyncio.Event()
        tasks[node] = asyncio.create_task(runner.run(ConsensusService(), config, stop=stops[node]))
    yield
    for node, task in tasks.items():
        stops[node].set()
        assert await asyncio.wait_for(task, runner.SHUTDOWN_GRACE) == 0


async def status(bus, node: str):
    return await Cluster(bus).status(node)


async def leader(bus) -> str:
    """The leader once every voter answers following it."""
    cluster = Cluster(bus, VOTERS)
    return (await cluster.until(lambda s: not s.unreachable and s.leader(), 20, "leader")).node


async def refused(bus, subject, request) -> str:
    with pytest.raises(RemoteError) as e:
        await bus.request(subject, request, 2)
    assert e.value.code == 403, e.value
    return str(e.value)


async def test_an_anonymous_or_forged_retire_is_refused_and_the_voter_keeps_voting(nodes, bus):
    chief = await leader(bus)
    voter = next(n for n in VOTERS if n != chief)
    to = subjects.consensus_retire(voter)
    retire = RetireRequest(reason="no longer needed", node=voter)
    assert "unsigned RetireRequest" in await refused(bus, to, retire)
    assert "bad signature" in await refused(bus, to, sign(b"someone else's secret!", retire))
    old = sign(SECRET, msgspec.structs.replace(retire, ts=time.time() - 600))
    assert "a replay?" in await refused(bus, to, old)
    other = next(n for n in VOTERS if n not in (chief, voter))
    misaddressed = sign(SECRET, RetireRequest(reason="no longer needed", node=other))
    assert f"it names {other!r}, not {voter}" in await refused(bus, to, misaddressed)

    view = await status(bus, voter)
    assert view.role == "follower" and view.leader == chief
    write = ProposeRequest(proposals=[Proposal(new_id(), KvPut("still", "voting"))])
    assert (await bus.request(subjects.propose(voter), write, 6)).outcomes[0].ok
    assert len((await status(bus, chief)).voters) == 3


async def test_a_forged_join_is_refused_and_the_node_stands_by(nodes, bus):
    await poll(lambda: status(bus, "s4"), 10, "the standby node to answer")
    to = subjects.consensus_join("s4")
    join = JoinRequest(voters=[*VOTERS, "s4"])
    assert "unsigned JoinRequest" in await refused(bus, to, join)
    assert "bad signature" in await refused(bus, to, sign(b"someone else's secret!", join))
    assert (await status(bus, "s4")).role == "standby"


async def test_a_signed_request_is_obeyed_once_and_its_replay_refused(nodes, bus):
    """Here on a standby node, which a retire leaves as it is: the replay is still refused."""
    await poll(lambda: status(bus, "s4"), 10, "the standby node to answer")
    to = subjects.consensus_retire("s4")
    retire = sign(SECRET, RetireRequest(reason="stand by", node="s4"))
    assert (await bus.request(to, retire, 2)).retired is False  # standing by already
    assert "a replay" in await refused(bus, to, retire)
