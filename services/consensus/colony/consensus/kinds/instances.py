"""The instances kind: which instance of which job version runs on which node, and what
it is doing.

Who writes what (issues #13, #14): desired state only the manager, with its epoch
(InstancesPlace, InstancesStop, InstancesRemove); observed state only the node
the instance is placed on (InstancesReport from its agent, InstancesHealth from its
monitor; no epoch).

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
  recorded (reports are re-sent until recorded, and may arrive late). So applying
  one twice changes nothing: it keeps no idempotency record (a retry gets the
  outcome of applying it again), and consecutive reports in one log entry are
  applied together (`report_all`: one read and one write for all of them). A
  report that records a run other than the one its health is about, or a state
  other than running, clears the health ('' , healthy_since 0).
- InstancesHealth: health transitions from the node's monitor, applied as reports
  are (only from the instance's node, each on its own, a newer `seq` only, no
  idempotency record, runs of them together), and only about the recorded run or a
  newer one (a newer run's health waits in the record for its start to be
  recorded; an older or ended run's is dropped). `healthy_since` is the entry's
  time when it turns healthy, kept while it stays healthy, 0 otherwise.

Apply cost: one read for all the instances a command (or a run of reports) names,
one `executemany` for their rows, and each record encoded once, for its row and its
change's detail.

Table `instances`: one row per instance, its `InstanceRecord` as JSON, its job and
node (the read's filters) and a version that grows by one per change. Change kind
`instance` (id: the instance; detail: the whole record, also when it is removed,
version 0: an agent follows the changes whose detail names its node). Read:
`query` (one instance, or every one, by node or job).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import aiosqlite
import msgspec

from colony.consensus import changelog
from colony.consensus.kinds import jobs, nodes, records
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.consensus.schema import Migration
from colony.shared.messages import (
    HealthReport,
    InstanceRecord,
    InstanceReport,
    InstancesHealth,
    InstancesPlace,
    InstancesRemove,
    InstancesReport,
    InstancesStop,
    Outcome,
    Placement,
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
    return read_all(db, [id]).get(id, (None, 0))


def read_all(db: sqlite3.Connection, ids: Iterable[str]) -> dict[str, tuple[InstanceRecord, int]]:
    """(record, version) of each of the instances `ids` that exists, by id."""
    rows = changelog.among(db, "SELECT id, record, version FROM instances WHERE id IN ({ids})", ids)
    return {id: (records.decode(record, InstanceRecord), version) for id, record, version in rows}


def _existing(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Those of the instances `ids` that exist (their ids' index alone is read)."""
    rows = changelog.among(db, "SELECT id FROM instances WHERE id IN ({ids})", ids)
    return {id for (id,) in rows}


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, `InstanceRecord`s as dicts: of `select.id`, or of every instance,
    by node or job), from one state of the database."""
    return await records.query(reader, "instances", "id", FILTERS, select)


def _write(
    db: sqlite3.Connection, written: list[tuple[Txn, InstanceRecord, int]], placed: bool = False
) -> None:
    """Store each record (stamped `changed` at its entry's time; its row was at the version
    given, 0 when it is `placed`) and record its change as its proposal's (`txn`), in
    order: each record encoded once, for its row and its change's detail."""
    rows, changes = [], []
    for txn, record, version in written:
        text = records.encode(record)
        rows.append(
            (version + 1, text, record.id, record.job, record.node)
            if placed
            else (version + 1, text, record.id)
        )
        if not changes or changes[-1][0] is not txn:
            changes.append((txn, []))
        changes[-1][1].append((record.id, version + 1, text))
    if placed:
        db.executemany(
            "INSERT INTO instances (version, record, id, job, node) VALUES (?, ?, ?, ?, ?)", rows
        )
    else:  # each row exists (its record was read in this proposal): its job and node stay
        db.executemany("UPDATE instances SET version = ?, record = ? WHERE id = ?", rows)
    for txn, theirs in changes:
        txn.changed_all("instance", theirs)


def place(txn: Txn, command: InstancesPlace) -> Outcome:
    placements = command.placements
    taken = _existing(txn.db, [p.id for p in placements])  # one read for all of them
    offered = nodes.registered(txn.db, {p.node for p in placements})
    known_versions: set[tuple[str, int]] = set()
    for p in placements:
        if p.id in taken:
            return _not_placed(p, f"an instance {p.id} exists already")
        taken.add(p.id)
        if (p.job, p.version) not in known_versions:
            if not jobs.has_version(txn.db, p.job, p.version):
                return _not_placed(p, f"job {p.job} has no version {p.version}")
            known_versions.add((p.job, p.version))
        if p.node not in offered:
            return _not_placed(p, f"node {p.node} is not registered (no agent said what it offers)")
    _write(txn.db, [(txn, placed_instance(p, txn.ts), 0) for p in placements], placed=True)
    for job, count in Counter(p.job for p in placements).items():
        jobs.counted(txn, job, count)
    return Outcome(ok=True, value=f"{len(placements)} placed")


def _not_placed(p: Placement, why: str) -> Outcome:
    where = f"instance {p.id} (job {p.job} version {p.version}, slot {p.slot}) on node {p.node}"
    return Outcome(ok=False, error=f"{where}: {why}")


def _stopped(record: InstanceRecord, reason: str, ts: float) -> InstanceRecord:
    return msgspec.structs.replace(record, desired="stop", desired_reason=reason, changed=ts)


def stop(txn: Txn, command: InstancesStop) -> Outcome:
    found = read_all(txn.db, command.ids)
    stopping = [
        (txn, _stopped(record, command.reason, txn.ts), version)
        for record, version in (found[id] for id in dict.fromkeys(command.ids) if id in found)
        if record.desired != "stop"  # else stopped already: nothing changes
    ]  # an id not found was removed already: nothing to stop
    _write(txn.db, stopping)
    return Outcome(ok=True, value=f"{len(stopping)} stopped")


