"""A real (in-process) voter holding what the console's action tests act on: node
node-1, job web at versions 1 (sleep) and 2 (true), one instance of web placed on the
node; and reads of the records the actions change."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import msgspec
from _voters import running

from colony.cli import records
from colony.shared.bus import Bus
from colony.shared.cluster import Cluster
from colony.shared.jobspec import JobSpec, Task
from colony.shared.management import Management
from colony.shared.messages import (
    InstancesPlace,
    JobRecord,
    JobRun,
    NodeRecord,
    NodeRegister,
    Placement,
)

VOTER = "v1"
NODE = "n1-aaaa"
INSTANCE = "web-0-aaaa"


@contextlib.asynccontextmanager
async def console_cluster(nats_server, tmp_path, bus: Bus) -> AsyncIterator[Management]:
    """The voter running, holding the node, the job and its instance: its client."""
    async with running(nats_server, tmp_path, [VOTER]):
        manager = await Cluster(bus, [VOTER]).wait_manager(20)
        client = Management(bus, [VOTER], timeout=5.0)
        register = NodeRegister(
            node=NODE, name="node-1", address="127.0.0.1", cpu=2.0, memory=2**30,
            drivers=["process"], port_lo=21000, port_hi=21099,
        )  # fmt: skip
        await client.propose(register, run("sleep"), run("true"))
        place = Placement(
            id=INSTANCE, job="web", version=2, slot=0, node=NODE, cpu=0.1, memory=2**26
        )
        [placed] = (await client.propose(InstancesPlace([place]), epoch=manager.epoch)).outcomes
        assert placed.ok, placed.error
        yield client


def run(command: str) -> JobRun:
    return JobRun(spec=JobSpec(name="web", task=Task(command=command), replicas=1))


async def job(client: Management, name: str = "web") -> JobRecord | None:
    found = await records.one_of(client, records.JOBS, name)
    return msgspec.convert(found.value, JobRecord) if found else None


async def node(client: Management) -> NodeRecord:
    found = await records.one_of(client, records.NODES, NODE)
    assert found is not None
    return msgspec.convert(found.value, NodeRecord)
