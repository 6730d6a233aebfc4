"""The nodes kind: what each node offers the scheduler, and its status as the manager sees it.

Who writes what (issue #13): a node's agent registers what it offers
(NodeRegister: capacity, drivers, port range, address; observed, no epoch); the
manager records its status from membership (NodeStatus, with its epoch); an
operator makes it (in)eligible (NodeEligibility) or drains it (NodeDrain: ineligible,
`drain` "draining", a deadline; undrained: eligible again) and the manager records
when a draining node runs nothing any more (NodeDrained: "drained", with its epoch).
Each keeps the others' fields:
a node re-registering keeps its status and eligibility. A node the manager
records before its agent registered gets a record with its status alone
(`registered` 0: nothing may be placed on it yet).

Table `nodes`: one row per node, its `NodeRecord` as JSON, its status (the read's
filter) and a version that grows by one per change. Change kind `node` (id: the
node; detail: the whole record). Read: `query` (one node, or every node, by status).
Labels are the labels kind's (read both).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import aiosqlite
import msgspec

from colony.consensus import changelog
from colony.consensus.kinds import records
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.consensus.schema import Migration
from colony.shared.messages import (
    NodeDrain,
    NodeDrained,
    NodeEligibility,
    NodeRecord,
    NodeRegister,
    NodeStatus,
    Outcome,
    Stored,
)

TABLES = """
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY, status TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL
);
"""

FILTERS = {"status": "status"}


def read(db: sqlite3.Connection, node: str) -> tuple[NodeRecord | None, int]:
    """(record, version) of `node`; (None, 0) if it has none."""
    row = db.execute("SELECT record, version FROM nodes WHERE node = ?", (node,)).fetchone()
    return (records.decode(row[0], NodeRecord), row[1]) if row else (None, 0)


class _Registered(msgspec.Struct):
    """The one field of a NodeRecord `registered` reads (msgspec skips the others)."""

    registered: float = 0.0


def registered(db: sqlite3.Connection, nodes: Iterable[str]) -> set[str]:
    """Those of `nodes` whose agent has registered them (what they offer is known)."""
    rows = changelog.among(db, "SELECT node, record FROM nodes WHERE node IN ({ids})", nodes)
    return {node for node, record in rows if records.decode(record, _Registered).registered > 0}


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, `NodeRecord`s as dicts: of `select.id`, or of every node), from one
    state of the database."""
    return await records.query(reader, "nodes", "node", FILTERS, select)


def _write(txn: Txn, record: NodeRecord, version: int) -> Outcome:
    record = msgspec.structs.replace(record, changed=txn.ts)
    text = records.encode(record)  # once, for the row and the change
    txn.db.execute(
        "INSERT INTO nodes (node, status, version, record) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (node) DO UPDATE SET status = excluded.status, "
        "version = excluded.version, record = excluded.record",
        (record.node, record.status, version + 1, text),
    )
    txn.changed_all("node", [(record.node, version + 1, text)])
    return Outcome(ok=True, version=version + 1)


def register(txn: Txn, command: NodeRegister) -> Outcome:
    record, version = read(txn.db, command.node)
    if command.port_lo > command.port_hi:
        return Outcome(
            ok=False,
            version=version,
            error=f"node {command.node}: its port range {command.port_lo}-{command.port_hi} "
            "is empty (the first port is above the last)",
        )
    offered = {
        "name": command.name,
        "address": command.address,
        "cpu": command.cpu,
        "memory": command.memory,
        "drivers": list(command.drivers),
        "port_lo": command.port_lo,
        "port_hi": command.port_hi,
        "registered": txn.ts,
    }
    # status, reason and eligible are the manager's and the operator's: kept as they are
    base = record or NodeRecord(node=command.node)
    return _write(txn, msgspec.structs.replace(base, **offered), version)


def status(txn: Txn, command: NodeStatus) -> Outcome:
    record, version = read(txn.db, command.node)
    if record is not None and record.status == command.status:
        # the curator records what membership says at every reconcile: only news is a change
        return Outcome(ok=True, version=version)
    base = record or NodeRecord(node=command.node)
    return _write(
        txn, msgspec.structs.replace(base, status=command.status, reason=command.reason), version
    )


def _unknown(node: str) -> Outcome:
    return Outcome(
        ok=False,
        error=f"no node {node} is known: its agent has not registered it "
        "and the manager has not recorded it (`colony status` lists the nodes)",
    )


def eligibility(txn: Txn, command: NodeEligibility) -> Outcome:
    record, version = read(txn.db, command.node)
    if record is None:
        return _unknown(command.node)
    if record.eligible == command.eligible:
        return Outcome(ok=True, version=version)
    changed = msgspec.structs.replace(record, eligible=command.eligible, reason=command.reason)
    return _write(txn, changed, version)


def drain(txn: Txn, command: NodeDrain) -> Outcome:
    """Drain (a drained node drained again stays drained: it is empty and ineligible) or
    undrain; the deadline counts from the entry's time."""
    record, version = read(txn.db, command.node)
    if record is None:
        return _unknown(command.node)
    if command.drain:
        changed = msgspec.structs.replace(
            record,
            drain=record.drain or "draining",
            eligible=False,
            drain_deadline=txn.ts + command.deadline if command.deadline else 0.0,
            drain_reason=command.reason,
        )
    else:
        changed = msgspec.structs.replace(
            record, drain="", eligible=True, drain_deadline=0.0, drain_reason=""
        )
    if changed == record:
        return Outcome(ok=True, value=record.drain or "undrained", version=version)
    return msgspec.structs.replace(
        _write(txn, changed, version), value=changed.drain or "undrained"
    )


def drained(txn: Txn, command: NodeDrained) -> Outcome:
    """A draining node runs nothing any more; ignored if it was undrained meanwhile."""
    record, version = read(txn.db, command.node)
    if record is None:
        return _unknown(command.node)
    if record.drain != "draining":
        return Outcome(ok=True, value=record.drain or "ignored", version=version)
    return msgspec.structs.replace(
        _write(txn, msgspec.structs.replace(record, drain="drained"), version), value="drained"
    )


def _node(
    command: NodeRegister | NodeStatus | NodeEligibility | NodeDrain | NodeDrained,
) -> tuple[str]:
    return (command.node,)


KIND = Kind(
    name="nodes",
    tables=TABLES,
    changes=("node",),
    commands=(
        Handles(NodeRegister, register, ids=_node),
        Handles(NodeStatus, status, ids=_node, needs_epoch=True),
        Handles(NodeEligibility, eligibility, ids=_node),
        Handles(NodeDrain, drain, ids=_node),
        Handles(NodeDrained, drained, ids=_node, needs_epoch=True),
    ),
    migrations=(Migration(6, "nodes: what each offers, its status and eligibility", TABLES),),
    query=query,
    filters=tuple(FILTERS),
)
