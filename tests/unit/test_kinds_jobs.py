"""The nodes, jobs and instances kinds on a real Machine (SQLite, no network): each command's
good and bad cases, reports' ordering, reads with filters and pages, the change each write
records, and a schema-5 file migrating to them."""

from __future__ import annotations

import itertools
import json
import sqlite3
from dataclasses import replace

import aiosqlite
import msgspec
import pytest

from colony.consensus import schema
from colony.consensus.kinds import KINDS, REGISTRY, jobs, nodes
from colony.consensus.kinds.kind import Registry, Select
from colony.consensus.machine import Machine, encode_batch
from colony.shared.jobspec import JobSpec, Task
from colony.shared.messages import (
    FENCED,
    InstanceRecord,
    InstanceReport,
    InstancesPlace,
    InstancesRemove,
    InstancesReport,
    InstancesStop,
    JobBlocked,
    JobRecord,
    JobRun,
    JobScale,
    JobStop,
    KvPut,
    LeaseGrant,
    NodeEligibility,
    NodeLabel,
    NodeRecord,
    NodeRegister,
    NodeStatus,
    Outcome,
    Placement,
    Proposal,
)

_ids = itertools.count()
LATEST = len(schema.migrations(REGISTRY.migrations))


class Db:
    """A Machine, applied to entry by entry, with a manager lease at epoch 1."""

    def __init__(self, path, kinds: Registry = REGISTRY) -> None:
        self.machine = Machine(path, kinds=kinds)
        self.index = self.machine.last_applied
        self.ts = 1000.0
        if kinds.named("lease") and not self.machine.lease().holder:
            assert self.apply(LeaseGrant("n1", 10.0, expected_epoch=0))[0].ok

    def apply(self, *commands, epoch: int = 0) -> list[Outcome]:
        self.index += 1
        self.ts += 1
        proposals = [Proposal(f"p{next(_ids)}", c, epoch) for c in commands]
        return self.machine.apply(self.index, encode_batch(proposals, ts=self.ts))

    def one(self, command, epoch: int = 0) -> Outcome:
        [outcome] = self.apply(command, epoch=epoch)
        return outcome

    def manager(self, command) -> Outcome:
        return self.one(command, epoch=1)

    async def read(self, kind: str, id: str = "", **select) -> list:
        async with aiosqlite.connect(self.machine.path) as reader:
            index, found = await REGISTRY.named(kind).query(reader, Select(id, **select))
        assert index == self.index
        return found

    def changes(self, kind: str) -> list[tuple[str, int, dict]]:
        rows = self.machine.db.execute(
            "SELECT id, version, detail FROM changes WHERE kind = ? ORDER BY idx", (kind,)
        )
        return [(id, version, json.loads(detail)) for id, version, detail in rows]


@pytest.fixture
def db(tmp_path):
    db = Db(tmp_path / "management.db")
    yield db
    db.machine.close()


def register(node: str, cpu: float = 4.0, **fields) -> NodeRegister:
    return NodeRegister(
        node=node,
        name=fields.pop("name", node),
        address=fields.pop("address", "10.0.0.1"),
        cpu=cpu,
        memory=fields.pop("memory", 8 * 2**30),
        drivers=fields.pop("drivers", ["process"]),
        port_lo=fields.pop("port_lo", 20000),
        port_hi=fields.pop("port_hi", 20999),
    )


def spec(name: str = "web", replicas: int = 2, command: str = "sleep") -> JobSpec:
    return JobSpec(name=name, task=Task(command=command, args=["60"]), replicas=replicas)


def placement(id: str, node: str = "a", job: str = "web", version: int = 1, slot: int = 0):
    return Placement(
        id=id, job=job, version=version, slot=slot, node=node, cpu=0.1, memory=2**20,
        ports={"http": 20000}, reason="new job",
    )  # fmt: skip


