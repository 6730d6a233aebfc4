"""The curator's rollout and drain rules (pure reconcile, views built by hand): a small
world stands in for the jobs, instances and nodes kinds (it applies the commands the
way they do) and for the agents and monitors (instances start and turn healthy when a
test says so), and a clock that tests move. Every round checks idempotency: applying
what a reconcile decided and reconciling again at the same time decides nothing."""

from __future__ import annotations

import itertools
from collections import Counter

import msgspec
import pytest

from colony.curator.reconcile import Actions, plan, reconcile
from colony.curator.view import View
from colony.shared.jobspec import (
    JobResources,
    JobSpec,
    RestartPolicy,
    Task,
    UpdateStrategy,
    replaces_instances,
)
from colony.shared.messages import (
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobPromote,
    JobRecord,
    JobRollback,
    NodeDrained,
    NodeRecord,
    NodeStatus,
    Rollout,
    RolloutProgress,
    placed_instance,
)
from colony.shared.reservations import TERMINAL

GiB = 2**30
T0 = 10_000.0


def node(id: str, cpu: float = 4.0) -> NodeRecord:
    return NodeRecord(
        node=id,
        name=id,
        cpu=cpu,
        memory=16 * GiB,
        drivers=["process"],
        port_lo=20000,
        port_hi=20099,
        status="alive",
    )


def spec(
    replicas: int = 4,
    args: str = "1",
    cpu: float = 1.0,
    then: str = "reschedule",
    **update,
) -> JobSpec:
    update.setdefault("min_healthy_time", 10.0)
    return JobSpec(
        name="web",
        task=Task(command="server", args=[args]),
        replicas=replicas,
        resources=JobResources(cpu=cpu, memory=GiB),
        ports=["http"],
        restart=RestartPolicy(then=then),  # type: ignore[arg-type]
        update=UpdateStrategy(**update),
    )


