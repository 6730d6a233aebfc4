"""The instances kind: which instance of which job version runs on which node, and what
it is doing.

Who writes what (issue #13): desired state only the manager, with its epoch
(InstancesPlace, InstancesStop, InstancesRemove); observed state only the node
the instance is placed on (InstancesReport, no epoch).

- InstancesPlace: all of its placements, or none (refused, naming the first bad
  one): each needs a job version that exists, a node whose agent registered it,
  and an id not taken. Desired `run`, state `pending`.
- InstancesStop: desired `stop` (ids already gone are skipped: nothing to stop).
- InstancesRemove: forgets instances desired `stop` (all or none; ids already
  gone are skipped); a purged job whose last instance goes is forgotten with it.
- InstancesReport: each report on its own. An unknown id is skipped (the
  instance was removed); a report about an instance placed on another node is
  refused (named in the outcome's `error`: that node must stop its copy) while
  the others apply; a report applies only if its `seq` is newer than the last
  recorded (reports are re-sent until recorded, and may arrive late).

Table `instances`: one row per instance, its `InstanceRecord` as JSON, its job and
node (the read's filters) and a version that grows by one per change. Change kind
`instance` (id: the instance; detail: the whole record, also when it is removed,
version 0: an agent follows the changes whose detail names its node). Read:
`query` (one instance, or every one, by node or job).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable

import aiosqlite
import msgspec

from colony.consensus.kinds import jobs, nodes, records
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.consensus.schema import Migration
from colony.shared.messages import (
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesReport,
    InstancesStop,
    Outcome,
    Stored,
    placed_instance,
)

TABLES = """
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, node TEXT NOT NULL, version INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_by_node ON instances (node, id);
CREATE INDEX IF NOT EXISTS instances_by_job ON instances (job, id);
"""

FILTERS = {"node": "node", "job": "job"}
PAGE = 1000
NAMED = 10
"""Refused reports one outcome names at most (the rest are counted)."""


def read(db: sqlite3.Connection, id: str) -> tuple[InstanceRecord | None, int]:
    """(record, version) of instance `id`; (None, 0) if there is none."""
    row = db.execute("SELECT record, version FROM instances WHERE id = ?", (id,)).fetchone()
    return (records.decode(row[0], InstanceRecord), row[1]) if row else (None, 0)


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, `InstanceRecord`s as dicts: of `select.id`, or of every instance,
    by node or job), from one state of the database."""
    return await records.query(reader, "instances", "id", FILTERS, select)


def _write(txn: Txn, record: InstanceRecord, version: int) -> None:
    record = msgspec.structs.replace(record, changed=txn.ts)
    txn.db.execute(
        "INSERT INTO instances (id, job, node, version, record) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, record = excluded.record",
        (record.id, record.job, record.node, version + 1, records.encode(record)),
    )
    txn.changed("instance", record.id, version + 1, records.detail(record))


def place(txn: Txn, command: InstancesPlace) -> Outcome:
    known_versions: set[tuple[str, int]] = set()
    known_nodes: set[str] = set()
    ids: set[str] = set()
    for p in command.placements:
        what = f"instance {p.id} (job {p.job} version {p.version}, slot {p.slot}) on node {p.node}"
        if p.id in ids or read(txn.db, p.id)[0] is not None:
            return Outcome(ok=False, error=f"{what}: an instance {p.id} exists already")
        ids.add(p.id)
        if (p.job, p.version) not in known_versions:
            if not jobs.has_version(txn.db, p.job, p.version):
                return Outcome(ok=False, error=f"{what}: job {p.job} has no version {p.version}")
            known_versions.add((p.job, p.version))
        if p.node not in known_nodes:
            if not nodes.registered(txn.db, p.node):
                return Outcome(
                    ok=False, error=f"{what}: node {p.node} is not registered (no agent said "
                    "what it offers)"
                )  # fmt: skip
            known_nodes.add(p.node)
    for p in command.placements:
        _write(txn, placed_instance(p, txn.ts), 0)
    for job, count in Counter(p.job for p in command.placements).items():
        jobs.counted(txn, job, count)
    return Outcome(ok=True, value=f"{len(command.placements)} placed")


def stop(txn: Txn, command: InstancesStop) -> Outcome:
    stopped = 0
    for id in dict.fromkeys(command.ids):
        record, version = read(txn.db, id)
        if record is None or record.desired == "stop":
            continue  # removed already, or stopped already: nothing changes
        wanted = msgspec.structs.replace(record, desired="stop", desired_reason=command.reason)
        _write(txn, wanted, version)
        stopped += 1
    return Outcome(ok=True, value=f"{stopped} stopped")


def remove(txn: Txn, command: InstancesRemove) -> Outcome:
    found = [(read(txn.db, id), id) for id in dict.fromkeys(command.ids)]
    for (record, _version), id in found:
        if record is not None and record.desired != "stop":
            return Outcome(
                ok=False,
                error=f"instance {id} (job {record.job}, node {record.node}) is desired to run: "
                "stop it before removing it",
            )
    removed = [record for (record, _version), _id in found if record is not None]
    for record in removed:
        txn.db.execute("DELETE FROM instances WHERE id = ?", (record.id,))
        txn.changed("instance", record.id, 0, records.detail(record))
    for job, count in Counter(record.job for record in removed).items():
        jobs.counted(txn, job, -count)  # a purged job whose last instance went is forgotten
    return Outcome(ok=True, value=f"{len(removed)} removed")


def report(txn: Txn, command: InstancesReport) -> Outcome:
    applied, refused = 0, []
    for r in command.reports:
        record, version = read(txn.db, r.id)
        if record is None:
            continue  # removed since: its node stops it when it hears
        if record.node != command.node:
            refused.append(f"instance {r.id} is placed on node {record.node}, not {command.node}")
            continue
        if r.seq <= record.seq:
            continue  # a re-sent or late report: what is recorded is newer
        observed = msgspec.structs.replace(
            record,
            state=r.state,
            exit_code=r.exit_code,
            reason=r.reason,
            restarts=r.restarts,
            pid=r.pid,
            started_at=r.started_at,
            finished_at=r.finished_at,
            seq=r.seq,
        )
        _write(txn, observed, version)
        applied += 1
    # ok: what could apply did; error names what only another node may report
    named = refused[:NAMED] + ([f"{len(refused) - NAMED} more"] if len(refused) > NAMED else [])
    return Outcome(ok=True, value=f"{applied} recorded", error="; ".join(named))


def _placed(command: InstancesPlace) -> Iterable[str]:
    return [p.id for p in command.placements]


def _ids(command: InstancesStop | InstancesRemove) -> Iterable[str]:
    return command.ids


KIND = Kind(
    name="instances",
    tables=TABLES,
    changes=("instance",),
    commands=(
        Handles(InstancesPlace, place, ids=_placed, needs_epoch=True),
        Handles(InstancesStop, stop, ids=_ids, needs_epoch=True),
        Handles(InstancesRemove, remove, ids=_ids, needs_epoch=True),
        Handles(InstancesReport, report, ids=lambda c: [r.id for r in c.reports]),
    ),
    migrations=(Migration(8, "instances: placed by the manager, reported by their nodes", TABLES),),
    query=query,
    filters=tuple(FILTERS),
    page=PAGE,
)