def report(id: str, seq: int, state: str = "running", **fields) -> InstanceReport:
    return InstanceReport(id=id, state=state, seq=seq, **fields)


# --- nodes ---------------------------------------------------------------------------


async def test_a_node_registers_then_the_manager_records_its_status_and_both_stay(db):
    assert db.one(register("a")).version == 1
    [a] = await db.read("nodes", "a")
    record = msgspec.convert(a.value, NodeRecord)
    assert (a.version, record.status, record.eligible, record.cpu) == (1, "unknown", True, 4.0)
    assert record.registered == db.ts == record.changed

    refused = db.one(NodeStatus("a", "alive"))  # only on the manager's behalf
    assert not refused.ok and "needs the manager's epoch" in refused.error
    assert db.manager(NodeStatus("a", "alive", reason="membership")).version == 2
    assert db.manager(NodeStatus("a", "alive", reason="again")).version == 2  # no news
    assert db.one(NodeEligibility("a", False, reason="draining")).version == 3
    assert db.one(register("a", cpu=8.0)).version == 4  # capacity changes; the rest stays

    [a] = await db.read("nodes", "a")
    record = msgspec.convert(a.value, NodeRecord)
    assert (record.status, record.eligible, record.cpu, record.reason) == (
        "alive", False, 8.0, "draining",
    )  # fmt: skip
    assert [(id, v, d["status"], d["cpu"]) for id, v, d in db.changes("node")] == [
        ("a", 1, "unknown", 4.0),
        ("a", 2, "alive", 4.0),
        ("a", 3, "alive", 4.0),
        ("a", 4, "alive", 8.0),
    ]
    assert db.changes("node")[-1][2] == a.value  # the change carries the whole record


async def test_a_status_before_registering_keeps_the_node_unplaceable_until_it_registers(db):
    assert db.manager(NodeStatus("b", "alive")).ok
    assert not nodes.registered(db.machine.db, "b")
    db.one(register("b"))
    [b] = await db.read("nodes", "b")
    assert (b.value["status"], b.value["cpu"]) == ("alive", 4.0)
    assert nodes.registered(db.machine.db, "b")


def test_bad_node_commands_are_refused_with_the_reason(db):
    empty = db.one(register("a", port_lo=3000, port_hi=2000))
    assert not empty.ok and "port range 3000-2000 is empty" in empty.error
    unknown = db.one(NodeEligibility("ghost", False))
    assert not unknown.ok and "no node ghost is known" in unknown.error
    assert db.changes("node") == []


async def test_nodes_are_read_by_status_and_in_pages(db):
    for node in "abcde":
        db.one(register(node))
    for node in "bd":
        db.manager(NodeStatus(node, "dead"))
    dead = await db.read("nodes", where={"status": "dead"})
    assert [s.id for s in dead] == ["b", "d"]
    first = await db.read("nodes", limit=2)
    rest = await db.read("nodes", after=first[-1].id, limit=10)
    assert [s.id for s in first + rest] == list("abcde")
    assert await db.read("nodes", "nope") == []


# --- jobs ----------------------------------------------------------------------------


async def test_a_job_is_new_then_unchanged_then_updated_and_every_version_kept(db):
    first = db.one(JobRun(spec(), source="name: web\n", file="web.yaml"))
    assert (first.ok, first.value, first.version) == (True, "new", 1)
    same = db.one(JobRun(spec(), source="# a comment\nname: web\n"))
    assert (same.value, same.version) == ("unchanged", 1)
    assert len(db.changes("job")) == 1  # the same spec again records nothing
    update = db.one(JobRun(spec(replicas=3, command="sleepier"), source="v2"))
    assert (update.value, update.version) == ("update", 2)

    [web] = await db.read("jobs", "web")
    record = msgspec.convert(web.value, JobRecord)
    assert (web.version, record.version, record.replicas) == (2, 2, 3)
    assert (record.spec.task.command, record.source, record.status) == ("sleepier", "v2", "running")
    [old] = await db.read("jobs", "web", where={"version": "1"})
    old_record = msgspec.convert(old.value, JobRecord)
    assert (old_record.version, old_record.spec, old_record.source) == (1, spec(), "name: web\n")
    assert old_record.file == "web.yaml" and old_record.replicas == 3  # today's state
    assert await db.read("jobs", "web", where={"version": "7"}) == []

    # changes carry the record less spec and source
    [(_, v1, _), (_, v2, d2)] = db.changes("job")
    assert (v1, v2) == (1, 2) and "spec" not in d2 and "source" not in d2
    assert d2["version"] == 2 and d2["replicas"] == 3 and d2["file"] == ""


