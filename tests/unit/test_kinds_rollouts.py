"""Issue 14's kinds on a real Machine (SQLite, no network): rollouts on the job record
(started by run, superseded, stopped, promoted, progressed, rolled back), each version's
cause and outcome and the job_versions read, health from a node's monitor, node drain, and
a schema-9 file migrating to them."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import msgspec
import pytest
from test_kinds_jobs import LATEST, Db, placement, register, report, spec

from colony.consensus import schema
from colony.consensus.kinds import REGISTRY, jobs, nodes, records
from colony.consensus.kinds.kind import Registry
from colony.consensus.machine import Machine, encode_batch
from colony.shared.jobspec import JobSpec, UpdateStrategy
from colony.shared.messages import (
    HealthReport,
    InstanceRecord,
    InstancesHealth,
    InstancesPlace,
    InstancesReport,
    JobPromote,
    JobRecord,
    JobRollback,
    JobRun,
    JobStop,
    JobVersion,
    LeaseGrant,
    NodeDrain,
    NodeDrained,
    NodeEligibility,
    NodeRecord,
    Proposal,
    RolloutProgress,
)
from colony.shared.runner import Refused


@pytest.fixture
def db(tmp_path):
    db = Db(tmp_path / "management.db")
    yield db
    db.machine.close()


def canaried(command: str = "sleep", canary: int = 1, replicas: int = 3) -> JobSpec:
    return msgspec.structs.replace(
        spec(replicas=replicas, command=command), update=UpdateStrategy(canary=canary)
    )


def job(db: Db, name: str = "web") -> JobRecord:
    record, _version = jobs.read(db.machine.db, name)
    assert record is not None
    return record


async def history(db: Db, name: str = "web", **select) -> list[JobVersion]:
    return [
        msgspec.convert(s.value, JobVersion) for s in await db.read("job_versions", name, **select)
    ]


def succeed(db: Db, version: int, name: str = "web") -> None:
    done = db.manager(RolloutProgress(name, version, status="succeeded", placed=3, healthy=3))
    assert (done.ok, done.value) == (True, "recorded"), done.error


# --- rollouts ------------------------------------------------------------------------


async def test_a_new_job_starts_a_promoted_rollout_and_its_cause_is_kept(db):
    assert db.one(JobRun(spec(), cause="ann@box: colony job run web.yaml")).value == "new"
    record = job(db)
    assert record.cause == "ann@box: colony job run web.yaml"
    rollout = record.rollout
    assert (rollout.version, rollout.previous, rollout.status) == (1, 0, "running")
    assert (rollout.canaries, rollout.promoted, rollout.started) == (0, True, db.ts)
    [(_, _, detail)] = db.changes("job")
    assert detail["rollout"]["status"] == "running" and "spec" not in detail


async def test_canaries_only_when_the_update_replaces_the_instances_the_job_has(db):
    db.one(register("a"))
    db.one(JobRun(canaried("sleep")))
    # no instances yet: nothing to run beside
    db.one(JobRun(canaried("sleepier")))
    assert job(db).rollout.canaries == 0 and job(db).rollout.promoted
    assert db.manager(InstancesPlace([placement("web-0", version=2)])).ok
    db.one(JobRun(canaried("sleepiest")))
    rollout = job(db).rollout
    assert (rollout.version, rollout.previous, rollout.canaries, rollout.promoted) == (
        3, 2, 1, False,
    )  # fmt: skip
    # replicas and update change in place: the instances stay, no canaries
    db.one(JobRun(canaried("sleepiest", canary=2, replicas=5)))
    assert (job(db).rollout.version, job(db).rollout.canaries) == (4, 0)
    # at most one canary per replica
    db.one(JobRun(canaried("other", canary=9, replicas=2)))
    assert job(db).rollout.canaries == 2
    assert [(v.version, v.outcome) for v in await history(db)] == [
        (5, ""), (4, "superseded"), (3, "superseded"), (2, "superseded"), (1, "superseded"),
    ]  # fmt: skip
    assert (await history(db))[1].reason == "version 5 replaced it before it ended"


async def test_promote_sets_promoted_and_refuses_what_cannot_be_promoted(db):
    refused = db.one(JobPromote("nope"))
    assert not refused.ok and "no job nope" in refused.error
    db.one(register("a"))
    db.one(JobRun(canaried("sleep")))
    no_canaries = db.one(JobPromote("web"))
    assert not no_canaries.ok
    assert "rollout of job web version 1 has no canaries" in no_canaries.error
    db.manager(InstancesPlace([placement("web-0")]))
    db.one(JobRun(canaried("sleepier")))
    promoted = db.one(JobPromote("web"))  # a client's: no epoch needed
    assert (promoted.ok, promoted.value, promoted.version) == (True, "promoted", 2)
    assert job(db).rollout.promoted
    again = db.manager(JobPromote("web"))  # the manager's (auto_promote)
    assert not again.ok and "canaries of job web version 2 are promoted already" in again.error
    succeed(db, 2)
    done = db.one(JobPromote("web"))
    assert not done.ok
    assert (
        done.error == "job web has no rollout running (version 2's succeeded): nothing to promote"
    )


async def test_progress_is_the_managers_and_applies_only_to_the_running_rollout(db):
    db.one(JobRun(spec()))
    refused = db.one(RolloutProgress("web", 1, batch=1))
    assert not refused.ok and "needs the manager's epoch" in refused.error
    assert not db.manager(RolloutProgress("nope", 1)).ok
    assert db.manager(RolloutProgress("web", 7, batch=1)).value == "ignored"
    changes = len(db.changes("job"))
    step = RolloutProgress("web", 1, batch=1, batch_started=5.0, placed=2, healthy=1)
    assert db.manager(step).value == "recorded"
    assert db.manager(step).value == "recorded"  # the same again: no news, no change
    assert len(db.changes("job")) == changes + 1
    rollout = job(db).rollout
    assert (rollout.batch, rollout.batch_started, rollout.placed, rollout.healthy) == (
        1, 5.0, 2, 1,
    )  # fmt: skip
    succeed(db, 1)
    record = job(db)
    assert (record.stable, record.rollout.status, record.rollout.ended) == (1, "succeeded", db.ts)
    assert db.manager(RolloutProgress("web", 1, status="failed")).value == "ignored"
    [v1] = await history(db)
    assert (v1.outcome, v1.current) == ("succeeded", True)


async def test_a_failed_rollout_may_be_marked_reverted_in_the_proposal_that_rolls_back(db):
    db.one(JobRun(spec()))
    succeed(db, 1)
    db.one(JobRun(spec(command="broken")))
    failed = RolloutProgress("web", 2, status="failed", reason="web-1 unhealthy", batch=1)
    outcomes = db.apply(
        failed,
        RolloutProgress("web", 2, status="reverted"),
        JobRollback("web", 1, cause="auto-revert: version 2 failed: web-1 unhealthy"),
        epoch=1,
    )
    assert [(o.ok, o.value) for o in outcomes] == [
        (True, "recorded"), (True, "recorded"), (True, "rollback"),
    ]  # fmt: skip
    record = job(db)
    assert (record.version, record.spec, record.stable) == (3, spec(), 1)
    assert record.cause == "auto-revert: version 2 failed: web-1 unhealthy"
    assert (record.rollout.version, record.rollout.previous) == (3, 2)
    [v3, v2, _v1] = await history(db)
    assert (v2.outcome, v2.reason) == ("reverted", "web-1 unhealthy")  # the failure's reason
    assert (v3.cause, v3.outcome, v3.current) == (record.cause, "", True)


async def test_the_managers_promote_and_revert_touch_only_the_version_they_decided_on(db):
    """A user's newer version committed first is neither promoted nor rolled back."""
    db.one(register("a"))
    db.one(JobRun(canaried("sleep")))
    succeed(db, 1)
    db.manager(InstancesPlace([placement("web-0", version=1)]))
    db.one(JobRun(canaried("sleepier")))  # version 2, a canary
    db.one(JobRun(canaried("sleepiest")))  # version 3 by the user, before the manager's
    promote = db.manager(JobPromote("web", version=2))
    assert not promote.ok and "rolls out version 3 now, not 2" in promote.error
    assert not job(db).rollout.promoted
    revert = db.manager(JobRollback("web", 1, cause="auto-revert", from_version=2))
    assert not revert.ok and "is at version 3 now, not 2: nothing was rolled back" in revert.error
    assert job(db).version == 3
    assert db.manager(JobPromote("web", version=3)).ok


