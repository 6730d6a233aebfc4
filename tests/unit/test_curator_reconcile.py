"""The curator's reconcile (pure: views built by hand) and its view (loaded, followed from
changes, updated with its own commits). Every rule, and idempotency: applying what a
reconcile decided and reconciling again decides nothing."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from colony.curator.reconcile import DEAD_AFTER, Actions, plan, reconcile
from colony.curator.view import View
from colony.shared.jobspec import JobResources, JobSpec, RestartPolicy, Task
from colony.shared.messages import (
    MAX_FAILED_ON,
    Change,
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobRecord,
    NodeRecord,
    NodeStatus,
    Stored,
)

GiB = 2**30


def tokens():
    """Instance id tokens 0001, 0002, ... (deterministic)."""
    counter = itertools.count(1)
    return lambda: f"{next(counter):04x}"


def node(id: str, status: str = "alive", cpu: float = 4.0, memory: int = 8 * GiB) -> NodeRecord:
    return NodeRecord(
        node=id,
        name=id,
        cpu=cpu,
        memory=memory,
        drivers=["process"],
        port_lo=20000,
        port_hi=20099,
        status=status,
    )


def job(
    name: str = "web",
    replicas: int = 3,
    version: int = 1,
    then: str = "reschedule",
    status: str = "running",
    cpu: float = 1.0,
    blocked: str = "",
) -> JobRecord:
    spec = JobSpec(
        name=name,
        task=Task(command="sleep", args=["60"]),
        replicas=replicas,
        resources=JobResources(cpu=cpu, memory=GiB),
        ports=["http"],
        restart=RestartPolicy(then=then),  # type: ignore[arg-type]
    )
    return JobRecord(
        name=name,
        version=version,
        spec=spec,
        replicas=replicas,
        status=status,  # type: ignore[arg-type]
        blocked=blocked,
    )


def instance(
    id: str, node: str, slot: int, job: str = "web", version: int = 1, **fields
) -> InstanceRecord:
    fields.setdefault("state", "running")
    fields.setdefault("cpu", 1.0)
    return InstanceRecord(
        id=id, job=job, version=version, slot=slot, node=node, memory=GiB, **fields
    )


def view_of(nodes, jobs=(), instances=(), members=None) -> View:
    view = View()
    view.nodes = {n.node: n for n in nodes}
    view.jobs = {j.name: j for j in jobs}
    view.specs = {(j.name, j.version): j.spec for j in jobs}
    view.instances = {i.id: i for i in instances}
    view.members = dict(members or {})
    return view


def commit(view: View, actions: Actions, index: int = 100) -> None:
    for command in actions.commands():
        view.committed(command, index, now=1000.0)


def settled(view: View, token=None) -> Actions:
    """Reconcile, commit what it decided, and check that reconciling again decides nothing."""
    actions = reconcile(view, token or tokens())
    commit(view, actions)
    again = reconcile(view, tokens())
    assert not again, f"not idempotent: the second reconcile decided {again}"
    return actions


NODES = [node("node-1"), node("node-2"), node("node-3")]


def test_a_new_job_is_placed_slot_by_slot_with_fresh_ids_and_its_reason():
    view = view_of(NODES, [job(replicas=3)])
    actions = settled(view)
    assert [(p.id, p.slot) for p in actions.places] == [
        ("web-0-0001", 0),
        ("web-1-0002", 1),
        ("web-2-0003", 2),
    ]
    assert {p.reason for p in actions.places} == {"job web submitted"}
    assert all(
        p.ports["http"] >= 20000 and p.cpu == 1.0 and p.memory == GiB for p in actions.places
    )
    assert [type(c) for c in actions.commands()] == [InstancesPlace]
    assert {i.desired for i in view.instances.values()} == {"run"}


def test_an_id_already_taken_is_never_given_again():
    view = view_of(NODES, [job(replicas=2)], [instance("web-0-0001", "node-1", 5, state="exited")])
    same_then_new = iter(["0001", "0001", "0002", "0003"]).__next__
    actions = reconcile(view, same_then_new)
    # slot 5 is above replicas: web-0-0001 is a removal; the new slot 0 gets another id
    assert [p.id for p in actions.places] == ["web-0-0002", "web-1-0003"]


def test_node_statuses_follow_membership():
    view = view_of(NODES, members={"node-1": "alive", "node-2": "suspect", "node-3": "alive"})
    view.nodes["node-3"] = node("node-3", status="unknown")
    actions = settled(view)
    assert actions.statuses == [
        NodeStatus(
            node="node-2", status="suspect", reason="membership says node node-2 is suspect"
        ),
        NodeStatus(node="node-3", status="alive", reason="membership says node node-3 is alive"),
    ]


def test_a_dead_node_has_its_instances_stopped_removed_and_replaced_in_one_go():
    view = view_of(
        NODES,
        [job(replicas=3)],
        [
            instance("web-0-aaaa", "node-1", 0),
            instance("web-1-bbbb", "node-2", 1),
            instance("web-2-cccc", "node-3", 2),
        ],
        members={"node-1": "alive", "node-2": "alive", "node-3": "dead"},
    )
    actions = settled(view)
    commands = actions.commands()
    assert [type(c) for c in commands] == [
        NodeStatus,
        InstancesStop,
        InstancesPlace,
        InstancesRemove,
    ]
    assert commands[1] == InstancesStop(ids=["web-2-cccc"], reason="node node-3 is dead")
    [replacement] = actions.places
    assert (replacement.slot, replacement.replaces) == (2, "web-2-cccc")
    assert replacement.node != "node-3" and replacement.reason == "node node-3 is dead"
    assert actions.removes == ["web-2-cccc"]  # its node cannot report it stopped


def test_a_suspect_node_keeps_its_instances_but_gets_no_new_ones():
    view = view_of(
        NODES,
        [job(replicas=2)],
        [instance("web-0-aaaa", "node-3", 0)],
        members={"node-3": "suspect"},
    )
    actions = settled(view)
    assert not actions.stops
    assert [(p.slot, p.node != "node-3") for p in actions.places] == [(1, True)]


def test_scaling_up_places_the_new_slots_and_scaling_down_stops_the_top_ones():
    running = [instance(f"web-{s}-000{s}", f"node-{s % 3 + 1}", s) for s in range(3)]
    view = view_of(NODES, [job(replicas=5)], running)
    up = settled(view)
    assert [(p.slot, p.reason) for p in up.places] == [(3, "scaled to 5"), (4, "scaled to 5")]

    view.jobs["web"] = msgspec.structs.replace(view.jobs["web"], replicas=2)
    down = settled(view)
    assert sorted(down.stops) == sorted(i.id for i in view.instances.values() if i.slot >= 2)
    assert set(down.stops.values()) == {"scaled to 2"}
    assert not down.removes  # still running: removed once their node says they exited


def test_stopped_instances_are_removed_once_they_run_nothing():
    view = view_of(
        NODES,
        [job(replicas=1)],
        [
            instance("web-0-aaaa", "node-1", 0),
            instance("web-1-bbbb", "node-1", 1, desired="stop", state="exited"),
            instance("web-2-cccc", "node-2", 2, desired="stop", state="running"),
            instance("web-3-dddd", "node-2", 3, desired="stop", state="failed"),
        ],
    )
    actions = settled(view)
    assert actions.removes == ["web-1-bbbb", "web-3-dddd"]
    assert set(view.instances) == {"web-0-aaaa", "web-2-cccc"}


def test_restarts_ran_out_means_a_replacement_on_another_node():
    failed = instance("web-0-aaaa", "node-2", 0, state="failed", exit_code=1, reason="exit code 1")
    view = view_of(NODES, [job(replicas=1)], [failed])
    actions = settled(view)
    why = "restarts ran out on node node-2: exit code 1"
    assert actions.stops == {"web-0-aaaa": why}
    [replacement] = actions.places
    assert replacement.node != "node-2"
    assert (replacement.replaces, replacement.reason) == ("web-0-aaaa", why)
    assert actions.removes == ["web-0-aaaa"]


def test_restart_policy_fail_leaves_a_failed_instance_failed():
    failed = instance("web-0-aaaa", "node-2", 0, state="failed", exit_code=1)
    view = view_of(NODES, [job(replicas=1, then="fail")], [failed])
    assert not reconcile(view, tokens())


def test_a_failed_instance_is_replaced_where_it_failed_when_no_other_node_can_take_it():
    failed = instance("web-0-aaaa", "node-1", 0, state="failed", exit_code=1)
    view = view_of([node("node-1", cpu=1.0)], [job(replicas=1)], [failed])  # full with it
    actions = settled(view)
    [replacement] = actions.places
    assert (replacement.node, replacement.failed_on) == ("node-1", ["node-1"])
    assert actions.stops == {"web-0-aaaa": "restarts ran out on node node-1: exit code 1"}


def test_a_failed_instance_stays_while_no_node_can_take_it():
    failed = instance("web-0-aaaa", "node-1", 0, state="failed", exit_code=1)
    view = view_of([node("node-1")], [job(replicas=1)], [failed])
    view.nodes["node-1"] = msgspec.structs.replace(view.nodes["node-1"], eligible=False)
    actions = settled(view)
    assert not actions.stops and not actions.places
    [blocked] = actions.blocked
    assert blocked.reason == "1 of 1 instances cannot be placed: 1 node is ineligible"
    assert view.instances["web-0-aaaa"].desired == "run"


def fail(view: View, slot: int = 0) -> InstanceRecord:
    """The slot's instance desired run fails (its restarts ran out)."""
    [i] = [i for i in view.instances.values() if i.slot == slot and i.desired == "run"]
    view.instances[i.id] = msgspec.structs.replace(i, state="failed", exit_code=1)
    return i