async def test_scale_stop_run_again_and_blocked(db):
    db.one(JobRun(spec(replicas=2)))
    assert db.one(JobScale("web", 5)).ok
    assert len(db.changes("job")) == 2
    assert db.one(JobScale("web", 5)).ok and len(db.changes("job")) == 2  # no news
    assert not db.one(JobBlocked("web", "no node fits")).ok  # the manager's only
    assert db.manager(JobBlocked("web", "2 nodes lack memory")).ok
    assert db.one(JobStop("web")).value == "stopped"
    refused = db.one(JobScale("web", 1))
    assert not refused.ok and "job web is stopped" in refused.error
    assert (await db.read("jobs", where={"status": "stopped"}))[0].value["replicas"] == 5
    again = db.one(JobRun(spec(replicas=2)))  # the same spec: it runs again, as scaled
    assert (again.value, again.version) == ("restart", 1)
    [web] = await db.read("jobs", where={"status": "running"})
    assert (web.value["replicas"], web.value["blocked"]) == (5, "2 nodes lack memory")
    assert [d["status"] for _, _, d in db.changes("job")] == ["running"] * 3 + [
        "stopped",
        "running",
    ]


def test_commands_on_an_unknown_job_are_refused(db):
    for command in (JobScale("nope", 1), JobStop("nope")):
        refused = db.one(command)
        assert not refused.ok and "no job nope" in refused.error
    assert not db.manager(JobBlocked("nope", "x")).ok


async def test_jobs_are_read_in_pages_without_their_source_and_by_version(db):
    for name in ("a", "b", "c"):
        db.one(JobRun(spec(name), source=f"name: {name}\n"))
    db.one(JobRun(spec("b", replicas=9)))
    listed = await db.read("jobs", limit=2)
    rest = await db.read("jobs", after="b")
    assert [s.id for s in listed + rest] == ["a", "b", "c"]
    assert all(s.value["source"] == "" for s in listed)  # a page holds no job files
    assert [s.id for s in await db.read("jobs", where={"version": "2"})] == ["b"]
    assert [s.id for s in await db.read("jobs", where={"version": "1"})] == ["a", "b", "c"]
    from colony.shared.runner import Refused

    with pytest.raises(Refused, match="whole number"):
        await db.read("jobs", where={"version": "x"})


def test_a_purged_job_with_no_instances_is_forgotten_at_once(db):
    db.one(JobRun(spec()))
    assert db.one(JobStop("web", purge=True)).value == "forgotten"
    assert jobs.read(db.machine.db, "web") == (None, 0)
    assert db.changes("job")[-1][:2] == ("web", 0)
    assert db.machine.db.execute("SELECT count(*) FROM job_versions").fetchone() == (0,)
    assert db.one(JobRun(spec())).value == "new"  # a name free again


# --- instances -----------------------------------------------------------------------


@pytest.fixture
def placed(db):
    """Nodes a and b registered, job web at version 1, instances web-0 and web-1 on a and
    web-2 on b."""
    db.one(register("a"))
    db.one(register("b"))
    db.one(JobRun(spec(replicas=3)))
    outcome = db.manager(
        InstancesPlace(
            [placement("web-0"), placement("web-1", slot=1), placement("web-2", "b", slot=2)]
        )
    )
    assert outcome.ok, outcome.error
    return db


