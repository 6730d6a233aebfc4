"""Node labels through three real voters: set through one, read back from every other, on the
change stream as kind `label`; invalid labels refused before anything is proposed."""

from __future__ import annotations

import pytest
from _voters import running

from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import BusError, RemoteError
from colony.shared.cluster import Cluster
from colony.shared.management import Management, ManagementError
from colony.shared.messages import Change, NodeLabel, QueryRequest, decode

VOTERS = ["v1", "v2", "v3"]


@pytest.fixture
async def voters(nats_server, tmp_path):
    async with running(nats_server, tmp_path, VOTERS) as group:
        yield group


async def labels_via(bus, voter: str, node: str = "") -> dict[str, dict]:
    request = QueryRequest(key=node, kind="labels")
    reply = await bus.request(subjects.query(voter), request, timeout=6)
    return {stored.id: (stored.version, stored.value) for stored in reply.objects}


async def label_changes(bus) -> list[Change]:
    try:
        last = (await bus.stream_state(subjects.CHANGES_STREAM)).last_seq
        stored = [await bus.stored(subjects.CHANGES_STREAM, s) for s in range(1, last + 1)]
    except BusError:  # no stream yet, or it cannot answer for a moment
        return []
    changes = [decode(s.data, Change) for s in stored if s is not None]
    return [c for c in changes if c.kind == "label"]


async def test_labels_set_through_one_voter_are_read_from_every_other_and_relayed(voters, bus):
    leader = (await Cluster(bus, VOTERS).wait_leader(20)).node
    follower = next(n for n in VOTERS if n != leader)
    client = Management(bus, [follower])
    reply = await client.propose(NodeLabel("node-a", {"disk": "ssd", "example.com/zone": "eu-1"}))
    assert reply.outcomes[0].ok and reply.outcomes[0].version == 1
    reply = await client.propose(NodeLabel("node-a", {"disk": None, "gpu": ""}))
    assert reply.outcomes[0].version == 2
    await client.propose(NodeLabel("node-b", {"disk": "hdd"}))

    for voter in VOTERS:
        assert await labels_via(bus, voter) == {
            "node-a": (2, {"example.com/zone": "eu-1", "gpu": ""}),
            "node-b": (1, {"disk": "hdd"}),
        }
    assert await labels_via(bus, leader, "node-b") == {"node-b": (1, {"disk": "hdd"})}
    assert await labels_via(bus, leader, "never-labelled") == {}

    changes = await poll(lambda: _at_least(bus, 3), 10, "3 label changes on the stream")
    assert [(c.id, c.version, c.detail) for c in changes] == [
        ("node-a", 1, {"labels": {"disk": "ssd", "example.com/zone": "eu-1"}}),
        ("node-a", 2, {"labels": {"example.com/zone": "eu-1", "gpu": ""}}),
        ("node-b", 1, {"labels": {"disk": "hdd"}}),
    ]


async def _at_least(bus, count: int) -> list[Change] | None:
    changes = await label_changes(bus)
    return changes if len(changes) >= count else None


async def test_invalid_labels_and_unknown_kinds_are_refused(voters, bus):
    await Cluster(bus, VOTERS).wait_leader(20)
    client = Management(bus, VOTERS)
    for labels in ({"Bad Key": "x"}, {"k": "-starts-with-dash"}, {"k": "x" * 64}, {}):
        with pytest.raises(ManagementError, match="invalid ProposeRequest"):
            await client.propose(NodeLabel("node-a", labels))
    too_many = {f"k{i}": "v" for i in range(40)}
    await client.propose(NodeLabel("node-a", too_many))
    more = {f"m{i}": "v" for i in range(40)}
    [refused] = (await client.propose(NodeLabel("node-a", more))).outcomes
    assert not refused.ok and "at most 64" in refused.error
    assert (await labels_via(bus, "v1"))["node-a"] == (1, too_many)
    with pytest.raises(RemoteError, match="no kind 'gadgets' to read"):
        await bus.request(subjects.query("v1"), QueryRequest(key="", kind="gadgets"), timeout=6)