def test_a_slot_failing_everywhere_tries_each_node_before_one_it_failed_on_again():
    view = view_of(NODES, [job(replicas=1)])
    settled(view)
    token = tokens()
    tried = [fail(view).node]
    for _ in range(4):
        [replacement] = settled(view, token).places
        # each node once, by its last failure there, least recent first
        assert replacement.failed_on == [
            n for at, n in enumerate(tried) if n not in tried[at + 1 :]
        ]
        tried.append(fail(view).node)
    first = tried[:3]
    assert sorted(first) == ["node-1", "node-2", "node-3"]  # no ping-pong between two
    assert tried[3:] == first[:2]  # then the least recently failed first, in turn


def test_a_slots_failure_history_is_bounded():
    failed_on = [f"old-{n}" for n in range(MAX_FAILED_ON)]
    failed = instance("web-0-aaaa", "node-1", 0, state="failed", failed_on=failed_on)
    [replacement] = settled(view_of(NODES, [job(replicas=1)], [failed])).places
    assert replacement.failed_on == [*failed_on[1:], "node-1"]


def test_a_new_version_forgets_where_the_old_one_failed():
    view = view_of(NODES, [job(replicas=1)])
    settled(view)
    fail(view)
    settled(view)
    spec = msgspec.structs.replace(view.jobs["web"].spec, task=Task(command="sleep", args=["1"]))
    view.jobs["web"] = msgspec.structs.replace(view.jobs["web"], version=2, spec=spec)
    view.specs[("web", 2)] = spec
    [updated] = settled(view).places
    assert updated.failed_on == [] and updated.version == 2