async def test_placed_instances_are_pending_and_desired_to_run(placed):
    [web0] = await placed.read("instances", "web-0")
    record = msgspec.convert(web0.value, InstanceRecord)
    assert (web0.version, record.node, record.desired, record.state) == (1, "a", "run", "pending")
    assert (record.ports, record.desired_reason, record.placed) == (
        {"http": 20000}, "new job", placed.ts,
    )  # fmt: skip
    assert [(id, v, d["node"]) for id, v, d in placed.changes("instance")] == [
        ("web-0", 1, "a"), ("web-1", 1, "a"), ("web-2", 1, "b"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (placement("web-0"), "an instance web-0 exists already"),
        (placement("new", job="nope"), "job nope has no version 1"),
        (placement("new", version=2), "job web has no version 2"),
        (placement("new", node="c"), "node c is not registered"),
    ],
)
def test_a_placement_batch_applies_whole_or_not_at_all(placed, bad, why):
    before = len(placed.changes("instance"))
    refused = placed.manager(InstancesPlace([placement("fine", slot=4), bad]))
    assert not refused.ok and why in refused.error
    assert len(placed.changes("instance")) == before
    twice = placed.manager(InstancesPlace([placement("x"), placement("x")]))
    assert not twice.ok and "an instance x exists already" in twice.error
    assert not placed.one(InstancesPlace([placement("y")])).ok  # needs the manager's epoch


async def test_a_node_whose_status_alone_is_known_takes_no_placement(placed):
    placed.manager(NodeStatus("c", "alive"))
    refused = placed.manager(InstancesPlace([placement("web-9", node="c")]))
    assert not refused.ok and "node c is not registered" in refused.error


async def test_reports_apply_per_report_newer_seq_only_and_only_from_their_node(placed):
    outcome = placed.one(
        InstancesReport(
            node="a",
            reports=[
                report("web-0", 1, "starting"),
                report("web-0", 2, "running", pid=42, started_at=5.0),
                report("web-2", 1, "running"),  # placed on b
                report("gone", 7, "exited"),  # removed, or never: skipped
            ],
        )
    )
    assert outcome.ok and outcome.value == "2 recorded"
    assert outcome.error == "instance web-2 is placed on node b, not a"
    [web0] = await placed.read("instances", "web-0")
    assert (web0.version, web0.value["state"], web0.value["pid"], web0.value["seq"]) == (
        3, "running", 42, 2,
    )  # fmt: skip
    assert (await placed.read("instances", "web-2"))[0].value["state"] == "pending"

    # a late or re-sent report is older than what is recorded: nothing changes
    late = placed.one(InstancesReport(node="a", reports=[report("web-0", 1, "starting")]))
    assert late.ok and late.value == "0 recorded" and late.error == ""
    exited = InstancesReport(
        node="a", reports=[report("web-0", 3, "exited", exit_code=1, reason="it exited")]
    )
    assert placed.one(exited).value == "1 recorded"
    [web0] = await placed.read("instances", "web-0")
    assert (web0.value["state"], web0.value["exit_code"], web0.value["reason"]) == (
        "exited", 1, "it exited",
    )  # fmt: skip
    assert [v for id, v, _ in placed.changes("instance") if id == "web-0"] == [1, 2, 3, 4]

    many = InstancesReport(node="b", reports=[report("web-0", 10 + i) for i in range(12)])
    refused = placed.one(many)
    assert refused.value == "0 recorded" and refused.error.endswith(
        "placed on node a, not b; 2 more"
    )