class World:
    """The management database's kinds, the agents and the monitors, in memory."""

    def __init__(self, nodes: list[NodeRecord]) -> None:
        self.view = View()
        self.view.nodes = {n.node: n for n in nodes}
        self.now = T0
        self.ids = itertools.count(1)
        self.history: list[Actions] = []

    def token(self) -> str:
        return f"{next(self.ids):04x}"

    # --- the jobs kind ----------------------------------------------------------------

    @property
    def job(self) -> JobRecord:
        return self.view.jobs["web"]

    def submit(self, new: JobSpec, cause: str = "", canaries: bool = True) -> None:
        """JobRun: a new job, or a new version with its rollout (as the jobs kind does; a
        rollback runs no canaries)."""
        old = self.view.jobs.get(new.name)
        version = old.version + 1 if old else 1
        live = [i for i in self.view.instances.values() if i.desired == "run"]
        replaces = any(replaces_instances(self.view.specs[(i.job, i.version)], new) for i in live)
        canaries = new.update.canary if replaces and live and canaries else 0
        rollout = Rollout(
            version=version,
            previous=old.version if old else 0,
            canaries=canaries,
            promoted=canaries == 0,
            started=self.now,
        )
        self.view.specs[(new.name, version)] = new
        self.view.jobs[new.name] = JobRecord(
            name=new.name,
            version=version,
            spec=new,
            replicas=new.replicas,
            cause=cause,
            rollout=rollout,
            stable=old.stable if old else 0,
        )

    def rollout(self, **fields) -> None:
        self.view.jobs["web"] = msgspec.structs.replace(
            self.job, rollout=msgspec.structs.replace(self.job.rollout, **fields)
        )

    def apply(self, actions: Actions) -> None:
        for command in actions.commands():
            self.command(command)

    def command(self, command) -> None:
        view = self.view
        match command:
            case NodeStatus(node=id, status=status):
                view.nodes[id] = msgspec.structs.replace(view.nodes[id], status=status)
            case NodeDrained(node=id):
                view.nodes[id] = msgspec.structs.replace(view.nodes[id], drain="drained")
            case JobPromote():
                assert not self.job.rollout.promoted, "promoted twice"
                self.rollout(promoted=True)
            case RolloutProgress(version=version) as p:
                rollout = self.job.rollout
                reverts = rollout.status == "failed" and p.status == "reverted"
                if version != rollout.version or (rollout.status != "running" and not reverts):
                    return  # ignored, as the jobs kind does
                fields = msgspec.structs.asdict(p)
                del fields["job"], fields["version"]
                self.rollout(**fields)
                if p.status == "succeeded":
                    self.view.jobs["web"] = msgspec.structs.replace(self.job, stable=version)
            case JobRollback(version=version, cause=cause):
                stable = self.job.stable
                self.submit(view.specs[("web", version)], cause, canaries=False)
                self.view.jobs["web"] = msgspec.structs.replace(self.job, stable=stable)
            case InstancesPlace(placements=placements):
                for p in placements:
                    assert p.id not in view.instances
                    view.instances[p.id] = placed_instance(p, self.now)
            case InstancesStop(ids=ids, reason=reason):
                for id in ids:
                    view.instances[id] = msgspec.structs.replace(
                        view.instances[id], desired="stop", desired_reason=reason
                    )
            case JobBlocked(reason=reason):
                self.view.jobs["web"] = msgspec.structs.replace(self.job, blocked=reason)
            case InstancesRemove(ids=ids):
                for id in ids:
                    del view.instances[id]
            case _:
                raise AssertionError(f"unexpected command {command}")

    # --- the manager ------------------------------------------------------------------

    def round(self) -> Actions:
        """Reconcile at `now`, commit, and check that reconciling again decides nothing."""
        self.view.now = self.now
        actions = reconcile(self.view, self.token)
        self.apply(actions)
        again = reconcile(self.view, self.token)
        # A rollback makes a new version, whose rollout starts in the next round.
        assert not again or actions.rollbacks, f"not idempotent: then decided {again}"
        self.history.append(actions)
        return actions

    # --- the agents and monitors --------------------------------------------------------

    def instances(self, **where) -> list[InstanceRecord]:
        return sorted(
            (
                i
                for i in self.view.instances.values()
                if all(getattr(i, k) == v for k, v in where.items())
            ),
            key=lambda i: (i.slot, i.id),
        )

    def set(self, i: InstanceRecord, **fields) -> None:
        self.view.instances[i.id] = msgspec.structs.replace(self.view.instances[i.id], **fields)

    def agents(self, healthy: bool = True) -> None:
        """Stopped instances exit; placed ones start, and (if `healthy`) turn healthy."""
        for i in list(self.view.instances.values()):
            if i.desired == "stop" and i.state not in TERMINAL:
                self.set(i, state="exited", exit_code=0)
            elif i.desired == "run" and i.state == "pending":
                self.set(i, state="running", started_at=self.now)
                if healthy:
                    self.set(i, health="healthy", healthy_since=self.now, health_run=self.now)

    def ready(self) -> list[InstanceRecord]:
        mht = self.job.spec.update.min_healthy_time
        return [
            i
            for i in self.view.instances.values()
            if i.desired == "run"
            and i.state == "running"
            and i.health == "healthy"
            and self.now - i.healthy_since >= mht
        ]

    def running_job(self, replicas: int = 4, **update) -> None:
        """Job web version 1, all of its instances ready, its rollout succeeded."""
        self.submit(spec(replicas, **update))
        self.round()
        self.agents()
        self.now += 60
        assert self.round().progress[-1].status == "succeeded"
        assert self.job.stable == 1


NODES = [node(f"node-{n}") for n in range(1, 5)]


def invariants(world: World, replicas: int, max_parallel: int) -> None:
    """Never two instances of one slot at one version desired run; never fewer than
    replicas - max_parallel ready instances."""
    live = Counter((i.slot, i.version) for i in world.instances(desired="run"))
    assert max(live.values(), default=0) == 1, live
    assert len(world.ready()) >= replicas - max_parallel


def test_a_rolling_update_replaces_max_parallel_at_a_time_new_beside_old():
    world = World(NODES)
    world.running_job(replicas=5, max_parallel=2)
    world.submit(spec(5, args="2", max_parallel=2))
    batches: list[list[int]] = []
    for _ in range(40):
        actions = world.round()
        invariants(world, 5, 2)
        if actions.places:
            batches.append([p.slot for p in actions.places])
            assert all(p.version == 2 and p.replaces for p in actions.places)
            stopped = {world.view.instances[id].slot for id in actions.stops}
            assert not stopped & set(batches[-1]), "nothing stops before its replacement"
        if world.job.rollout.status != "running":
            break
        world.agents()
        world.now += 5
    assert batches == [[0, 1], [2, 3], [4]]
    assert world.job.rollout.status == "succeeded" and world.job.rollout.batch == 3
    assert world.job.stable == 2
    assert {i.version for i in world.instances(desired="run")} == {2}
    assert len(world.instances(desired="run")) == 5


