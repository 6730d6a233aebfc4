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

Rollouts (issue #14; state in JobRecord.rollout, so a new manager resumes them):
a new job, an update and a restart start a `Rollout` of the version (canaries:
the spec's `update.canary`, only when the update replaces the job's instances and
it has some); a running rollout a newer version replaces ends `superseded`,
JobStop ends it `stopped`. Its end is its version's outcome (job_versions).
- JobPromote (clients; the manager for auto_promote): the canaries are promoted.
- JobRollback (clients; the manager for auto_revert): a new version with an
  earlier version's spec, source and file (0: `stable`, else the newest earlier
  version whose rollout succeeded); cause "rollback to version N" unless given. A
  stopped job runs again, at that version. Its rollout runs no canaries.
- RolloutProgress (the manager, with its epoch): its record of the rollout's
  batches and counts; a final status ends it (`succeeded` makes it `stable`).
  Ignored (value "ignored") unless it is about the running rollout (or marks a
  failed one reverted).

Every outcome's `version` is the job's spec version (JobRecord.version); the row's
own version (one more per change) is what reads and changes carry.

Tables: `jobs`, one row per job: its `JobRecord` less the spec and source (the
change's detail, as JSON), its status and spec version (the read's filters), a
version that grows by one per change and its count of instances; `job_versions`,
every version's spec, source, file, submission time, cause and outcome. Change kind
`job` (id: the job; detail: the record less spec and source, which can be large:
readers query the job; version 0: forgotten).
Reads: `query`, the latest `JobRecord` of one job or of every job; with
`where={"version": "N"}`, the record at spec version N (what an instance placed at
that version runs). The source text comes only when one job is asked for (by id).
`history`, the `job_versions` read (a kind of its own, `VERSIONS`, with no tables or
commands): one job's versions as `JobVersion`s, newest first.
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
from colony.shared import jobspec
from colony.shared.jobspec import JobSpec
from colony.shared.messages import (
    JobBlocked,
    JobPromote,
    JobRecord,
    JobRollback,
    JobRun,
    JobScale,
    JobStop,
    JobVersion,
    Outcome,
    Rollout,
    RolloutProgress,
    RolloutStatus,
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

HISTORY = """
ALTER TABLE job_versions ADD COLUMN cause TEXT NOT NULL DEFAULT '';
ALTER TABLE job_versions ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
ALTER TABLE job_versions ADD COLUMN reason TEXT NOT NULL DEFAULT '';
"""
"""Schema version 10: each version's cause and its rollout's outcome ('' for older rows)."""

TABLES = """
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY, status TEXT NOT NULL, spec_version INTEGER NOT NULL,
    version INTEGER NOT NULL, record TEXT NOT NULL, instances INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS job_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, source TEXT NOT NULL,
    file TEXT NOT NULL, submitted REAL NOT NULL, cause TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', PRIMARY KEY (name, version)
);
"""
"""jobs.record: the JobRecord less spec and source (JSON), as its changes carry it;
jobs.version: the row's version (one per change), jobs.spec_version: the record's;
jobs.instances: how many instances of it the instances kind holds; job_versions.cause: who
or what made the version, outcome and reason: how its rollout ended ('' : not yet, or before
rollouts)."""

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
        "v.file, v.submitted, v.cause FROM (SELECT 1) LEFT JOIN (jobs j JOIN job_versions v "
        f"ON v.name = j.name AND v.version = {at}) ON {' AND '.join(where)} "
        "ORDER BY j.name LIMIT ?"
    )
    async with reader.execute(sql, (*params, select.limit)) as rows:
        found = await rows.fetchall()
    index = found[0][0] if found else 0
    objects = []
    for _index, name, version, state, spec_version, spec, source, file, submitted, cause in found:
        if name is None:
            continue
        # A job file's text can be 64 KiB: a page holds it only when one job is asked for.
        record = _record(state, spec, source if select.id else "")
        if spec_version != record.version:  # an older version's spec, with today's state
            record = msgspec.structs.replace(
                record, version=spec_version, file=file, submitted=submitted, cause=cause
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


def _add_version(
    txn: Txn, name: str, version: int, spec: str | bytes, source: str, file: str, cause: str
) -> None:
    txn.db.execute(
        "INSERT INTO job_versions (name, version, spec, source, file, submitted, cause) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, version, spec, source, file, txn.ts, cause),
    )


def _ended(txn: Txn, record: JobRecord, status: RolloutStatus, reason: str) -> JobRecord:
    """`record` with its running rollout ended as `status` (its version's outcome); as it
    is if no rollout runs."""
    rollout = record.rollout
    if rollout is None or rollout.status != "running":
        return record
    _outcome(txn, record.name, rollout.version, status, reason)
    ended = msgspec.structs.replace(rollout, status=status, reason=reason, ended=txn.ts)
    return msgspec.structs.replace(record, rollout=ended)


def _outcome(txn: Txn, name: str, version: int, outcome: str, reason: str) -> None:
    txn.db.execute(
        "UPDATE job_versions SET outcome = ?, reason = ? WHERE name = ? AND version = ?",
        (outcome, reason, name, version),
    )


def _new_version(
    txn: Txn,
    record: JobRecord,
    version: int,
    spec: JobSpec,
    source: str,
    file: str,
    cause: str,
    canaries: bool = True,
) -> Outcome:
    """Make version `record.version + 1` of the job, running `spec`, and start its rollout
    (a running rollout it replaces is superseded; a rollback's runs no canaries: it goes
    back to a known version, and auto_revert must not wait for a promotion). The row was
    at `version`."""
    latest = record.version + 1
    _add_version(txn, record.name, latest, records.encode(spec), source, file, cause)
    record = _ended(txn, record, "superseded", f"version {latest} replaced it before it ended")
    updated = msgspec.structs.replace(
        record,
        version=latest,
        spec=spec,
        source=source,
        file=file,
        cause=cause,
        replicas=spec.replicas,
        status="running",
        purge=False,
        submitted=txn.ts,
        rollout=_rollout(txn, record, spec, latest, canaries),
        # a job from before rollouts ran its version as it should: the one to go back to
        stable=record.stable or (record.version if record.rollout is None else 0),
    )
    _write(txn, updated, version)
    return Outcome(ok=True, value="update", version=latest)


def _rollout(
    txn: Txn, record: JobRecord, spec: JobSpec, version: int, canaries: bool = True
) -> Rollout:
    """The rollout of `spec` (at `version`) replacing `record`'s version: canaries only when
    its instances must be replaced to run it (and it has some), at most one per replica."""
    canary = min(spec.update.canary, spec.replicas) if canaries else 0
    if canary and not (
        _has_instances(txn.db, record.name) and jobspec.replaces_instances(record.spec, spec)
    ):
        canary = 0
    return Rollout(
        version=version,
        previous=record.version,
        canaries=canary,
        promoted=canary == 0,
        started=txn.ts,
    )


def run(txn: Txn, command: JobRun) -> Outcome:
    spec = command.spec
    record, version = read(txn.db, spec.name)
    if record is None:
        text = records.encode(spec)
        _add_version(txn, spec.name, 1, text, command.source, command.file, command.cause)
        new = JobRecord(
            name=spec.name,
            version=1,
            spec=spec,
            source=command.source,
            file=command.file,
            replicas=spec.replicas,
            cause=command.cause,
            rollout=Rollout(version=1, promoted=True, started=txn.ts),
            submitted=txn.ts,
        )
        _write(txn, new, version)
        return Outcome(ok=True, value="new", version=1)
    if record.spec == spec:
        if record.status == "running":
            return Outcome(ok=True, value="unchanged", version=record.version)
        # it runs again: a rollout of its version from nothing (JobStop ended the last)
        _outcome(txn, record.name, record.version, "", "")
        again = Rollout(
            version=record.version, previous=record.version, promoted=True, started=txn.ts
        )
        restarted = msgspec.structs.replace(record, status="running", purge=False, rollout=again)
        _write(txn, restarted, version)
        return Outcome(ok=True, value="restart", version=record.version)
    return _new_version(txn, record, version, spec, command.source, command.file, command.cause)


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
        why = command.reason or "the job was stopped"
        stopped = _ended(txn, record, "stopped", why)
        _write(txn, msgspec.structs.replace(stopped, status="stopped", purge=purge), version)
    return Outcome(ok=True, value="stopped", version=record.version)


def blocked(txn: Txn, command: JobBlocked) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    if record.blocked != command.reason:
        _write(txn, msgspec.structs.replace(record, blocked=command.reason), version)
    return Outcome(ok=True, version=record.version)


# --- rollouts ----------------------------------------------------------------------


def promote(txn: Txn, command: JobPromote) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    rollout, name = record.rollout, command.job
    refusal = ""
    if rollout is None or rollout.status != "running":
        last = f" (version {rollout.version}'s {rollout.status})" if rollout else ""
        refusal = f"job {name} has no rollout running{last}: nothing to promote"
    elif not rollout.canaries:
        refusal = (
            f"the rollout of job {name} version {rollout.version} has no canaries to promote: "
            "it replaces the instances batch by batch on its own"
        )
    elif command.version and command.version != rollout.version:
        refusal = (
            f"job {name} rolls out version {rollout.version} now, not {command.version}: "
            "its canaries were not promoted"
        )
    elif rollout.promoted:
        refusal = (
            f"the canaries of job {name} version {rollout.version} are promoted already: "
            "the rest of its instances are being replaced"
        )
    if refusal:
        return Outcome(ok=False, version=record.version, error=refusal)
    promoted = msgspec.structs.replace(rollout, promoted=True)
    _write(txn, msgspec.structs.replace(record, rollout=promoted), version)
    return Outcome(ok=True, value="promoted", version=record.version)


def _versions(db: sqlite3.Connection, name: str) -> list[tuple[int, str]]:
    """(version, outcome) of every version of job `name`, newest first."""
    rows = db.execute(
        "SELECT version, outcome FROM job_versions WHERE name = ? ORDER BY version DESC", (name,)
    )
    return rows.fetchall()


def _rollback_target(db: sqlite3.Connection, record: JobRecord, asked: int) -> int | str:
    """The version a rollback of `record` to `asked` (0: the last good one) makes again, or
    why there is none."""
    name, current = record.name, record.version
    if asked:
        known = [v for v, _outcome in _versions(db, name)]
        if asked not in known:
            return f"job {name} has no version {asked} (it has {_spans(known)})"
        if asked == current:
            return f"job {name} runs version {asked} now: there is nothing to roll back"
        return asked
    if record.stable and record.stable != current:
        return record.stable
    earlier = [v for v, outcome in _versions(db, name) if v < current and outcome == "succeeded"]
    if earlier:
        return earlier[0]
    return (
        f"job {name} has no version before {current} whose rollout succeeded: name the version "
        f"to roll back to (`colony job history {name}` lists them)"
    )


def _spans(versions: list[int]) -> str:
    """1-4, 6 for [6, 4, 3, 2, 1]."""
    spans: list[list[int]] = []
    for v in sorted(versions):
        if spans and spans[-1][1] == v - 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def rollback(txn: Txn, command: JobRollback) -> Outcome:
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    if command.from_version and command.from_version != record.version:
        return Outcome(
            ok=False,
            version=record.version,
            error=f"job {command.job} is at version {record.version} now, not "
            f"{command.from_version}: nothing was rolled back",
        )
    target = _rollback_target(txn.db, record, command.version)
    if isinstance(target, str):
        return Outcome(ok=False, version=record.version, error=target)
    spec, source, file = txn.db.execute(
        "SELECT spec, source, file FROM job_versions WHERE name = ? AND version = ?",
        (command.job, target),
    ).fetchone()
    old = records.decode(spec, JobSpec)
    if old == record.spec:
        return Outcome(
            ok=False,
            version=record.version,
            error=f"job {command.job} version {target} has the spec version {record.version} "
            "runs now: there is nothing to roll back",
        )
    cause = command.cause or f"rollback to version {target}"
    done = _new_version(txn, record, version, old, source, file, cause, canaries=False)
    return msgspec.structs.replace(done, value="rollback")


FINAL: tuple[RolloutStatus, ...] = ("succeeded", "failed", "reverted", "superseded", "stopped")


def progress(txn: Txn, command: RolloutProgress) -> Outcome:
    """The manager's record of the rollout of `command.version`: applied only while that
    rollout runs (a halted, failed one may still be marked reverted); a final status ends
    it and is its version's outcome. A final word's counters left 0 keep the recorded
    ones (the progress it ended at). The curator's view applies the same rule to the
    manager's own writes (`View._rollout`): change both together."""
    record, version = read(txn.db, command.job)
    if record is None:
        return _unknown(command.job)
    rollout = record.rollout
    open_to = ("running", "failed") if command.status == "reverted" else ("running",)
    if rollout is None or rollout.version != command.version or rollout.status not in open_to:
        return Outcome(ok=True, value="ignored", version=record.version)
    final = command.status in FINAL
    counters = {
        name: getattr(command, name) or (getattr(rollout, name) if final else 0)
        for name in ("batch", "batch_started", "placed", "healthy")
    }
    updated = msgspec.structs.replace(
        rollout,
        status=command.status,
        reason=command.reason or (rollout.reason if final else ""),
        ended=txn.ts if final else 0.0,
        **counters,
    )
    if updated == rollout:
        return Outcome(ok=True, value="recorded", version=record.version)
    changed = msgspec.structs.replace(record, rollout=updated)
    if final:
        _outcome(txn, record.name, rollout.version, updated.status, updated.reason)
    if command.status == "succeeded":
        changed = msgspec.structs.replace(changed, stable=rollout.version)
    _write(txn, changed, version)
    return Outcome(ok=True, value="recorded", version=record.version)


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


# --- history -----------------------------------------------------------------------


async def history(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, every version of job `select.id` as a `JobVersion` dict, newest
    first): each object's id is its version number, and `after` = one of them reads the
    versions before it (the next page)."""
    if not select.id:
        raise Refused(400, "job_versions reads one job's versions: give the job's name as key")
    before = 2**63 - 1
    if select.after:
        try:
            before = int(select.after)
        except ValueError:
            raise Refused(
                400, f"job_versions pages after a version number, not {select.after!r}"
            ) from None
    # LEFT JOIN from one row: the applied index (and whether the job exists) come back
    # even when no version is left on this page.
    sql = (
        f"SELECT {APPLIED_INDEX}, j.spec_version, v.version, v.submitted, v.cause, v.file, "
        "v.outcome, v.reason, v.spec FROM (SELECT 1) LEFT JOIN jobs j ON j.name = ? "
        "LEFT JOIN job_versions v ON v.name = j.name AND v.version < ? "
        "ORDER BY v.version DESC LIMIT ?"
    )
    async with reader.execute(sql, (select.id, before, select.limit)) as rows:
        found = await rows.fetchall()
    index, current = found[0][0] or 0, found[0][1]
    if current is None:
        raise Refused(404, f"no job {select.id} (`colony job list` shows the jobs)")
    objects = []
    for _index, _current, number, submitted, cause, file, outcome, reason, spec in found:
        if number is None:
            continue
        entry = JobVersion(
            job=select.id, version=number, submitted=submitted, cause=cause, file=file,
            outcome=outcome, reason=reason, current=number == current,
            spec=records.decode(spec, JobSpec),
        )  # fmt: skip
        objects.append(Stored(id=str(number), version=number, value=msgspec.to_builtins(entry)))
    return index, objects


def _job(command: JobScale | JobStop | JobBlocked | JobPromote | JobRollback) -> tuple[str]:
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
        # open to clients; the manager proposes them too (auto_promote, auto_revert)
        Handles(JobPromote, promote, ids=_job),
        Handles(JobRollback, rollback, ids=_job),
        Handles(RolloutProgress, progress, ids=_job, needs_epoch=True),
    ),
    migrations=(
        Migration(7, "jobs and every version of their specs", TABLES_7),
        Migration(9, "jobs: how many instances each has (told by the instances kind)", COUNTED),
        Migration(10, "job versions: who made each, and how its rollout ended", HISTORY),
    ),
    query=query,
    filters=FILTERS,
    page=PAGE,
)

VERSIONS = Kind(name="job_versions", commands=(), query=history, page=PAGE)
"""The history read: one job's versions (QueryRequest.key = the job), newest first. Its
tables are the jobs kind's."""
