"""The jobs kind: the jobs users submitted, every version of each spec as given.

Who writes what (issue #13): clients submit, scale and stop jobs (JobRun,
JobScale, JobStop: no epoch); the manager records why a job's instances cannot be
placed (JobBlocked, with its epoch). The spec and its source text are stored as
given and never changed.

- JobRun: a new job is at version 1; a changed spec makes version + 1 (replicas :=
  the spec's); the same spec again changes nothing (unless the job was stopped: it
  runs again). Its outcome's `value` says what happened: "new", "update",
  "unchanged" or "restart".
- JobScale: replicas (refused for a stopped job: run it again first).
- JobStop: status stopped; with `purge`, the job is forgotten once it has no
  instances left (at once if it has none; else when the instances kind removes
  the last). The instances kind tells how many it holds (`counted`): this kind
  reads only its own tables.
- JobBlocked: the manager's explanation ('' : nothing blocked).

Every outcome's `version` is the job's spec version (JobRecord.version); the row's
own version (one more per change) is what reads and changes carry.

Tables: `jobs`, one row per job: its `JobRecord` less the spec and source (the
change's detail, as JSON), its status and spec version (the read's filters), a
version that grows by one per change and its count of instances; `job_versions`,
every version's spec, source, file and submission time. Change kind `job` (id: the
job; detail: the record less spec and source, which can be large: readers query the
job; version 0: forgotten).
Read: `query`, the latest `JobRecord` of one job or of every job; with
`where={"version": "N"}`, the record at spec version N (what an instance placed at
that version runs). The source text comes only when one job is asked for (by id).
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

import aiosqlite
import msgspec

from colony.consensus.changelog import APPLIED_INDEX
from colony.consensus.kinds import records
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.consensus.schema import Migration
from colony.shared.messages import (
    JobBlocked,
    JobRecord,
    JobRun,
    JobScale,
    JobStop,
    Outcome,
    Stored,
)
from colony.shared.runner import Refused

TABLES_7 = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, spec_version INTEGER NOT NULL,
    version INTEGER NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, source TEXT NOT NULL,
    file TEXT NOT NULL, submitted REAL NOT NULL, PRIMARY KEY (name, version)
);
"""
"""The tables as schema version 7 made them (frozen: migration 7 runs this)."""

COUNTED = """
ALTER TABLE jobs ADD COLUMN instances INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET instances = (SELECT count(*) FROM instances WHERE instances.job = jobs.name);
"""
"""Schema version 9: each job's count of instances, kept from then on by what the instances
kind tells (`counted`); the migration counts them once."""

TABLES = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, spec_version INTEGER NOT NULL,
    version INTEGER NOT NULL, record TEXT NOT NULL, instances INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, source TEXT NOT NULL,
    file TEXT NOT NULL, submitted REAL NOT NULL, PRIMARY KEY (name, version)
);
"""
"""jobs.record: the JobRecord less spec and source (JSON), as its changes carry it;
jobs.version: the row's version (one per change), jobs.spec_version: the record's;
jobs.instances: how many instances of it the instances kind holds."""

LARGE = ("spec", "source")
"""What a job's row and its changes leave out (job_versions holds them)."""
FILTERS = ("status", "version")
PAGE = 32
"""Jobs one reply holds: each with its spec (a few KiB; a reply must stay under 1 MiB)."""


def _record(state: str | bytes, spec: str | bytes, source: str) -> JobRecord:
    fields: dict[str, Any] = msgspec.json.decode(state)
    fields["spec"] = msgspec.json.decode(spec)
    fields["source"] = source
    return msgspec.convert(fields, JobRecord)


def read(db: sqlite3.Connection, name: str) -> tuple[JobRecord | None, int]:
    """(latest record, row version) of job `name`; (None, 0) if there is none."""
    row = db.execute(
        "SELECT j.record, v.spec, v.source, j.version FROM jobs j "
        "JOIN job_versions v ON v.name = j.name AND v.version = j.spec_version "
        "WHERE j.name = ?",
        (name,),
    ).fetchone()
    return (_record(*row[:3]), row[3]) if row else (None, 0)


