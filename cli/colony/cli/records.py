"""Reading the management database's nodes, jobs and instances for the CLI's verbs.

A kind's query answers one page at a time (`QueryReply.more`); `all_of` walks the
pages. The records come back as the library's types (`NodeRecord`, `JobRecord`,
`InstanceRecord`), so the verbs never handle raw dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import msgspec

from colony.shared.management import Management
from colony.shared.messages import (
    InstanceRecord,
    JobRecord,
    NodeRecord,
    QueryRequest,
    Resources,
    Stored,
)

R = TypeVar("R")

NODES, JOBS, INSTANCES = "nodes", "jobs", "instances"
"""The kinds' names in the management database."""
ENDED = frozenset({"exited", "failed", "lost"})
"""Instance states after which an instance no longer runs (it may still be restarted)."""


async def all_of(
    client: Management, kind: str, where: dict[str, str] | None = None, *, stale: bool = False
) -> list[Stored]:
    """Every object of `kind` (with these field values), page after page, in id order."""
    found: list[Stored] = []
    after = ""
    while True:
        request = QueryRequest(key="", kind=kind, where=where or {}, after=after, stale=stale)
        reply = await client.query(request)
        found.extend(reply.objects)
        if not reply.more or not reply.objects:
            return found
        after = reply.objects[-1].id


async def one_of(client: Management, kind: str, id: str, *, stale: bool = False) -> Stored | None:
    """Object `id` of `kind`, or None if there is none."""
    reply = await client.query(QueryRequest(key=id, kind=kind, stale=stale))
    return next((o for o in reply.objects if o.id == id), None)


def as_records(objects: Iterable[Stored], type: type[R]) -> list[R]:
    return [msgspec.convert(o.value, type) for o in objects]


async def nodes(client: Management, *, stale: bool = False) -> list[NodeRecord]:
    return as_records(await all_of(client, NODES, stale=stale), NodeRecord)


async def jobs(client: Management, *, stale: bool = False) -> list[JobRecord]:
    return as_records(await all_of(client, JOBS, stale=stale), JobRecord)


async def instances(
    client: Management, job: str = "", *, stale: bool = False
) -> list[InstanceRecord]:
    """Every instance (of `job`, if given)."""
    where = {"job": job} if job else None
    return as_records(await all_of(client, INSTANCES, where, stale=stale), InstanceRecord)


def reservations(instances: Iterable[InstanceRecord]) -> dict[str, Resources]:
    """Cpu and memory reserved per node id: what its instances asked for, while they are
    desired to run or have not ended yet (the scheduler counts the same)."""
    held: dict[str, Resources] = {}
    for i in instances:
        if i.desired == "run" or i.state not in ENDED:
            was = held.get(i.node, Resources())
            held[i.node] = Resources(cpu=was.cpu + i.cpu, memory=was.memory + i.memory)
    return held