def test_a_batch_waits_min_healthy_time_and_wake_says_when():
    world = World(NODES)
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1, min_healthy_time=30.0))
    first = world.round()
    assert [p.slot for p in first.places] == [0]
    assert world.job.rollout.batch == 1 and world.job.rollout.batch_started == world.now
    world.agents()  # healthy now, ready 30 s later
    waiting = world.round()
    assert not waiting and waiting.wake == world.now + 30.0
    world.now += 29.0
    assert not world.round()
    world.now += 1.0
    ready = world.round()
    [old] = [i for i in world.instances(slot=0) if i.version == 1]
    assert ready.stops == {old.id: f"updated to version 2: {first.places[0].id} is healthy"}
    assert [p.slot for p in ready.places] == [1]  # the next batch in the same round
    assert world.job.rollout.batch == 2


def test_progress_is_recorded_only_when_it_changed():
    world = World(NODES)
    world.running_job(replicas=3, max_parallel=3)
    world.submit(spec(3, args="2", max_parallel=3))
    started = world.round()
    [progress] = started.progress
    assert (progress.batch, progress.placed, progress.healthy) == (1, 3, 0)
    assert not world.round()  # nothing new: nothing recorded
    world.agents()
    world.now += 5.0
    assert not world.round().progress  # healthy, not for min_healthy_time yet
    world.now += 5.0
    done = world.round()
    assert [p.status for p in done.progress] == ["succeeded"]
    assert done.progress[0].healthy == 3 and len(done.stops) == 3


def test_an_in_place_update_replaces_nothing_and_succeeds_at_once():
    world = World(NODES)
    world.running_job(replicas=3)
    before = set(world.view.instances)
    world.submit(msgspec.structs.replace(spec(3), meta={"team": "a"}))
    actions = world.round()
    assert not actions.places and not actions.stops
    assert [p.status for p in actions.progress] == ["succeeded"]
    assert set(world.view.instances) == before and world.job.stable == 2


def test_scaling_up_in_place_places_the_new_slots_at_the_new_version_at_once():
    world = World(NODES)
    world.running_job(replicas=2)
    world.submit(spec(4))
    actions = world.round()
    assert sorted((p.slot, p.version, p.replaces) for p in actions.places) == [
        (2, 2, ""),
        (3, 2, ""),
    ]
    world.agents()
    world.now += 10
    assert world.round().progress[-1].status == "succeeded"


def test_a_new_job_is_placed_at_once_and_succeeds_when_all_are_ready():
    world = World(NODES)
    world.submit(spec(3, max_parallel=1))
    actions = world.round()
    assert len(actions.places) == 3 and world.job.rollout.batch == 0
    world.agents()
    world.now += 10
    assert [p.status for p in world.round().progress] == ["succeeded"]


def test_a_new_job_whose_instance_fails_fails_without_a_revert():
    world = World(NODES)
    world.submit(spec(2, auto_revert=True))
    world.round()
    world.agents(healthy=False)
    first = world.instances()[0]
    world.set(first, health="unhealthy", health_check="http /health", health_output="500")
    failed = world.round()
    assert [(p.status, p.reason) for p in failed.progress] == [
        ("failed", f"instance {first.id} unhealthy: http /health: 500")
    ]
    assert not failed.rollbacks


def test_a_job_without_a_rollout_record_replaces_older_instances_at_once():
    world = World(NODES)
    world.running_job(replicas=2)
    world.submit(spec(2, args="2"))
    world.view.jobs["web"] = msgspec.structs.replace(world.job, rollout=None)
    actions = world.round()
    assert len(actions.places) == 2 and len(actions.stops) == 2 and not actions.progress


# --- canaries ------------------------------------------------------------------------