async def test_a_rollback_runs_no_canaries(db):
    # it goes back to a known version: auto_revert must not wait for a promotion
    db.one(register("a"))
    db.one(JobRun(canaried("sleep")))
    assert db.manager(InstancesPlace([placement("web-0", version=1)])).ok
    db.one(JobRun(canaried("sleepier")))
    assert job(db).rollout.canaries == 1
    db.one(JobRollback("web", 1))
    assert (job(db).rollout.version, job(db).rollout.canaries) == (3, 0)
    assert job(db).rollout.promoted


async def test_rollback_makes_a_new_version_of_an_earlier_ones_spec_source_and_file(db):
    db.one(JobRun(spec(), source="v1 text", file="web-v1.yaml"))
    succeed(db, 1)
    db.one(JobRun(spec(command="two"), source="v2 text", file="web-v2.yaml"))
    rolled = db.one(JobRollback("web"))  # 0: stable, version 1
    assert (rolled.ok, rolled.value, rolled.version) == (True, "rollback", 3)
    [web] = await db.read("jobs", "web")
    record = msgspec.convert(web.value, JobRecord)
    assert (record.spec, record.source, record.file) == (spec(), "v1 text", "web-v1.yaml")
    assert record.cause == "rollback to version 1"
    assert (await history(db))[1].outcome == "superseded"

    to_two = db.one(JobRollback("web", 2, cause="ann: try two again"))
    assert (to_two.ok, to_two.version) == (True, 4)
    assert (job(db).spec.task.command, job(db).cause) == ("two", "ann: try two again")