async def test_stop_then_remove_and_a_purged_job_goes_with_its_last_instance(placed):
    assert not placed.one(InstancesStop(["web-0"], reason="x")).ok  # the manager's only
    refused = placed.manager(InstancesRemove(["web-0"]))
    assert not refused.ok and "instance web-0 (job web, node a) is desired to run" in refused.error

    assert placed.one(JobStop("web", purge=True)).value == "stopped"
    stopped = placed.manager(
        InstancesStop(["web-0", "web-1", "web-2", "gone"], reason="job stopped")
    )
    assert stopped.ok and stopped.value == "3 stopped"
    again = placed.manager(InstancesStop(["web-0"], reason="again"))
    assert again.value == "0 stopped"
    [web0] = await placed.read("instances", "web-0")
    assert (web0.value["desired"], web0.value["desired_reason"]) == ("stop", "job stopped")

    assert placed.manager(InstancesRemove(["web-0", "web-1", "gone"])).value == "2 removed"
    assert [s.id for s in await placed.read("jobs")] == ["web"]  # web-2 is left
    removed = [(id, v, d["node"]) for id, v, d in placed.changes("instance") if v == 0]
    assert removed == [("web-0", 0, "a"), ("web-1", 0, "a")]  # the agent sees its node
    assert placed.manager(InstancesRemove(["web-2"])).ok
    assert await placed.read("jobs") == [] and await placed.read("instances") == []
    assert placed.changes("job")[-1][:2] == ("web", 0)


async def test_instances_are_read_by_node_and_job_in_pages(placed):
    placed.one(JobRun(spec("db", replicas=1)))
    placed.manager(InstancesPlace([placement("db-0", "b", job="db")]))
    on_a = await placed.read("instances", where={"node": "a"})
    assert [s.id for s in on_a] == ["web-0", "web-1"]
    on_b_web = await placed.read("instances", where={"node": "b", "job": "web"})
    assert [s.id for s in on_b_web] == ["web-2"]
    pages, after = [], ""
    while page := await placed.read("instances", after=after, limit=3):
        pages.append([s.id for s in page])
        after = page[-1].id
    assert pages == [["db-0", "web-0", "web-1"], ["web-2"]]
    assert await placed.read("instances", "web-1", where={"node": "b"}) == []


def test_several_commands_in_one_entry_apply_each_on_its_own(db):
    db.one(register("a"))
    outcomes = db.apply(
        JobRun(spec()),
        JobScale("nope", 3),
        InstancesPlace([placement("web-0")]),
        InstancesReport(node="a", reports=[report("web-0", 1)]),
        epoch=1,
    )
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert [c[:2] for c in db.changes("instance")] == [("web-0", 1), ("web-0", 2)]


def _reports(registry: Registry, *, recorded: bool, together: bool) -> Registry:
    """`registry` with InstancesReport `recorded` or not, applied a run at a time or not."""
    kinds = []
    for kind in registry.kinds:
        commands = tuple(
            replace(h, recorded=recorded, apply_all=h.apply_all if together else None)
            if h.command is InstancesReport
            else h
            for h in kind.commands
        )
        kinds.append(replace(kind, commands=commands))
    return Registry(tuple(kinds))