def test_a_node_membership_does_not_know_gets_nothing_then_is_dead_after_a_while():
    running = [instance("web-0-aaaa", "node-3", 0)]
    members = {"node-1": "alive", "node-2": "alive"}
    view = view_of(NODES, [job(replicas=2)], running, members=members)
    view.answered = True
    view.absent = {"node-3": 1.0}
    actions = settled(view)
    assert not actions.statuses and not actions.stops  # node-3 may be back soon
    assert [p.node for p in actions.places] == ["node-1"]  # but gets nothing new
    assert view.nodes["node-3"].status == "alive"

    view.absent = {"node-3": DEAD_AFTER}
    actions = settled(view)
    why = f"membership has not known node node-3 for {DEAD_AFTER:g} s"
    assert actions.statuses == [NodeStatus(node="node-3", status="dead", reason=why)]
    assert actions.stops == {"web-0-aaaa": "node node-3 is dead"}
    assert [p.node for p in actions.places] == ["node-2"]


def test_a_membership_that_has_not_answered_leaves_the_recorded_statuses():
    view = view_of(NODES, [job(replicas=3)], members={})
    view.absent = {"node-3": DEAD_AFTER}  # not answered: this says nothing
    actions = settled(view)
    assert not actions.statuses and len({p.node for p in actions.places}) == 3