@pytest.mark.parametrize(
    ("setup", "command", "why"),
    [
        ((), JobRollback("nope"), "no job nope (`colony job list` shows the jobs)"),
        ((), JobRollback("web", 9), "job web has no version 9 (it has 1-3)"),
        ((), JobRollback("web", 3), "job web runs version 3 now: there is nothing to roll back"),
        ((), JobRollback("web"), "job web has no version before 3 whose rollout succeeded"),
        (("succeed 3",), JobRollback("web"), "job web has no version before 3 whose rollout"),
        ((), JobRollback("web", 1), "job web version 1 has the spec version 3 runs now"),
    ],
)
def test_a_rollback_with_nothing_to_roll_back_to_says_why(db, setup, command, why):
    db.one(JobRun(spec()))
    db.one(JobRun(spec(command="two")))
    db.one(JobRun(spec()))  # version 3: version 1's spec again
    if "succeed 3" in setup:
        succeed(db, 3)  # stable is the current version: not one to go back to
    refused = db.one(command)
    assert not refused.ok and why in refused.error
    assert job(db).version == 3


async def test_stop_ends_the_running_rollout_and_a_restart_starts_another(db):
    db.one(JobRun(spec()))
    db.one(JobStop("web", reason="ann: maintenance"))
    rollout = job(db).rollout
    assert (rollout.status, rollout.reason, rollout.ended) == ("stopped", "ann: maintenance", db.ts)
    assert [(v.outcome, v.reason) for v in await history(db)] == [("stopped", "ann: maintenance")]
    assert db.manager(RolloutProgress("web", 1, batch=1)).value == "ignored"
    assert db.one(JobRun(spec())).value == "restart"
    rollout = job(db).rollout
    assert (rollout.status, rollout.version, rollout.started) == ("running", 1, db.ts)
    assert [v.outcome for v in await history(db)] == [""]  # rolling out again


async def test_history_lists_versions_newest_first_in_pages(db):
    for n in range(5):
        db.one(JobRun(spec(replicas=n + 1), cause=f"run {n + 1}", file=f"f{n + 1}"))
    found = await history(db)
    assert [(v.version, v.cause, v.file, v.current) for v in found] == [
        (5, "run 5", "f5", True), (4, "run 4", "f4", False), (3, "run 3", "f3", False),
        (2, "run 2", "f2", False), (1, "run 1", "f1", False),
    ]  # fmt: skip
    assert found[0].spec == spec(replicas=5) and found[0].job == "web"
    first = await db.read("job_versions", "web", limit=2)
    assert [s.id for s in first] == ["5", "4"]
    rest = await db.read("job_versions", "web", after=first[-1].id, limit=10)
    assert [s.id for s in rest] == ["3", "2", "1"]
    assert await db.read("job_versions", "web", after="1") == []  # the job exists: no pages left
    with pytest.raises(Refused, match="no job nope") as unknown:
        await db.read("job_versions", "nope")
    assert unknown.value.code == 404
    with pytest.raises(Refused, match="give the job's name"):
        await db.read("job_versions")
    with pytest.raises(Refused, match="after a version number, not 'x'"):
        await db.read("job_versions", "web", after="x")