@pytest.mark.parametrize("recorded", [False, True])
def test_a_run_of_reports_in_one_entry_applies_as_one_after_the_other_would(tmp_path, recorded):
    run = [  # (proposal id, command)
        ("r1", InstancesReport(node="a", reports=[report("web-0", 1, "starting")])),
        ("r2", InstancesReport(node="a", reports=[report("web-0", 2), report("web-1", 1)])),
        ("r3", InstancesReport(node="b", reports=[report("web-0", 5), report("web-2", 1)])),
        ("r1", InstancesReport(node="a", reports=[report("web-0", 1, "starting")])),  # again
        ("r4", InstancesReport(node="a", reports=[report("web-1", 1, "exited")])),  # stale
        ("k1", KvPut("between", "1")),  # ends the run
        ("r5", InstancesReport(node="b", reports=[report("web-2", 2, "exited", exit_code=0)])),
    ]
    placements = [placement("web-0"), placement("web-1", slot=1), placement("web-2", "b", slot=2)]
    log = [
        [Proposal("grant", LeaseGrant("n1", 10.0, expected_epoch=0))],
        [Proposal("a", register("a")), Proposal("b", register("b"))],
        [Proposal("web", JobRun(spec(replicas=3)))],
        [Proposal("placed", InstancesPlace(placements), epoch=1)],
        [Proposal(id, command) for id, command in run],
    ]
    results = []
    for together in (True, False):
        machine = Machine(
            tmp_path / str(together),
            kinds=_reports(REGISTRY, recorded=recorded, together=together),
        )
        for index, proposals in enumerate(log, start=1):
            outcomes = machine.apply(index, encode_batch(proposals, ts=1000.0 + index))
        results.append((outcomes, machine.dump()))
        machine.close()
    (together, dump), (alone, expected) = results
    assert together == alone and dump == expected
    # recorded, r1 again gets its first outcome back; else it applies again: nothing new
    again = "1 recorded" if recorded else "0 recorded"
    assert [o.value for o in together] == [
        "1 recorded", "2 recorded", "1 recorded", again, "0 recorded", "1", "1 recorded",
    ]  # fmt: skip
    assert together[2].error == "instance web-0 is placed on node a, not b"


def test_reports_keep_no_idempotency_record_applying_one_twice_changes_nothing(placed):
    again = Proposal("again", InstancesReport(node="a", reports=[report("web-0", 1)]))
    for value in ("1 recorded", "0 recorded"):
        placed.index += 1
        [outcome] = placed.machine.apply(placed.index, encode_batch([again], ts=2000.0))
        assert outcome.ok and outcome.value == value
    kept = placed.machine.db.execute("SELECT count(*) FROM proposals WHERE id = 'again'")
    assert kept.fetchone() == (0,)
    assert [v for id, v, _ in placed.changes("instance") if id == "web-0"] == [1, 2]


def test_a_run_of_reports_with_one_that_fails_refuses_that_one_alone(placed, monkeypatch):
    real = Machine._changed

    def changed(self, txn, kind, changes):
        if txn.proposal.id == "bad":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(self, txn, kind, changes)

    monkeypatch.setattr(Machine, "_changed", changed)
    proposals = [
        Proposal("good-1", InstancesReport(node="a", reports=[report("web-0", 1)])),
        Proposal("bad", InstancesReport(node="a", reports=[report("web-1", 1)])),
        Proposal("good-2", InstancesReport(node="b", reports=[report("web-2", 1)])),
    ]
    placed.index += 1
    outcomes = placed.machine.apply(placed.index, encode_batch(proposals, ts=2000.0))
    assert [o.ok for o in outcomes] == [True, False, True]
    assert "OverflowError" in outcomes[1].error
    versions = {id: v for id, v, _ in placed.changes("instance")}
    assert versions == {"web-0": 2, "web-1": 1, "web-2": 2}


def test_voters_applying_the_same_log_hold_the_same_database(tmp_path):
    log = [
        (LeaseGrant("n1", 10.0, expected_epoch=0), 0),
        (register("a"), 0),
        (JobRun(spec()), 0),
        (InstancesPlace([placement("web-0"), placement("web-1", slot=1)]), 1),
        (InstancesReport(node="a", reports=[report("web-0", 1), report("web-1", 1)]), 0),
        (InstancesStop(["web-1"], reason="scaled to 1"), 1),
        (JobStop("web", purge=True), 0),
    ]
    entries = [
        encode_batch([Proposal(f"p{i}", command, epoch)], ts=1000.0 + i)
        for i, (command, epoch) in enumerate(log)
    ]
    dumps = []
    for name in ("one", "two"):
        machine = Machine(tmp_path / name)
        for index, entry in enumerate(entries, start=1):
            assert machine.apply(index, entry)[0].ok
        dumps.append(machine.dump())
        machine.close()
    assert dumps[0] == dumps[1]
    assert any('INSERT INTO "instances"' in line for line in dumps[0])


