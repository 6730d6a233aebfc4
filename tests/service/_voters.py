"""Consensus services as in-process voters against a real nats-server, and a membership
view the test controls: what the consensus and voter-keeping tests share."""

from __future__ import annotations

import asyncio
import contextlib
import time

from colony.consensus.raft import Timers
from colony.consensus.service import ConsensusService
from colony.shared import runner, subjects
from colony.shared.cluster import Cluster
from colony.shared.config import ConsensusSettings
from colony.shared.messages import (
    MembersReply,
    MemberView,
    NodeMeta,
    Resources,
    encode,
)


class Voters:
    """Voters running in this process, each stoppable on its own."""

    def __init__(
        self, nats_server, tmp_path, voters: list[str], timers: Timers | None = None, **settings
    ) -> None:
        self.server = nats_server
        self.settings = settings
        """Further ConsensusSettings for every voter."""
        self.voters = voters
        self.timers = timers
        self.secret = tmp_path / "secret"
        self.secret.write_text("a-cluster-secret-for-tests")
        self.stops: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[int]] = {}

    def start(self, node: str) -> None:
        config = self.server.node_config(node)
        config.consensus = ConsensusSettings(
            voters=self.voters,
            secret_file=str(self.secret),
            change_stream_replicas=1,
            **self.settings,
        )
        self.stops[node] = asyncio.Event()
        self.tasks[node] = asyncio.create_task(
            runner.run(ConsensusService(self.timers), config, stop=self.stops[node])
        )

    async def stop(self, node: str) -> None:
        self.stops[node].set()
        assert await asyncio.wait_for(self.tasks.pop(node), runner.SHUTDOWN_GRACE) == 0

    async def stop_all(self) -> None:
        for node in list(self.tasks):
            await self.stop(node)


@contextlib.asynccontextmanager
async def running(nats_server, tmp_path, voters: list[str]):
    """`voters` all started, and all stopped again at the end."""
    group = Voters(nats_server, tmp_path, voters)
    for node in voters:
        group.start(node)
    try:
        yield group
    finally:
        await group.stop_all()


class Membership:
    """Every node's membership view, the same one: status and free cpu, as the test sets
    them (it answers `members` for any node)."""

    def __init__(self, nodes: list[str]) -> None:
        self.status = dict.fromkeys(nodes, "alive")
        self.changed = dict.fromkeys(nodes, time.monotonic() - 60)
        self.cpu = dict.fromkeys(nodes, 1.0)

    def set(self, node: str, status: str) -> None:
        self.status[node], self.changed[node] = status, time.monotonic()

    async def serve(self, bus) -> None:
        async def answer(msg) -> None:
            now = time.monotonic()
            members = [
                MemberView(
                    n, s, 1, NodeMeta(free=Resources(cpu=self.cpu[n], memory=2**30)),
                    round(now - self.changed[n], 3),
                )
                for n, s in self.status.items()
            ]  # fmt: skip
            observer = msg.subject.rsplit(".", 1)[1]  # the node asked: its own view
            await msg.respond(encode(MembersReply(observer=observer, members=members)))

        any_node = subjects.members("any").name.rsplit(".", 1)[0] + ".*"
        await bus.nc.subscribe(any_node, cb=answer)


async def status(bus, node: str):
    """`node`'s consensus status, or None if it does not answer within a second."""
    return await Cluster(bus).status(node)


async def settled(bus, voters: list[str], count: int):
    """The leader once it has `count` voters, all connected, caught up and following it."""
    return (await Cluster(bus, voters).statuses()).settled(count)