def test_a_canary_runs_beside_the_old_instance_until_promoted():
    world = World(NODES)
    world.running_job(replicas=3, canary=1)
    old = {i.slot: i for i in world.instances()}
    world.submit(spec(3, args="2", canary=1))
    assert world.job.rollout.canaries == 1 and not world.job.rollout.promoted
    first = world.round()
    [canary] = first.places
    assert (canary.slot, canary.canary, canary.replaces) == (0, True, old[0].id)
    assert not first.stops
    assert world.view.instances[canary.id].canary
    world.agents()
    world.now += 60  # ready: waits for the operator
    waiting = world.round()
    assert not waiting.promotes and not waiting.stops and not waiting.places
    assert world.view.instances[old[0].id].desired == "run"
    world.command(JobPromote(job="web"))  # colony job promote web
    promoted = world.round()
    assert promoted.stops == {old[0].id: f"updated to version 2: {canary.id} is healthy"}
    assert [p.slot for p in promoted.places] == [1]
    assert world.job.rollout.batch == 1


def test_auto_promote_promotes_healthy_canaries_and_starts_the_first_batch():
    world = World(NODES)
    world.running_job(replicas=3, canary=2, auto_promote=True, max_parallel=1)
    world.submit(spec(3, args="2", canary=2, auto_promote=True, max_parallel=1))
    canaries = world.round().places
    assert [(p.slot, p.canary) for p in canaries] == [(0, True), (1, True)]
    world.agents()
    world.now += 5
    assert not world.round().promotes  # healthy for 5 s of 10
    world.now += 5
    actions = world.round()
    assert actions.promotes == [
        JobPromote(job="web", reason="2 canaries of version 2 healthy (auto_promote)", version=2)
    ]
    assert len(actions.stops) == 2 and [p.slot for p in actions.places] == [2]
    assert [type(c) for c in actions.commands()][:2] == [JobPromote, RolloutProgress]


def test_a_failing_canary_reverts_to_the_stable_version_in_one_proposal():
    world = World(NODES)
    world.running_job(replicas=3, canary=1, auto_revert=True)
    old = {i.id for i in world.instances()}
    world.submit(spec(3, args="2", canary=1, auto_revert=True))
    [canary] = world.round().places
    world.agents(healthy=False)
    world.set(
        world.view.instances[canary.id],
        health="unhealthy",
        health_check="http /health",
        health_output="500",
    )
    actions = world.round()
    reason = f"instance {canary.id} unhealthy: http /health: 500"
    commands = actions.commands()
    assert commands[:3] == [
        RolloutProgress(job="web", version=2, status="failed", reason=reason, placed=1),
        RolloutProgress(
            job="web",
            version=2,
            status="reverted",
            reason=f"reverted to version 1: {reason}",
            placed=1,
        ),
        JobRollback(
            job="web", version=1, cause=f"auto-revert: version 2 failed: {reason}", from_version=2
        ),
    ]
    assert not actions.stops and not actions.places  # the old ones were never touched
    # Version 3 is version 1's spec: the old instances are current; the canary goes.
    assert world.job.version == 3 and world.job.rollout.status == "running"
    assert world.job.rollout.canaries == 0  # a rollback runs no canaries
    for _ in range(10):
        world.agents()
        world.now += 10
        if world.round().progress[-1:] and world.job.rollout.status != "running":
            break
    assert world.job.rollout.status == "succeeded" and world.job.stable == 3
    assert {i.id for i in world.instances(desired="run")} == old


def test_a_failure_recorded_without_its_revert_is_reverted_by_the_next_round():
    """A manager that died after committing the failure, before the revert: the next
    one sees a failed rollout with auto_revert and makes the revert."""
    world = World(NODES)
    world.running_job(replicas=2, auto_revert=True)
    world.submit(spec(2, args="2", auto_revert=True))
    world.round()
    world.rollout(status="failed", reason="instance web-0-0009 unhealthy")
    actions = world.round()
    assert [p.status for p in actions.progress] == ["reverted"]
    cause = "auto-revert: version 2 failed: instance web-0-0009 unhealthy"
    assert actions.rollbacks == [JobRollback(job="web", version=1, cause=cause, from_version=2)]
    assert world.job.version == 3