def test_every_new_command_is_checked_before_it_is_proposed():
    open_to_clients = [
        JobPromote("web"), JobRollback("web", 2), NodeDrain("a", True),
        InstancesHealth("a", [HealthReport(id="web-0", health="healthy", run=1.0, seq=1)]),
    ]  # fmt: skip
    for command in open_to_clients:
        assert REGISTRY.refusal(Proposal("p", command)) == ""
    for command in (RolloutProgress("web", 1), NodeDrained("a")):
        assert "needs the manager's epoch" in REGISTRY.refusal(Proposal("p", command))
        assert REGISTRY.refusal(Proposal("p", command, epoch=1)) == ""
    # ids are checked as subject tokens (msgspec checks them on decode; a struct built in
    # code is checked here)
    bad = Proposal("p", NodeDrain("a.b", True))
    assert "cannot be used in a subject" in REGISTRY.refusal(bad)
    bad = Proposal(
        "p", InstancesHealth("a", [HealthReport(id="x y", health="healthy", run=1.0, seq=1)])
    )
    assert "cannot be used in a subject" in REGISTRY.refusal(bad)


# --- health --------------------------------------------------------------------------


@pytest.fixture
def running(db):
    """web-0 and web-1 on node a, web-2 on b; web-0 running its run started at 50.0."""
    db.one(register("a"))
    db.one(register("b"))
    db.one(JobRun(spec(replicas=3)))
    db.manager(
        InstancesPlace(
            [placement("web-0"), placement("web-1", slot=1), placement("web-2", "b", slot=2)]
        )
    )
    db.one(InstancesReport("a", [report("web-0", 1, started_at=50.0)]))
    return db


def healthy(id: str, seq: int, health: str = "healthy", run: float = 50.0, **fields):
    return HealthReport(id=id, health=health, run=run, seq=seq, **fields)


def instance(db: Db, id: str) -> InstanceRecord:
    record = db.machine.db.execute("SELECT record FROM instances WHERE id = ?", (id,)).fetchone()
    return records.decode(record[0], InstanceRecord)


def test_health_applies_from_the_instances_node_newer_seq_only(running):
    outcome = running.one(
        InstancesHealth(
            "a",
            [
                healthy("web-0", 10, output="200 OK", check="http", at=49.5),
                healthy("web-2", 10),  # placed on b
                healthy("gone", 10),  # removed, or never: skipped
            ],
        )
    )
    assert (outcome.ok, outcome.value) == (True, "1 recorded")
    assert outcome.error == "instance web-2 is placed on node b, not a"
    web0 = instance(running, "web-0")
    assert (web0.health, web0.health_output, web0.health_check, web0.health_at) == (
        "healthy", "200 OK", "http", 49.5,
    )  # fmt: skip
    assert (web0.health_run, web0.health_seq, web0.healthy_since) == (50.0, 10, running.ts)
    since = running.ts
    assert instance(running, "web-2").health == ""

    stale = running.one(InstancesHealth("a", [healthy("web-0", 9, health="unhealthy")]))
    assert stale.value == "0 recorded" and instance(running, "web-0").health == "healthy"
    still = running.one(InstancesHealth("a", [healthy("web-0", 11, output="200 again")]))
    assert still.value == "1 recorded"
    assert instance(running, "web-0").healthy_since == since  # kept while healthy
    sick = running.one(InstancesHealth("a", [healthy("web-0", 12, "unhealthy", output="503")]))
    assert sick.value == "1 recorded"
    web0 = instance(running, "web-0")
    assert (web0.health, web0.health_output, web0.healthy_since) == ("unhealthy", "503", 0.0)
    running.one(InstancesHealth("a", [healthy("web-0", 13)]))
    assert instance(running, "web-0").healthy_since == running.ts  # turned healthy again
    assert [v for id, v, _ in running.changes("instance") if id == "web-0"] == [1, 2, 3, 4, 5, 6]