def test_a_job_that_fits_nowhere_is_blocked_with_the_schedulers_reasons_then_cleared():
    view = view_of([node("node-1", cpu=2.0)], [job(replicas=3)])
    first = settled(view)
    assert len(first.places) == 2
    [blocked] = first.blocked
    assert blocked.job == "web"
    assert blocked.reason.startswith("1 of 3 instances cannot be placed: 1 node lacks cpu")
    assert view.jobs["web"].blocked == blocked.reason

    view.nodes["node-2"] = node("node-2")
    second = settled(view)
    assert [(p.slot, p.node) for p in second.places] == [(2, "node-2")]
    assert second.blocked == [JobBlocked(job="web", reason="")]


def test_a_stopped_job_has_every_instance_stopped():
    view = view_of(
        NODES,
        [job(replicas=2, status="stopped", blocked="was blocked")],
        [instance("web-0-aaaa", "node-1", 0), instance("web-1-bbbb", "node-2", 1, state="failed")],
    )
    actions = settled(view)
    assert actions.stops == {
        "web-0-aaaa": "job web was stopped",
        "web-1-bbbb": "job web was stopped",
    }
    assert actions.removes == ["web-1-bbbb"]
    assert actions.blocked == [JobBlocked(job="web", reason="")]
    assert not actions.places


def test_a_new_spec_version_replaces_the_older_instances():
    old = [instance(f"web-{s}-000{s}", f"node-{s + 1}", s, version=1) for s in range(2)]
    view = view_of(NODES, [job(replicas=2, version=2)], old)
    actions = settled(view)
    assert set(actions.stops.values()) == {"updated to version 2"}
    assert sorted((p.slot, p.version, p.replaces) for p in actions.places) == [
        (0, 2, "web-0-0000"),
        (1, 2, "web-1-0001"),
    ]


def test_two_instances_in_one_slot_keep_the_running_one():
    # A manager placed web-0-bbbb and died before stopping web-0-aaaa (another proposal).
    view = view_of(
        NODES,
        [job(replicas=1)],
        [
            instance("web-0-aaaa", "node-1", 0, state="running", placed=1.0),
            instance("web-0-bbbb", "node-2", 0, state="pending", placed=2.0),
        ],
    )
    actions = settled(view)
    assert actions.stops == {"web-0-bbbb": "slot 0 of web has web-0-aaaa already"}
    assert not actions.places


def test_a_failed_instance_beside_a_live_one_in_its_slot_is_stopped():
    view = view_of(
        NODES,
        [job(replicas=1)],
        [
            instance("web-0-aaaa", "node-1", 0, state="failed", exit_code=1),
            instance("web-0-bbbb", "node-2", 0, state="running"),
        ],
    )
    actions = settled(view)
    assert actions.stops == {"web-0-aaaa": "slot 0 of web has web-0-bbbb already"}
    assert actions.removes == ["web-0-aaaa"] and not actions.places


def test_a_slot_whose_instance_was_stopped_is_placed_again_and_says_why():
    stopped = instance(
        "web-0-aaaa", "node-1", 0, desired="stop", desired_reason="updated to version 2"
    )
    view = view_of(NODES, [job(replicas=1)], [stopped])
    [placement] = settled(view).places
    assert placement.replaces == "web-0-aaaa"
    assert placement.reason == "slot 0 is empty: web-0-aaaa stopped (updated to version 2)"


def test_instances_of_a_job_the_view_does_not_hold_are_left_alone():
    view = view_of(NODES, [], [instance("other-0-aaaa", "node-1", 0, job="other")])
    assert not reconcile(view, tokens())


