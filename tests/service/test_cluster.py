"""The cluster client against a real nats-server and in-process voters: the leader and
manager the voters agree on, silent voters shown unreachable, waits that time out
saying what they saw, and service discovery that ignores what is not Colony's."""

from __future__ import annotations

import json

import pytest
from _voters import running

from colony.shared import subjects
from colony.shared.cluster import Cluster, WaitTimeout

VOTERS = ["v1", "v2", "v3"]


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


async def test_the_leader_and_manager_are_the_ones_every_voter_agrees_on(voters, bus):
    cluster = Cluster(bus, VOTERS)
    leader = await cluster.wait_leader(20)
    manager = await cluster.wait_manager(20)
    assert manager.node == leader.node and manager.epoch >= 1
    assert sorted(leader.voters) == VOTERS
    statuses = await cluster.statuses()
    assert statuses.unreachable == [] and set(statuses.answered) == set(VOTERS)
    for view in statuses.answered.values():
        assert view.manager is not None
        assert (view.manager.holder, view.manager.epoch) == (manager.node, manager.epoch)
    settled = await cluster.wait_settled(20, voters=3)
    assert settled.node == leader.node and sorted(settled.in_step) == VOTERS


async def test_a_voter_that_does_not_answer_is_unreachable_not_an_error(voters, bus):
    # "ghost" has no responder at all; "mute" takes requests and never answers
    await bus.nc.subscribe(subjects.consensus_status("mute").name, cb=_ignore)
    cluster = Cluster(bus, [*VOTERS, "ghost", "mute"], ask=0.3)
    leader = await cluster.wait_leader(20)
    statuses = await cluster.statuses()
    assert statuses.unreachable == ["ghost", "mute"]
    assert (statuses.leader().node, statuses.leader().term) == (leader.node, leader.term)
    assert "ghost unreachable" in statuses.describe()


async def test_when_the_manager_stops_the_next_one_manages_at_a_higher_epoch(voters, bus):
    cluster = Cluster(bus, VOTERS)
    first = await cluster.wait_manager(20)
    await voters.stop(first.node)
    survivors = [n for n in VOTERS if n != first.node]
    second = await cluster.wait_manager(20, above_epoch=first.epoch)
    assert second.node in survivors and second.epoch > first.epoch
    # asking for that very node at that epoch or above returns at once
    same = await cluster.wait_manager(1, above_epoch=first.epoch, node=second.node)
    assert (same.node, same.epoch) == (second.node, second.epoch)
    leader = await cluster.wait_leader(20, among=survivors)
    assert leader.node == second.node
    assert (await cluster.statuses()).unreachable == [first.node]


async def test_a_wait_that_runs_out_says_what_it_last_saw(voters, bus):
    cluster = Cluster(bus, VOTERS)
    manager = await cluster.wait_manager(20)
    with pytest.raises(WaitTimeout) as timed_out:
        await cluster.wait_manager(0.5, above_epoch=manager.epoch + 100)
    message = str(timed_out.value)
    assert f"acting at an epoch above {manager.epoch + 100} within 0.5 s" in message
    assert f"{manager.node} leader term" in message and f"epoch {manager.epoch} acting" in message
    assert timed_out.value.last is not None and timed_out.value.last.manager() is not None
    silence = r"no Raft leader within 0\.3 s; last seen: nobody unreachable"
    with pytest.raises(TimeoutError, match=silence):
        await Cluster(bus, ["nobody"], ask=0.1).wait_leader(0.3)


async def test_services_are_discovered_with_their_nodes_and_strangers_ignored(voters, bus):
    async def stranger(msg) -> None:
        await msg.respond(json.dumps({"name": "not-colony", "metadata": {"node": "x"}}).encode())

    async def garbage(msg) -> None:
        await msg.respond(b"{")

    for answer in (stranger, garbage):
        await bus.nc.subscribe(subjects.service_info(), cb=answer)
    cluster = Cluster(bus)  # no voters given: those running consensus are asked
    await cluster.wait_leader(20)
    found = await cluster.services()
    assert [(s.service, s.node) for s in found] == [("consensus", n) for n in VOTERS]
    consensus = await cluster.services("consensus")
    assert consensus == found
    assert subjects.consensus_status("v1").name in consensus[0].endpoints
    assert await cluster.nodes() == VOTERS
    assert await cluster.services("monitor") == []


async def _ignore(msg) -> None:
    return None