def test_auto_revert_without_a_stable_version_just_fails():
    world = World(NODES)
    world.running_job(replicas=2, auto_revert=True)
    world.view.jobs["web"] = msgspec.structs.replace(world.job, stable=0)
    world.submit(spec(2, args="2", auto_revert=True))
    [new] = world.round().places
    world.agents(healthy=False)
    world.set(world.view.instances[new.id], state="failed", reason="exit code 3")
    actions = world.round()
    assert [(p.status, p.reason) for p in actions.progress] == [
        ("failed", f"instance {new.id} failed on node {new.node}: exit code 3")
    ]
    assert not actions.rollbacks and world.job.version == 2


# --- deadlines, halted rollouts -------------------------------------------------------


def test_a_healthy_deadline_passing_mid_batch_fails_the_rollout_and_halts_it():
    world = World(NODES)
    world.running_job(replicas=4, max_parallel=2)
    world.submit(spec(4, args="2", max_parallel=2, healthy_deadline=120.0))
    first = world.round()
    world.agents(healthy=False)  # they run, no check ever passes
    world.now += 60
    waiting = world.round()
    assert not waiting and waiting.wake == T0 + 60 + 120.0  # placed a minute ago
    world.now = waiting.wake
    failed = world.round()
    [progress] = failed.progress
    assert (progress.status, progress.reason) == (
        "failed",
        f"instance {first.places[0].id} not healthy within 2m",
    )
    assert not failed.stops and not failed.places
    # Halted: no further batch, no old instance stopped, even once the new ones are ready.
    for i in world.instances(version=2):
        world.set(i, health="healthy", healthy_since=world.now)
    world.now += 600
    assert not world.round()
    assert len(world.instances(version=1, desired="run")) == 4


def test_a_progress_deadline_passing_mid_batch_says_which_batch():
    world = World(NODES)
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1, progress_deadline=60.0))
    world.round()
    world.agents()
    world.now += 10
    second = world.round()  # batch 1 ready: batch 2 starts
    assert world.job.rollout.batch == 2
    world.agents(healthy=False)
    assert second.wake == world.now + 60.0
    world.now += 60
    [progress] = world.round().progress
    assert (progress.status, progress.reason) == ("failed", "batch 2 not healthy within 1m")


def test_a_failed_new_instance_follows_its_restart_policy_in_a_halted_rollout():
    world = World(NODES)
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1))
    [new] = world.round().places
    world.agents(healthy=False)
    world.set(world.view.instances[new.id], state="failed", exit_code=1)
    actions = world.round()
    assert actions.progress[0].status == "failed"
    [again] = actions.places  # rescheduled beside the old one, which keeps running
    assert (again.slot, again.replaces, again.node != new.node) == (0, new.id, True)
    assert actions.stops == {new.id: f"restarts ran out on node {new.node}: exit code 1"}
    assert len(world.instances(version=1, desired="run")) == 2


def test_a_batch_with_no_room_beside_stops_the_old_instance_first():
    world = World([node("node-1", cpu=1.0), node("node-2", cpu=1.0)])
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1))
    first = world.round()
    [old] = [i for i in world.instances(slot=0) if i.version == 1]
    assert first.stops == {old.id: "batch 1 of version 2: no room beside it"}
    assert not first.places
    [blocked] = first.blocked
    assert blocked.reason.startswith("1 of 2 instances cannot be placed")
    world.agents()  # the old one exits
    placed = world.round()
    [p] = placed.places
    assert (p.slot, p.node, p.replaces) == (0, old.node, old.id)
    assert placed.blocked == [JobBlocked(job="web", reason="")]
    assert placed.removes == [old.id]
    for _ in range(10):
        world.agents()
        world.now += 10
        world.round()
        assert len(world.ready()) >= 1
        if world.job.rollout.status != "running":
            break
    assert world.job.rollout.status == "succeeded"


def test_a_newer_version_mid_rollout_replaces_both_older_ones():
    world = World(NODES)
    world.running_job(replicas=3, max_parallel=1)
    world.submit(spec(3, args="2", max_parallel=1))
    world.round()
    world.agents()
    world.submit(spec(3, args="3", max_parallel=1))  # version 2's rollout superseded
    for _ in range(20):
        world.round()
        invariants(world, 3, 1)
        if world.job.rollout.status != "running":
            break
        world.agents()
        world.now += 10
    assert world.job.rollout.status == "succeeded"
    assert {i.version for i in world.instances(desired="run")} == {3}