def has_version(db: sqlite3.Connection, name: str, version: int) -> bool:
    found = db.execute(
        "SELECT 1 FROM job_versions WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    return found is not None


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, `JobRecord`s as dicts: of job `select.id` or of every job, the
    latest version or, with where version, that one), from one state of the database."""
    wanted = select.where.get("version", "")
    others = {f: v for f, v in select.where.items() if f != "version"}  # the join's, below
    where, params = records.conditions(
        replace(select, where=others), "j.name", {"status": "j.status"}
    )
    if wanted:
        try:
            params.insert(0, int(wanted))
        except ValueError:
            raise Refused(400, f"a job version is a whole number, not {wanted!r}") from None
        at = "?"
    else:
        at = "j.spec_version"
    sql = (
        f"SELECT {APPLIED_INDEX}, j.name, j.version, j.record, v.version, v.spec, v.source, "
        "v.file, v.submitted FROM (SELECT 1) LEFT JOIN (jobs j JOIN job_versions v "
        f"ON v.name = j.name AND v.version = {at}) ON {' AND '.join(where)} "
        "ORDER BY j.name LIMIT ?"
    )
    async with reader.execute(sql, (*params, select.limit)) as rows:
        found = await rows.fetchall()
    index = found[0][0] if found else 0
    objects = []
    for _index, name, version, state, spec_version, spec, source, file, submitted in found:
        if name is None:
            continue
        # A job file's text can be 64 KiB: a page holds it only when one job is asked for.
        record = _record(state, spec, source if select.id else "")
        if spec_version != record.version:  # an older version's spec, with today's state
            record = msgspec.structs.replace(
                record, version=spec_version, file=file, submitted=submitted
            )
        objects.append(Stored(id=name, version=version, value=msgspec.to_builtins(record)))
    return index or 0, objects


def _write(txn: Txn, record: JobRecord, version: int) -> None:
    """Store `record` as the job's latest (its spec version must be in job_versions) and
    record the change (the row was at `version`)."""
    record = msgspec.structs.replace(record, changed=txn.ts)
    state = records.encode(records.detail(record, LARGE))  # once, for the row and the change
    txn.db.execute(
        "INSERT INTO jobs (name, status, spec_version, version, record) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET status = excluded.status, "
        "spec_version = excluded.spec_version, version = excluded.version, "
        "record = excluded.record",
        (record.name, record.status, record.version, version + 1, state),
    )
    txn.changed_all("job", [(record.name, version + 1, state)])


def _add_version(txn: Txn, command: JobRun, version: int) -> None:
    txn.db.execute(
        "INSERT INTO job_versions (name, version, spec, source, file, submitted) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            command.spec.name,
            version,
            records.encode(command.spec),
            command.source,
            command.file,
            txn.ts,
        ),
    )


def run(txn: Txn, command: JobRun) -> Outcome:
    spec = command.spec
    record, version = read(txn.db, spec.name)
    if record is None:
        _add_version(txn, command, 1)
        new = JobRecord(
            name=spec.name,
            version=1,
            spec=spec,
            source=command.source,
            file=command.file,
            replicas=spec.replicas,
            submitted=txn.ts,
        )
        _write(txn, new, version)
        return Outcome(ok=True, value="new", version=1)
    if record.spec == spec:
        if record.status == "running":
            return Outcome(ok=True, value="unchanged", version=record.version)
        _write(txn, msgspec.structs.replace(record, status="running", purge=False), version)
        return Outcome(ok=True, value="restart", version=record.version)
    latest = record.version + 1
    _add_version(txn, command, latest)
    updated = msgspec.structs.replace(
        record,
        version=latest,
        spec=spec,
        source=command.source,
        file=command.file,
        replicas=spec.replicas,
        status="running",
        purge=False,
        submitted=txn.ts,
    )
    _write(txn, updated, version)
    return Outcome(ok=True, value="update", version=latest)


def _unknown(name: str) -> Outcome:
    return Outcome(ok=False, error=f"no job {name} (`colony job list` shows the jobs)")


def scale(txn: Txn, command: JobScale) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    if record.status == "stopped":
        return Outcome(
            ok=False,
            version=record.version,
            error=f"job {command.job} is stopped: run it again (`colony job run`) to scale it",
        )
    if record.replicas != command.replicas:
        _write(txn, msgspec.structs.replace(record, replicas=command.replicas), version)
    return Outcome(ok=True, version=record.version)


def stop(txn: Txn, command: JobStop) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    purge = record.purge or command.purge
    if purge and not _has_instances(txn.db, command.job):
        _forget(txn, command.job)
        return Outcome(ok=True, value="forgotten")
    if record.status != "stopped" or purge != record.purge:
        _write(txn, msgspec.structs.replace(record, status="stopped", purge=purge), version)
    return Outcome(ok=True, value="stopped", version=record.version)


def blocked(txn: Txn, command: JobBlocked) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    if record.blocked != command.reason:
        _write(txn, msgspec.structs.replace(record, blocked=command.reason), version)
    return Outcome(ok=True, version=record.version)


def _has_instances(db: sqlite3.Connection, job: str) -> bool:
    found = db.execute("SELECT instances FROM jobs WHERE name = ?", (job,)).fetchone()
    return bool(found and found[0])


def _forget(txn: Txn, name: str) -> None:
    txn.db.execute("DELETE FROM jobs WHERE name = ?", (name,))
    txn.db.execute("DELETE FROM job_versions WHERE name = ?", (name,))
    txn.changed("job", name, 0, {"name": name, "reason": "purged: no instance of it is left"})


def counted(txn: Txn, name: str, added: int) -> None:
    """The instances kind placed (`added` > 0) or removed (< 0) instances of job `name`;
    a job stopped with purge whose last instance went is forgotten."""
    txn.db.execute("UPDATE jobs SET instances = instances + ? WHERE name = ?", (added, name))
    if added < 0 and not _has_instances(txn.db, name):
        record, _version = read(txn.db, name)
        if record and record.status == "stopped" and record.purge:
            _forget(txn, name)


def _job(command: JobScale | JobStop | JobBlocked) -> tuple[str]:
    return (command.job,)


KIND = Kind(
    name="jobs",
    tables=TABLES,
    changes=("job",),
    commands=(
        Handles(JobRun, run, ids=lambda c: (c.spec.name,)),
        Handles(JobScale, scale, ids=_job),
        Handles(JobStop, stop, ids=_job),
        Handles(JobBlocked, blocked, ids=_job, needs_epoch=True),
    ),
    migrations=(
        Migration(7, "jobs and every version of their specs", TABLES_7),
        Migration(9, "jobs: how many instances each has (told by the instances kind)", COUNTED),
    ),
    query=query,
    filters=FILTERS,
    page=PAGE,
)