def remove(txn: Txn, command: InstancesRemove) -> Outcome:
    found = read_all(txn.db, command.ids)
    removed = [found[id][0] for id in dict.fromkeys(command.ids) if id in found]
    for record in removed:
        if record.desired != "stop":
            return Outcome(
                ok=False,
                error=f"instance {record.id} (job {record.job}, node {record.node}) is desired "
                "to run: stop it before removing it",
            )
    txn.db.executemany("DELETE FROM instances WHERE id = ?", [(r.id,) for r in removed])
    txn.changed_all("instance", [(r.id, 0, records.encode(r)) for r in removed])
    for job, count in Counter(record.job for record in removed).items():
        jobs.counted(txn, job, -count)  # a purged job whose last instance went is forgotten
    return Outcome(ok=True, value=f"{len(removed)} removed")


LIVE = ("starting", "running")
"""The states of a run that has not ended."""


def report(txn: Txn, command: InstancesReport) -> Outcome:
    return report_all([(txn, command)])[0]


def _reported(record: InstanceRecord, r: InstanceReport, ts: float) -> InstanceRecord | None:
    """`record` as report `r` says, at entry time `ts`; None if what is recorded is newer.
    Health stays unless the report is about a newer run than it, or says its run ended
    (the monitor may judge a run before the agent's reports of it commit)."""
    if r.seq <= record.seq:
        return None  # a re-sent or late report: what is recorded is newer
    alive = r.state in LIVE
    stays = record.health_run > r.started_at or (record.health_run == r.started_at and alive)
    health = record.health if stays else ""
    return msgspec.structs.replace(
        record,
        state=r.state,
        exit_code=r.exit_code,
        reason=r.reason,
        restarts=r.restarts,
        pid=r.pid,
        started_at=r.started_at,
        finished_at=r.finished_at,
        seq=r.seq,
        health=health,
        healthy_since=record.healthy_since if health == "healthy" else 0.0,
        changed=ts,
    )


def report_all(reports: list[tuple[Txn, InstancesReport]]) -> list[Outcome]:
    """Apply consecutive InstancesReport proposals: one read and one write for all."""
    return _observe(reports, _reported)


def _health(record: InstanceRecord, r: HealthReport, ts: float) -> InstanceRecord | None:
    """`record` with health report `r`, at entry time `ts`; None if it is older than what
    is recorded, or about a run older than the recorded one or recorded as ended."""
    if r.seq <= record.health_seq or r.run < record.started_at:
        return None
    if r.run == record.started_at and record.state not in LIVE:
        return None  # that run ended (an InstancesReport said so, clearing its health)
    if r.health != "healthy":
        since = 0.0
    elif record.health == "healthy" and record.health_run == r.run and record.healthy_since:
        since = record.healthy_since  # healthy still: since when it turned healthy
    else:
        since = ts
    return msgspec.structs.replace(
        record,
        health=r.health,
        health_output=r.output,
        health_check=r.check,
        health_at=r.at,
        health_run=r.run,
        health_seq=r.seq,
        healthy_since=since,
        changed=ts,
    )


def health(txn: Txn, command: InstancesHealth) -> Outcome:
    return health_all([(txn, command)])[0]


def health_all(reports: list[tuple[Txn, InstancesHealth]]) -> list[Outcome]:
    """Apply consecutive InstancesHealth proposals (they come in bursts: a node's monitor
    reports every instance it checks): one read and one write for all."""
    return _observe(reports, _health)


def _observe(
    proposals: list[tuple[Txn, InstancesReport | InstancesHealth]],
    apply: Callable[[InstanceRecord, Any, float], InstanceRecord | None],
) -> list[Outcome]:
    """Apply what nodes observed, each report on its own: `apply` makes the record it
    leads to (None: it changes nothing). A report about an instance removed since is
    skipped (its node stops it when it hears); one about an instance placed on another
    node is refused and named in the outcome's error while the others apply."""
    db = proposals[0][0].db
    current = read_all(db, {r.id for _txn, command in proposals for r in command.reports})
    observed: list[tuple[Txn, InstanceRecord, int]] = []
    outcomes = []
    for txn, command in proposals:
        applied, refused = 0, []
        for r in command.reports:
            if r.id not in current:
                continue
            record, version = current[r.id]
            if record.node != command.node:
                refused.append(
                    f"instance {r.id} is placed on node {record.node}, not {command.node}"
                )
                continue
            changed = apply(record, r, txn.ts)
            if changed is None:
                continue
            observed.append((txn, changed, version))
            current[r.id] = changed, version + 1  # a later report of it sees this one
            applied += 1
        # ok: what could apply did; error names what only another node may report
        named = refused[:NAMED] + ([f"{len(refused) - NAMED} more"] if len(refused) > NAMED else [])
        outcomes.append(Outcome(ok=True, value=f"{applied} recorded", error="; ".join(named)))
    _write(db, observed)
    return outcomes


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
        Handles(
            InstancesHealth,
            health,
            ids=lambda c: [r.id for r in c.reports],
            apply_all=health_all,
            recorded=False,  # as reports: applying one twice changes nothing (its seq)
        ),
        Handles(
            InstancesReport,
            report,
            ids=lambda c: [r.id for r in c.reports],
            apply_all=report_all,
            # Applying one twice changes nothing (a report applies only if its seq is newer
            # than the recorded one), and there is one for every instance transition: no
            # idempotency record, which would cost as much as applying it.
            recorded=False,
        ),
    ),
    migrations=(Migration(8, "instances: placed by the manager, reported by their nodes", TABLES),),
    query=query,
    filters=tuple(FILTERS),
    page=PAGE,
)
