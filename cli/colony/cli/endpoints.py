"""`colony job endpoints`: where a job's healthy instances answer.

The acting manager's curator answers `subjects.endpoints()`; while no manager acts
(a failover), the last set it published is read from ENDPOINTS_STREAM instead, and
said to be possibly stale. `--watch` follows `endpoints_changed(job)`, which the
curator publishes whenever the set changes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from colony.shared import subjects
from colony.shared.bus import Bus, BusError, NoResponders, RemoteError
from colony.shared.messages import Endpoint, EndpointsReply, EndpointsRequest, to_builtins

ASK = 2.0
"""Seconds the manager may take to answer."""


class EndpointsError(Exception):
    """The set cannot be had: unknown job or port, or nobody answers and nothing is kept."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code
        """The manager's error code (404: no such job; 400: no such port); 0: not its."""


def endpoint_row(e: Endpoint, names: dict[str, str]) -> list[str]:
    """HOST:PORT INSTANCE NODE VERSION (the node by its name when known)."""
    where = f"{e.host}:{e.port}" if e.port else e.host
    return [where, e.instance, names.get(e.node, e.node), str(e.version)]


def endpoint_lines(reply: EndpointsReply, names: dict[str, str]) -> list[str]:
    """One line per endpoint, its columns aligned; a line saying so when there is none."""
    if not reply.endpoints:
        return [f"{reply.job}: no healthy endpoints"]
    rows = [endpoint_row(e, names) for e in reply.endpoints]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    return [
        "  ".join([*(r.ljust(w) for r, w in zip(row, widths, strict=False)), row[3]])
        for row in rows
    ]


def endpoints_json(reply: EndpointsReply, stale: bool) -> str:
    return json.dumps({**to_builtins(reply), "stale": stale})


async def current(bus: Bus, job: str, port: str) -> tuple[EndpointsReply, bool]:
    """The job's endpoint set and whether it may be stale (no manager answered: the last
    one published)."""
    request = EndpointsRequest(job=job, port=port)
    try:
        return await bus.request(subjects.endpoints(), request, timeout=ASK), False
    except RemoteError as e:  # unknown job (404), unknown port name (400)
        raise EndpointsError(e.description or str(e), e.code) from None
    except NoResponders:
        why = "no manager answers"
    except BusError as e:
        why = f"the manager did not answer ({e})"
    try:
        kept = await bus.last_message(subjects.ENDPOINTS_STREAM, subjects.endpoints_changed(job))
    except BusError as e:
        raise EndpointsError(f"{why}, and the last set published cannot be read: {e}") from None
    if kept is None:
        raise EndpointsError(f"{why}, and no manager has published endpoints of job {job!r}")
    if port and kept.port != port:
        raise EndpointsError(
            f"{why}, and the last set published is of port {kept.port!r}, not {port!r}"
        )
    return kept, True


async def changed(bus: Bus, job: str) -> AsyncIterator[EndpointsReply]:
    """Each new endpoint set of `job` as published (an older manager's ignored)."""
    subscription = await bus.subscribe(subjects.endpoints_changed(job))
    epoch = 0
    try:
        async for reply in subscription:
            if reply.job != job or reply.epoch < epoch:
                continue
            epoch = reply.epoch
            yield reply
    finally:
        await subscription.stop()