def test_of_two_older_instances_in_a_slot_the_ready_one_stays_not_the_broken_newer_one():
    world = World(NODES)
    world.running_job(replicas=1, max_parallel=1)
    [v1] = world.instances()
    world.submit(spec(1, args="2", max_parallel=1))
    [v2] = world.round().places
    world.agents(healthy=False)
    world.set(world.view.instances[v2.id], health="unhealthy", health_output="500")
    assert world.round().progress[0].status == "failed"
    world.submit(spec(1, args="3", max_parallel=1))  # the user's fix
    actions = world.round()
    assert v1.id not in actions.stops and v2.id in actions.stops
    assert [p.version for p in actions.places] == [3]


def test_scaling_a_running_rollout_up_places_the_new_slots_at_once():
    world = World(NODES)
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1))
    world.round()
    world.view.jobs["web"] = msgspec.structs.replace(world.job, replicas=4)
    actions = world.round()
    assert sorted(p.slot for p in actions.places) == [2, 3]


# --- drain -------------------------------------------------------------------------------


def drain(world: World, id: str, deadline: float = 0.0) -> None:
    """NodeDrain, as the nodes kind applies it."""
    world.view.nodes[id] = msgspec.structs.replace(
        world.view.nodes[id],
        drain="draining",
        eligible=False,
        drain_deadline=world.now + deadline if deadline else 0.0,
    )


def test_draining_the_node_of_a_jobs_only_instance_places_its_replacement_first():
    world = World(NODES)
    world.running_job(replicas=1)
    [only] = world.instances()
    drain(world, only.node)
    first = world.round()
    [replacement] = first.places
    assert replacement.node != only.node and replacement.replaces == only.id
    assert replacement.reason == f"node {only.node} is draining: replaces {only.id}"
    assert not first.stops and not first.drained
    world.agents(healthy=False)
    world.now += 100
    assert not world.round()  # not healthy: the old one keeps serving
    world.set(world.view.instances[replacement.id], health="healthy", healthy_since=world.now)
    waiting = world.round()
    assert not waiting and waiting.wake == world.now + 10
    world.now += 10
    ready = world.round()
    assert ready.stops == {only.id: f"node {only.node} is draining: {replacement.id} replaced it"}
    assert not ready.drained  # still running there
    world.agents()
    gone = world.round()
    assert gone.removes == [only.id] and gone.drained == [NodeDrained(node=only.node)]


def test_a_drain_migrates_max_parallel_of_a_job_at_a_time():
    world = World([node("node-1", cpu=8.0), node("node-2", cpu=8.0)])
    world.submit(spec(4, max_parallel=2))
    world.round()
    world.agents()
    world.now += 10
    world.round()
    # Move them all to node-1, so that draining it moves the whole job.
    for i in world.instances():
        world.set(i, node="node-1")
    drain(world, "node-1")
    moved: list[list[int]] = []
    for _ in range(10):
        actions = world.round()
        doubled = Counter(i.slot for i in world.instances(desired="run"))
        assert len([s for s, n in doubled.items() if n > 1]) <= 2
        assert len(world.ready()) >= 4
        moved.append(sorted(p.slot for p in actions.places))
        if actions.drained:
            break
        world.agents()
        world.now += 10
    assert [m for m in moved if m] == [[0, 1], [2, 3]]
    assert actions.drained == [NodeDrained(node="node-1")]
    assert {i.node for i in world.instances(desired="run")} == {"node-2"}


def test_past_its_drain_deadline_everything_left_on_the_node_stops_at_once():
    world = World([node("node-1", cpu=8.0), node("node-2", cpu=8.0)])
    world.submit(spec(3, max_parallel=1))
    world.round()
    world.agents()
    world.now += 10
    world.round()
    for i in world.instances():
        world.set(i, node="node-1")
    drain(world, "node-1", deadline=300.0)
    first = world.round()
    assert len(first.places) == 1 and first.wake == T0 + 10 + 300.0
    world.now += 300
    late = world.round()
    reason = "node node-1 is draining and its deadline passed"
    assert list(late.stops.values()) == [reason] * 3  # slot 0's replacement is not ready
    assert sorted(p.slot for p in late.places) == [1, 2]
    world.agents()  # they exit
    world.now += 10
    empty = world.round()
    assert len(empty.removes) == 3 and empty.drained == [NodeDrained(node="node-1")]