def test_health_of_an_older_or_ended_run_is_dropped_a_newer_runs_waits_for_its_start(running):
    older = running.one(InstancesHealth("a", [healthy("web-0", 1, run=40.0)]))
    assert older.value == "0 recorded" and instance(running, "web-0").health == ""
    # the next run's health before its node recorded that run's start: kept for it
    newer = running.one(InstancesHealth("a", [healthy("web-0", 2, run=60.0)]))
    assert newer.value == "1 recorded"
    running.one(InstancesReport("a", [report("web-0", 2, started_at=60.0)]))
    web0 = instance(running, "web-0")
    assert (web0.started_at, web0.health, web0.health_run) == (60.0, "healthy", 60.0)

    # a report that ends the run clears its health; a late report about it is dropped
    running.one(InstancesReport("a", [report("web-0", 3, "exited", started_at=60.0)]))
    web0 = instance(running, "web-0")
    assert (web0.health, web0.healthy_since, web0.health_run) == ("", 0.0, 60.0)
    late = running.one(InstancesHealth("a", [healthy("web-0", 3, run=60.0)]))
    assert late.value == "0 recorded"
    # a pending instance has no run yet: health of run 0 is about nothing
    assert running.one(InstancesHealth("a", [healthy("web-1", 1, run=0.0)])).value == "0 recorded"
    # a run recorded other than the one the health is about clears it
    running.one(InstancesHealth("a", [healthy("web-1", 2, "unhealthy", run=70.0)]))
    assert instance(running, "web-1").health == "unhealthy"  # its start not recorded yet
    running.one(InstancesReport("a", [report("web-1", 1, started_at=80.0)]))
    assert instance(running, "web-1").health == ""


def test_a_new_runs_health_outlives_late_reports_of_the_run_before_and_its_start(running):
    """The monitor judges run 60 before the agent's reports commit: the old run's late
    report and the new run's `starting` keep the verdict, `running` shows it."""
    running.one(InstancesHealth("a", [healthy("web-0", 1, run=60.0)]))
    running.one(InstancesReport("a", [report("web-0", 2, "exited", started_at=50.0)]))
    running.one(InstancesReport("a", [report("web-0", 3, "starting", started_at=60.0)]))
    assert instance(running, "web-0").health == "healthy"
    running.one(InstancesReport("a", [report("web-0", 4, started_at=60.0)]))
    web0 = instance(running, "web-0")
    assert (web0.state, web0.health, web0.health_run) == ("running", "healthy", 60.0)


def test_health_needs_no_epoch_and_keeps_no_idempotency_record(running):
    again = Proposal("again", InstancesHealth("a", [healthy("web-0", 1)]))
    for value in ("1 recorded", "0 recorded"):
        running.index += 1
        [outcome] = running.machine.apply(running.index, encode_batch([again], ts=2000.0))
        assert outcome.ok and outcome.value == value
    kept = running.machine.db.execute("SELECT count(*) FROM proposals WHERE id = 'again'")
    assert kept.fetchone() == (0,)


def _one_by_one(registry: Registry) -> Registry:
    """`registry` applying every command one proposal at a time."""
    kinds = tuple(
        replace(k, commands=tuple(replace(h, apply_all=None) for h in k.commands))
        for k in registry.kinds
    )
    return Registry(kinds)


def test_a_burst_of_health_reports_applies_as_one_after_the_other_would(tmp_path):
    burst = [
        InstancesHealth("a", [healthy("web-0", 1), healthy("web-1", 1, run=70.0)]),
        InstancesHealth("a", [healthy("web-0", 2, "unhealthy"), healthy("web-0", 1)]),
        InstancesHealth("b", [healthy("web-0", 5), healthy("web-2", 1, run=70.0)]),
        InstancesHealth("a", [healthy("web-0", 3), healthy("web-0", 4, run=10.0)]),
    ]
    placements = [placement("web-0"), placement("web-1", slot=1), placement("web-2", "b", slot=2)]
    log = [
        [Proposal("grant", LeaseGrant("n1", 10.0, expected_epoch=0))],
        [Proposal("a", register("a")), Proposal("b", register("b"))],
        [Proposal("web", JobRun(spec(replicas=3)))],
        [Proposal("placed", InstancesPlace(placements), epoch=1)],
        [Proposal("run", InstancesReport("a", [report("web-0", 1, started_at=50.0)]))],
        [Proposal(f"h{i}", command) for i, command in enumerate(burst)],
    ]
    results = []
    for name, registry in (("together", REGISTRY), ("alone", _one_by_one(REGISTRY))):
        machine = Machine(tmp_path / name, kinds=registry)
        for index, proposals in enumerate(log, start=1):
            outcomes = machine.apply(index, encode_batch(proposals, ts=1000.0 + index))
        results.append((outcomes, machine.dump()))
        machine.close()
    (together, dump), (alone, expected) = results
    assert together == alone and dump == expected
    assert [o.value for o in together] == ["2 recorded", "1 recorded", "1 recorded", "1 recorded"]