def test_jobs_do_not_take_what_an_earlier_job_placed_in_the_same_round():
    view = view_of([node("node-1", cpu=2.0)], [job("a", replicas=2), job("b", replicas=1)])
    actions = settled(view)
    assert [p.job for p in actions.places] == ["a", "a"]
    assert [b.job for b in actions.blocked] == ["b"]


def test_many_placements_go_in_batches():
    view = view_of([node(f"n{i:02}", cpu=64.0, memory=64 * GiB) for i in range(20)])
    view.jobs = {"big": job("big", replicas=1200, cpu=0.5)}
    view.nodes = {n: msgspec.structs.replace(r, port_hi=21000) for n, r in view.nodes.items()}
    view.jobs["big"] = msgspec.structs.replace(
        view.jobs["big"],
        spec=msgspec.structs.replace(
            view.jobs["big"].spec, resources=JobResources(cpu=0.5, memory=2**20)
        ),
    )
    actions = reconcile(view, tokens())
    sizes = [len(c.placements) for c in actions.commands() if isinstance(c, InstancesPlace)]
    assert sizes == [500, 500, 200]


# --- the view -------------------------------------------------------------------------


def change(kind: str, id: str, log_index: int, detail: dict, version: int = 1) -> Change:
    return Change(
        index=log_index, kind=kind, id=id, version=version, log_index=log_index, detail=detail
    )


def test_the_view_ignores_changes_no_newer_than_what_it_read():
    view = View()
    record = instance("web-0-aaaa", "node-1", 0, state="running")
    view.loaded("instance", 50, [Stored("web-0-aaaa", 3, msgspec.to_builtins(record))])
    older = msgspec.to_builtins(msgspec.structs.replace(record, state="pending"))
    assert not view.apply(change("instance", "web-0-aaaa", 40, older))
    assert not view.apply(change("instance", "web-0-bbbb", 45, older))  # before the read
    assert view.instances["web-0-aaaa"].state == "running"
    newer = msgspec.to_builtins(msgspec.structs.replace(record, state="exited"))
    assert view.apply(change("instance", "web-0-aaaa", 60, newer))
    assert view.instances["web-0-aaaa"].state == "exited"
    assert view.apply(change("instance", "web-0-aaaa", 61, newer, version=0))
    assert "web-0-aaaa" not in view.instances
    assert not view.apply(change("instance", "web-0-aaaa", 60, newer))  # replayed: gone


def test_a_job_changed_to_an_unknown_spec_version_waits_for_it():
    view = View()
    v1 = job(replicas=1)
    view.loaded("job", 10, [Stored("web", 1, msgspec.to_builtins(v1))])
    assert view.missing() == set()
    scaled = msgspec.to_builtins(msgspec.structs.replace(v1, replicas=4))
    del scaled["spec"], scaled["source"]
    assert view.apply(change("job", "web", 11, scaled, version=2))
    assert view.jobs["web"].replicas == 4  # same spec version: applied at once
    v2 = job(replicas=2, version=2)
    updated = {k: v for k, v in msgspec.to_builtins(v2).items() if k not in ("spec", "source")}
    assert view.apply(change("job", "web", 12, updated, version=3))
    assert view.jobs["web"].version == 1 and view.missing() == {("web", 2)}
    view.learn("web", 2, v2)
    assert view.jobs["web"] == v2 and view.missing() == set()
    assert view.apply(change("job", "web", 13, {"name": "web"}, version=0))
    assert "web" not in view.jobs and ("web", 2) not in view.specs


def test_labels_come_as_they_are_read_and_as_their_changes_say():
    view = View()
    view.loaded("label", 5, [Stored("node-1", 1, {"zone": "eu"})])
    assert view.apply(change("label", "node-1", 6, {"labels": {"zone": "us"}}, version=2))
    assert view.labels == {"node-1": {"zone": "us"}}