def test_a_draining_node_gets_no_new_instance():
    world = World([node("node-1"), node("node-2")])
    drain(world, "node-2")
    world.submit(spec(3))
    actions = world.round()
    assert {p.node for p in actions.places} == {"node-1"}
    assert actions.drained == [NodeDrained(node="node-2")]  # it held nothing


# --- plan ------------------------------------------------------------------------------


def test_a_plan_says_what_the_update_replaces_and_how():
    world = World(NODES)
    world.running_job(replicas=4, max_parallel=2, canary=1)
    replacing = plan(world.view, spec(4, args="2", max_parallel=2, canary=1), epoch=3)
    assert [(c.path, c.old, c.new) for c in replacing.diff] == [("task.args[0]", "1", "2")]
    assert (replacing.in_place, replacing.replace, replacing.max_parallel, replacing.canary) == (
        False,
        4,
        2,
        1,
    )
    in_place = plan(world.view, spec(5, max_parallel=2, canary=1), epoch=3)
    assert (in_place.in_place, in_place.replace, in_place.canary) == (True, 0, 0)
    assert [c.path for c in in_place.diff] == ["replicas"]
    assert [p.slot for p in in_place.place] == [4] and not in_place.stop


@pytest.mark.parametrize("mht", [0.0, 10.0])
def test_a_whole_rollout_step_by_step_never_drops_below_replicas_minus_max_parallel(mht):
    world = World([node(f"node-{n}", cpu=3.0) for n in range(1, 4)])
    world.running_job(replicas=6, max_parallel=2, canary=1, auto_promote=True)
    world.submit(
        spec(6, args="2", max_parallel=2, canary=1, auto_promote=True, min_healthy_time=mht)
    )
    versions_seen = set()
    for _ in range(60):
        actions = world.round()
        invariants(world, 6, 2)
        versions_seen |= {p.version for p in actions.places}
        if world.job.rollout.status != "running":
            break
        world.agents()
        world.now += 4
    assert world.job.rollout.status == "succeeded"
    assert versions_seen == {2}
    assert sorted(i.slot for i in world.instances(desired="run", version=2)) == list(range(6))


def test_an_instance_of_an_earlier_batch_restarting_does_not_fail_the_rollout():
    world = World(NODES)
    world.running_job(replicas=2, max_parallel=1)
    world.submit(spec(2, args="2", max_parallel=1, healthy_deadline=60.0))
    [first] = world.round().places
    world.agents()
    world.now += 100  # ready long ago; batch 2 starts
    assert [p.slot for p in world.round().places] == [1]
    world.set(world.view.instances[first.id], state="starting", health="", healthy_since=0.0)
    [restarting] = world.round().progress  # not a missed healthy deadline
    assert (restarting.status, restarting.healthy) == ("running", 0)
    world.set(world.view.instances[first.id], state="failed", reason="exit code 2")
    [failed] = world.round().progress
    assert failed.reason == f"instance {first.id} failed on node {first.node}: exit code 2"


def test_a_manager_that_died_before_recording_its_batch_starts_no_other():
    world = World(NODES)
    world.running_job(replicas=3, max_parallel=1)
    world.submit(spec(3, args="2", max_parallel=1))
    started = world.round()
    world.rollout(batch=0, batch_started=0.0, placed=0)  # as if the record never came
    resumed = world.round()
    assert not resumed.places and not resumed.stops
    [progress] = resumed.progress  # what it sees is recorded; the batch's is not
    assert (progress.placed, progress.batch) == (1, 0)
    assert world.instances(slot=0, version=2)[0].id == started.places[0].id


def test_nothing_time_based_means_no_wake():
    world = World(NODES)
    world.running_job(replicas=2)
    world.now += 1000
    assert world.round().wake is None


def test_a_drain_is_not_held_up_by_unhealthy_instances_elsewhere():
    world = World([node("node-1", cpu=8.0), node("node-2", cpu=8.0)])
    world.running_job(replicas=3, max_parallel=1)
    for i in world.instances():
        world.set(i, node="node-2" if i.slot else "node-1")
    for i in world.instances(node="node-2"):
        world.set(i, health="unhealthy", healthy_since=0.0)  # not ready, not migrating
    drain(world, "node-1")
    [moved] = world.round().places
    assert (moved.slot, moved.node) == (0, "node-2")