def test_a_canary_placement_is_recorded_as_one(running):
    canary = msgspec.structs.replace(placement("web-9", slot=0), canary=True)
    assert running.manager(InstancesPlace([canary])).ok
    assert instance(running, "web-9").canary and not instance(running, "web-0").canary


# --- drain ---------------------------------------------------------------------------


def node(db: Db, name: str) -> NodeRecord:
    record, _version = nodes.read(db.machine.db, name)
    assert record is not None
    return record


def test_drain_then_drained_then_undrain(db):
    unknown = db.one(NodeDrain("ghost", True))
    assert not unknown.ok and "no node ghost is known" in unknown.error
    assert not db.manager(NodeDrained("ghost")).ok
    db.one(register("a"))
    drained = db.one(NodeDrain("a", True, deadline=600.0, reason="ann: new disk"))
    assert (drained.ok, drained.value) == (True, "draining")
    a = node(db, "a")
    assert (a.drain, a.eligible, a.drain_deadline, a.drain_reason) == (
        "draining", False, db.ts + 600.0, "ann: new disk",
    )  # fmt: skip
    assert not db.one(NodeDrained("a")).ok  # the manager's only
    assert db.manager(NodeDrained("a")).value == "drained"
    assert db.one(NodeDrain("a", True, deadline=0)).value == "drained"  # empty already
    assert node(db, "a").drain_deadline == 0.0
    assert db.one(register("a")).ok and node(db, "a").drain == "drained"  # re-registering keeps it

    assert db.one(NodeDrain("a", False)).value == "undrained"
    a = node(db, "a")
    assert (a.drain, a.eligible, a.drain_deadline, a.drain_reason) == ("", True, 0.0, "")
    versions = [v for id, v, _ in db.changes("node")]
    assert db.one(NodeDrain("a", False)).value == "undrained"  # no news: no change
    assert db.manager(NodeDrained("a")).value == "ignored"  # undrained meanwhile
    assert [v for id, v, _ in db.changes("node")] == versions
    assert db.changes("node")[-1][2]["drain"] == ""


def test_an_ineligible_node_drained_keeps_what_the_operator_said(db):
    db.one(register("a"))
    db.one(NodeEligibility("a", False, reason="flaky"))
    db.one(NodeDrain("a", True))
    assert (node(db, "a").reason, node(db, "a").eligible) == ("flaky", False)


# --- migration -----------------------------------------------------------------------


async def test_a_schema_9_file_gets_history_columns_and_its_jobs_go_on(tmp_path):
    """A file as part 1 left it: versions with no cause or outcome, records with no rollout."""
    path = tmp_path / "management.db"
    file = sqlite3.connect(path, isolation_level=None)
    schema.migrate(file, "management.db", [m for m in REGISTRY.migrations if m.version <= 9])
    assert schema.version(file) == 9
    old = {"name": "web", "version": 2, "file": "web.yaml", "replicas": 2, "status": "running"}
    file.execute(
        "INSERT INTO jobs (name, status, spec_version, version, record) VALUES (?, ?, ?, ?, ?)",
        ("web", "running", 2, 2, msgspec.json.encode(old)),
    )
    for version, command in ((1, "sleep"), (2, "sleepier")):
        file.execute(
            "INSERT INTO job_versions (name, version, spec, source, file, submitted) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            ("web", version, records.encode(spec(command=command)), "", "web.yaml", 10.0),
        )
    file.close()

    db = Db(path)
    assert schema.version(db.machine.db) == LATEST
    assert job(db).rollout is None and job(db).cause == ""
    assert [(v.version, v.cause, v.outcome, v.current) for v in await history(db)] == [
        (2, "", "", True), (1, "", "", False),
    ]  # fmt: skip
    assert "has no rollout running" in db.one(JobPromote("web")).error
    assert "no version before 2 whose rollout succeeded" in db.one(JobRollback("web")).error
    assert db.one(JobRollback("web", 1)).version == 3
    newest = (await history(db))[0]
    assert (newest.version, newest.cause) == (3, "rollback to version 1")
    assert job(db).rollout.previous == 2
    assert job(db).stable == 2  # it ran before rollouts: what auto_revert goes back to
    db.machine.close()
