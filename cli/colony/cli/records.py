"""Reading the management database's nodes, jobs and instances for the CLI's verbs.

The records come back as the library's types (`NodeRecord`, `JobRecord`,
`InstanceRecord`), every page of them (`Management.query_all`), so the verbs never
handle raw dicts or pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import msgspec

from colony.shared.management import Management
from colony.shared.messages import InstanceRecord, JobRecord, NodeRecord, QueryRequest, Stored

R = TypeVar("R")

NODES, JOBS, INSTANCES = "nodes", "jobs", "instances"
"""The kinds' names in the management database."""


async def one_of(client: Management, kind: str, id: str, *, stale: bool = False) -> Stored | None:
    """Object `id` of `kind`, or None if there is none."""
    reply = await client.query(QueryRequest(key=id, kind=kind, stale=stale))
    return next((o for o in reply.objects if o.id == id), None)


def as_records(objects: Iterable[Stored], type: type[R]) -> list[R]:
    return [msgspec.convert(o.value, type) for o in objects]


async def nodes(client: Management, *, stale: bool = False) -> list[NodeRecord]:
    return as_records((await client.query_all(NODES, stale=stale)).objects, NodeRecord)


async def jobs(client: Management, *, stale: bool = False) -> list[JobRecord]:
    return as_records((await client.query_all(JOBS, stale=stale)).objects, JobRecord)


async def instances(
    client: Management, job: str = "", *, stale: bool = False
) -> list[InstanceRecord]:
    """Every instance (of `job`, if given)."""
    where = {"job": job} if job else None
    listing = await client.query_all(INSTANCES, where, stale=stale)
    return as_records(listing.objects, InstanceRecord)