# --- migrations ----------------------------------------------------------------------


async def test_a_schema_5_file_migrates_to_the_new_kinds_and_keeps_its_data(tmp_path):
    path = tmp_path / "management.db"
    before = Registry(tuple(k for k in KINDS if k.name not in ("nodes", "jobs", "instances")))
    old = Db(path, kinds=before)
    old.one(KvPut("a", "1"))
    old.one(NodeLabel("a", {"disk": "ssd"}))
    assert schema.version(old.machine.db) == 5
    old.machine.close()

    db = Db(path)
    assert schema.version(db.machine.db) == LATEST
    assert db.machine.read("a") == ("1", 1) and db.machine.lease().epoch == 1
    assert [s.value for s in await db.read("labels")] == [{"disk": "ssd"}]
    db.one(register("a"))
    assert db.one(JobRun(spec())).ok
    assert db.manager(InstancesPlace([placement("web-0")])).ok
    assert [s.id for s in await db.read("instances", where={"node": "a"})] == ["web-0"]
    db.machine.close()
    with sqlite3.connect(path) as file:
        assert {"nodes", "jobs", "job_versions", "instances"} <= {
            name for (name,) in file.execute("SELECT name FROM sqlite_master")
        }
    file.close()


def test_a_schema_8_file_counts_the_instances_its_jobs_have(tmp_path):
    path = tmp_path / "management.db"
    db = Db(path)
    db.one(register("a"))
    db.one(JobRun(spec()))
    db.one(JobRun(spec("idle")))
    assert db.manager(InstancesPlace([placement("web-0"), placement("web-1", slot=1)])).ok
    db.machine.close()
    with sqlite3.connect(path) as file:  # as schema 8 left it: no count
        file.execute("ALTER TABLE jobs DROP COLUMN instances")
        for column in ("cause", "outcome", "reason"):  # nor history (schema 10)
            file.execute(f"ALTER TABLE job_versions DROP COLUMN {column}")
        file.execute("PRAGMA user_version = 8")
    file.close()

    db = Db(path)
    assert schema.version(db.machine.db) == LATEST
    assert db.one(JobStop("idle", purge=True)).value == "forgotten"
    assert db.one(JobStop("web", purge=True)).value == "stopped"  # it has two
    db.manager(InstancesStop(["web-0", "web-1"], reason="job stopped"))
    assert db.manager(InstancesRemove(["web-0"])).ok
    assert jobs.read(db.machine.db, "web")[0] is not None
    assert db.manager(InstancesRemove(["web-1"])).ok
    assert jobs.read(db.machine.db, "web") == (None, 0)
    db.machine.close()


def test_the_jobs_kind_reads_only_its_own_tables(db):
    """It learns how many instances a job has from the instances kind (`jobs.counted`)."""
    reads: list[str] = []

    def note(action: int, table: str | None, *_) -> int:
        if action == sqlite3.SQLITE_READ:
            reads.append(table or "")
        return sqlite3.SQLITE_OK

    db.machine.db.set_authorizer(note)
    db.one(JobRun(spec()))
    db.one(JobStop("web", purge=True))
    db.machine.db.set_authorizer(None)
    assert "instances" not in reads and "jobs" in reads


def test_a_write_at_an_epoch_not_the_managers_is_refused_with_code_fenced(db):
    db.one(register("a"))
    db.one(JobRun(spec()))
    stale = db.one(InstancesStop(["web-0"], reason="x"), epoch=2)  # the lease is at 1
    assert not stale.ok and stale.code == FENCED and "never granted" in stale.error
    unknown = db.manager(InstancesPlace([placement("web-0", version=7)]))
    assert not unknown.ok and unknown.code == "" and "has no version 7" in unknown.error
    unfenced = db.one(InstancesStop(["web-0"], reason="x"))
    assert not unfenced.ok and unfenced.code == ""  # no epoch at all: not a deposed manager
