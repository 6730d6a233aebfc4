"""The console's ClusterActions against a real nats-server and a real (in-process) voter:
each action sends the command the CLI sends and says what it did; each failure is an
ActionError that says what was not done and why. An instance's output comes from a
stand-in agent answering on the node's subject."""

from __future__ import annotations

import pytest
from _console_cluster import NODE, console_cluster, job, node

from colony.console.actions import ActionError, ClusterActions, LogChunk
from colony.shared import subjects
from colony.shared.management import Management
from colony.shared.messages import (
    LogsReply,
    LogsRequest,
    QueryReply,
    QueryRequest,
    Stored,
    decode,
    encode,
)


@pytest.fixture
async def cluster(nats_server, tmp_path, bus):
    """The voter (see _console_cluster) and the actions."""
    async with console_cluster(nats_server, tmp_path, bus) as client:
        yield client, ClusterActions(client)


async def test_scale_stop_and_their_failures(cluster):
    client, actions = cluster
    assert await actions.scale("web", 4) == "web: scaled to 4"
    assert (await job(client)).replicas == 4
    with pytest.raises(ActionError, match=r"^api not scaled: .*api"):
        await actions.scale("api", 2)
    said = await actions.stop("web")
    assert said == "web: stopped: its instances stop now"
    assert (await job(client)).status == "stopped"


async def test_versions_rollback_and_a_promote_with_nothing_to_promote(cluster):
    client, actions = cluster
    versions = await actions.versions("web")
    assert [v.version for v in versions] == [2, 1]
    said = await actions.rollback("web", 1)
    assert said == "web: rolled back: version 3 runs version 1's spec"
    rolled = await job(client)
    assert (rolled.version, rolled.spec.task.command) == (3, "sleep")
    [newest, *_] = await actions.versions("web")
    assert "colony console rollback web 1" in newest.cause  # who asked, in its history
    with pytest.raises(ActionError, match=r"^web not promoted: "):
        await actions.promote("web")
    with pytest.raises(ActionError, match=r"^cannot read the versions of nothing: .*no job"):
        await actions.versions("nothing")


async def test_drain_and_undrain_a_node(cluster):
    client, actions = cluster
    # said by the node's name, as people know it (and as its drain's reason says it)
    assert await actions.drain(NODE, deadline=60) == "node-1: draining (its instances move away)"
    drained = await node(client)
    assert drained.drain in ("draining", "drained") and not drained.eligible
    assert "colony console drain node-1" in drained.drain_reason
    assert await actions.undrain(NODE) == "node-1: eligible again"
    back = await node(client)
    assert (back.drain, back.eligible) == ("", True)
    with pytest.raises(ActionError, match=r"^node nowhere not drained: "):
        await actions.drain("nowhere")


async def test_logs_are_read_from_the_instance_node(cluster, bus):
    _, actions = cluster
    with pytest.raises(ActionError, match=f"node {NODE}, which runs web-0-aaaa, does not answer"):
        await actions.logs("web-0-aaaa")
    output = b"hello\nworld\n"
    asked: list[LogsRequest] = []

    async def agent(msg) -> None:
        request = decode(msg.data, LogsRequest)
        asked.append(request)
        data = output[request.offset :].decode()
        reply = LogsReply(
            instance=request.instance, data=data, offset=request.offset, next=len(output),
            running=True,
        )  # fmt: skip
        await msg.respond(encode(reply))

    await bus.nc.subscribe(subjects.agent_logs(NODE).name, cb=agent)
    assert await actions.logs("web-0-aaaa") == LogChunk("hello\nworld\n", 12, True)
    assert await actions.logs("web-0-aaaa", "stderr", offset=6) == LogChunk("world\n", 12, True)
    assert [(r.stream, r.offset) for r in asked] == [("stdout", 0), ("stderr", 6)]
    with pytest.raises(ActionError, match="no instance web-9-zzzz"):
        await actions.logs("web-9-zzzz")


async def test_no_voter_answering_is_said_plainly(bus):
    actions = ClusterActions(Management(bus, ["gone"], timeout=0.3))
    with pytest.raises(ActionError) as failed:
        await actions.scale("web", 2)
    said = str(failed.value)
    assert said.startswith("web not scaled: no voter could answer")
    assert said.endswith("(is a majority of the voters up?)")


async def test_an_answer_it_cannot_read_is_an_action_error_too(bus):
    # a stand-in voter whose records are of a shape this console cannot read
    async def voter(msg) -> None:
        request = decode(msg.data, QueryRequest)
        odd = Stored(id=request.key, version=1, value={"shape": "unknown"})
        await msg.respond(
            encode(QueryReply(key=request.key, value=None, version=1, index=1, objects=[odd]))
        )

    await bus.nc.subscribe(subjects.query("odd").name, cb=voter)
    actions = ClusterActions(Management(bus, ["odd"], timeout=0.3))
    with pytest.raises(ActionError, match=r"^cannot find instance web-0-aaaa: .*unreadable here"):
        await actions.logs("web-0-aaaa")
    # its name unreadable, the node is said by its id; nobody takes the proposal
    with pytest.raises(ActionError, match=r"^node n1 not drained: no voter could answer"):
        await actions.drain("n1")