def test_the_curators_own_writes_are_not_undone_by_older_changes():
    view = view_of(NODES, [job(replicas=1)], [instance("web-0-aaaa", "node-1", 0)])
    view.committed(InstancesStop(ids=["web-0-aaaa"], reason="node node-1 is dead"), 70, 1.0)
    before = msgspec.to_builtins(instance("web-0-aaaa", "node-1", 0, state="exited"))
    assert view.apply(change("instance", "web-0-aaaa", 65, before))
    assert (view.instances["web-0-aaaa"].desired, view.instances["web-0-aaaa"].state) == (
        "stop",
        "exited",
    )
    view.committed(InstancesRemove(ids=["web-0-aaaa"]), 71, 1.0)
    assert "web-0-aaaa" not in view.instances
    assert not view.apply(change("instance", "web-0-aaaa", 70, before))
    assert "web-0-aaaa" not in view.instances


def test_a_registration_from_before_the_curators_status_write_is_kept():
    view = View()
    view.committed(NodeStatus(node="node-9", status="alive", reason="membership"), 30, 1.0)
    assert view.nodes["node-9"].status == "alive" and view.nodes["node-9"].drivers == []
    registered = msgspec.to_builtins(node("node-9", status="unknown"))
    assert view.apply(change("node", "node-9", 29, registered))
    assert (view.nodes["node-9"].status, view.nodes["node-9"].drivers) == ("alive", ["process"])
    later = msgspec.to_builtins(node("node-9", status="dead"))
    assert view.apply(change("node", "node-9", 31, later))
    assert view.nodes["node-9"].status == "dead"


@pytest.mark.parametrize("status", ["dead", "left"])
def test_stopped_instances_on_a_gone_node_are_removed_whatever_they_last_said(status):
    view = view_of(
        [node("node-1", status=status), node("node-2")],
        [job(replicas=1)],
        [
            instance("web-0-aaaa", "node-2", 0),
            instance("web-1-bbbb", "node-1", 1, desired="stop", state="running"),
        ],
    )
    assert settled(view).removes == ["web-1-bbbb"]


def test_a_plan_says_what_running_a_spec_would_do_and_changes_nothing():
    running = [instance(f"web-{s}-000{s}", f"node-{s + 1}", s) for s in range(2)]
    view = view_of(NODES, [job(replicas=2)], running)
    same = plan(view, job(replicas=2).spec, epoch=4)
    assert (same.change, same.version, same.place, same.stop, same.epoch) == (
        "unchanged",
        1,
        [],
        [],
        4,
    )
    bigger = plan(view, job(replicas=3, cpu=2.0).spec, epoch=4)
    assert (bigger.change, bigger.version, len(bigger.place)) == ("update", 2, 3)
    assert sorted(bigger.stop) == ["web-0-0000", "web-1-0001"]
    new = plan(view, job("db", replicas=9, cpu=2.0).spec, epoch=4)
    assert (new.change, new.version, len(new.place), new.unplaced) == ("new", 1, 4, 5)
    assert new.no_fit and "lack cpu" in new.no_fit[0]
    assert view.jobs.keys() == {"web"} and len(view.instances) == 2


def test_a_plan_of_an_update_fits_once_the_instances_it_replaces_are_gone():
    view = view_of([node("node-1", cpu=1.0)], [job(replicas=1, cpu=0.8)])
    view.instances = {"web-0-aaaa": instance("web-0-aaaa", "node-1", 0, cpu=0.8)}
    spec = job(replicas=1, cpu=0.8).spec
    changed = msgspec.structs.replace(spec, task=Task(command="sleep", args=["61"]))
    update = plan(view, changed, epoch=1)
    assert (update.change, update.unplaced, update.stop) == ("update", 0, ["web-0-aaaa"])
    assert [p.node for p in update.place] == ["node-1"]
    assert not reconcile(view, tokens())  # the view itself is as it was


def test_a_plan_says_a_stopped_job_run_again_as_it_is_restarts():
    view = view_of(NODES, [job(replicas=2, status="stopped")])
    again = plan(view, job(replicas=2).spec, epoch=1)
    assert (again.change, again.version, len(again.place)) == ("restart", 1, 2)
