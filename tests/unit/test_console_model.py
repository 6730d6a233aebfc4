"""The console's model (colony.console.model), pure: feed items in, rows out."""

from __future__ import annotations

import time

import msgspec

from colony.console.model import (
    Changed,
    Connection,
    ConnectionChanged,
    ConsoleModel,
    EventFilter,
    JobsRead,
    Loaded,
    MembersSeen,
    RolesSeen,
    Sampled,
)
from colony.harness.processes import example_metrics
from colony.shared.jobspec import JobSpec, Task
from colony.shared.messages import (
    Change,
    InstanceRecord,
    JobRecord,
    MembersReply,
    MemberView,
    NodeMeta,
    NodeMetrics,
    NodeRecord,
    Resources,
    Rollout,
)

N1, N2 = "node-1-aaaaaa", "node-2-bbbbbb"
MiB = 2**20


def node(id=N1, name="node-1", **fields) -> NodeRecord:
    fields = {"address": "127.0.0.1", "cpu": 4.0, "memory": 8192 * MiB, "status": "alive", **fields}
    return NodeRecord(node=id, name=name, **fields)


def spec(**fields) -> JobSpec:
    return JobSpec(name="web", task=Task(command="python3"), **fields)


def job(name="web", version=1, replicas=2, **fields) -> JobRecord:
    fields = {"spec": spec(), **fields}
    return JobRecord(name=name, version=version, replicas=replicas, **fields)


def instance(id="web-0-aaaa", slot=0, node=N1, **fields) -> InstanceRecord:
    fields = {"job": "web", "version": 1, "cpu": 0.5, "memory": 64 * MiB, **fields}
    return InstanceRecord(id=id, slot=slot, node=node, **fields)


def change(index: int, kind: str, id: str, record=None, version: int = 1, ts=100.0) -> Changed:
    detail = msgspec.to_builtins(record) if record is not None else {}
    if kind == "job":  # the jobs kind leaves the spec and the source out of its changes
        detail = {k: v for k, v in detail.items() if k not in ("spec", "source")}
    c = Change(
        index=index, kind=kind, id=id, version=version, log_index=index, detail=detail, ts=ts
    )
    return Changed(c)


def metrics(node_id=N1, name="node-1", cpu=0.25, memory=100 * MiB, seq=1) -> NodeMetrics:
    capacity, used = Resources(cpu=4.0, memory=8192 * MiB), Resources(cpu=cpu, memory=memory)
    return example_metrics(node_id, seq, name=name, capacity=capacity, used=used, ts=50.0 + seq)


def loaded_model(**kw) -> ConsoleModel:
    model = ConsoleModel(**kw)
    model.apply(
        [
            Loaded(
                10,
                [node(), node(N2, "node-2", address="10.0.0.2")],
                [job()],
                [instance(ports={"http": 20001}), instance("web-1-bbbb", 1, N2)],
            )
        ]
    )
    return model


def test_loaded_replaces_what_the_model_holds_and_says_which_areas_changed():
    model = ConsoleModel()
    model.apply([Loaded(3, [node(N2, "node-2")], [job(name="old")], [])])
    areas = model.apply([Loaded(10, [node()], [job()], [instance()])])
    assert areas == {"nodes", "jobs", "instances"}
    assert list(model.nodes) == [N1] and list(model.jobs) == ["web"]
    assert list(model.instances) == ["web-0-aaaa"] and model.index == 10
    assert model.stale_specs() == set()  # a read holds each job's spec


def test_a_change_upserts_its_record_and_version_0_deletes_it():
    model = loaded_model()
    running = instance(state="running", pid=42, started_at=90.0, health="healthy")
    areas = model.apply([change(11, "instance", "web-0-aaaa", running)])
    assert {"events", "instances", "jobs", "nodes"} <= areas
    assert model.instances["web-0-aaaa"].state == "running" and model.index == 11
    model.apply([change(12, "instance", "web-1-bbbb", instance("web-1-bbbb", 1, N2), version=0)])
    assert "web-1-bbbb" not in model.instances
    model.apply([change(13, "node", N2, node(N2, "node-2", status="dead"))])
    assert model.nodes[N2].status == "dead"
    model.apply([Sampled(metrics(N2, "node-2"))])
    model.apply([change(15, "node", N2, node(N2, "node-2"), version=0)])
    assert N2 not in model.nodes and N2 not in model.metrics
    model.apply([change(16, "job", "web", job(), version=0)])
    assert model.jobs == {} and model.job_rows() == []


def test_changes_the_read_already_holds_only_add_events_and_none_is_taken_twice():
    model = loaded_model()
    old = instance(state="exited")
    areas = model.apply([Changed(change(9, "instance", "web-0-aaaa", old).change, live=False)])
    assert areas == {"events", "jobs"}  # the job's last event; no record touched
    assert model.instances["web-0-aaaa"].state == "pending"
    assert [(e.index, e.live) for e in model.events] == [(9, False)]
    model.apply([change(11, "instance", "web-0-aaaa", instance(state="running"))])
    again = model.apply([change(11, "instance", "web-0-aaaa", instance(state="lost"))])
    assert again == set() and model.instances["web-0-aaaa"].state == "running"
    assert [e.index for e in model.events] == [9, 11]


def test_a_job_change_keeps_the_spec_held_and_a_read_brings_the_new_one():
    model = loaded_model()
    v2 = job(version=2, replicas=4, cause="alice@box: colony job run web.yaml")
    model.apply([change(11, "job", "web", v2)])
    assert model.jobs["web"].version == 2 and model.jobs["web"].replicas == 4
    assert model.jobs["web"].spec == spec()  # version 1's, until read
    assert model.stale_specs() == {"web"}
    read = JobRecord(name="web", version=2, spec=spec(replicas=4), replicas=4)
    assert "jobs" in model.apply([JobsRead([read])])
    assert model.jobs["web"].spec.replicas == 4 and model.stale_specs() == set()
    model.apply([JobsRead([job(version=1)])])  # an older read never wins
    assert model.jobs["web"].version == 2
    model.apply([change(13, "job", "web", job(version=3, replicas=6))])
    model.apply([JobsRead([JobRecord(name="web", version=3, spec=spec(replicas=9), replicas=3)])])
    # a read of the version held brings its spec, not the fields a later change set
    assert (model.jobs["web"].spec.replicas, model.jobs["web"].replicas) == (9, 6)
    model.apply([change(14, "job", "api", job(name="api"))])  # first heard of by a change
    assert model.jobs["api"].spec.task.command == "?" and "api" in model.stale_specs()


def test_node_rows_say_state_roles_resources_and_history():
    model = loaded_model(samples=3)
    model.apply([RolesSeen(leader=N1, manager=N2, epoch=7, voters=[N1, N2])])
    model.apply([Sampled(metrics(cpu=c, seq=i)) for i, c in enumerate([0.1, 0.2, 0.3, 0.4])])
    model.apply([change(11, "node", N2, node(N2, "node-2", drain="draining", eligible=False))])
    one, two = model.node_rows()
    assert (one.name, one.roles, one.status, one.address) == (
        "node-1",
        ["voter", "leader"],
        "alive",
        "127.0.0.1",
    )
    assert one.cpu_history == [0.2, 0.3, 0.4]  # bounded: the last `samples`
    assert one.cpu_used == 0.4 and one.cpu_capacity == 4.0 and one.memory_used == 100 * MiB
    assert (one.cpu_reserved, one.memory_reserved, one.instances) == (0.5, 64 * MiB, 1)
    assert two.roles == ["voter", "manager e7"]
    assert (two.drain, two.eligible, two.cpu_history) == ("draining", False, [])


def test_nodes_only_seen_in_metrics_or_membership_have_rows_too():
    model = loaded_model()
    n3, n4 = "node-3-cccccc", "node-4-dddddd"
    view = MembersReply(
        observer=N1,
        members=[MemberView(node=n4, status="suspect", incarnation=1, meta=NodeMeta(), since=0)],
    )
    areas = model.apply([Sampled(metrics(n3, "node-3")), MembersSeen(view)])
    assert {"metrics", "members", "nodes"} <= areas
    rows = {r.node: r for r in model.node_rows()}
    assert rows[n3].name == "node-3" and rows[n3].status == "unknown"
    assert rows[n4].name == n4 and rows[n4].status == "suspect"
    assert [r.name for r in model.node_rows()][:2] == ["node-1", "node-2"]
    assert model.members_of(N1) == view and model.members_of(N2) is None


def test_a_forgotten_node_leaves_no_row_nor_membership_view():
    model = loaded_model()
    n3 = "node-3-cccccc"
    member = MemberView(node=n3, status="alive", incarnation=1, meta=NodeMeta(), since=0)
    view = MembersReply(observer=n3, members=[member])
    model.apply(
        [
            change(11, "node", n3, node(n3, "node-3")),
            Sampled(metrics(n3, "node-3")),
            MembersSeen(view),
        ]
    )
    assert n3 in {r.node for r in model.node_rows()}
    model.apply([change(12, "node", n3, version=0)])
    assert n3 not in {r.node for r in model.node_rows()}
    assert model.members_of(n3) is None
    # a view heard from a node the model does not know (forgotten while away) counts for none
    model.apply([MembersSeen(view)])
    assert n3 not in {r.node for r in model.node_rows()}


def test_job_rows_count_running_and_healthy_and_say_the_rollout():
    model = loaded_model()
    rollout = Rollout(version=2, previous=1, canaries=1, healthy=1, placed=1)
    model.apply(
        [
            change(11, "job", "web", job(version=2, rollout=rollout)),
            change(12, "instance", "web-0-aaaa", instance(state="running", health="healthy")),
            change(
                13,
                "instance",
                "web-9-cccc",
                instance("web-9-cccc", 1, N2, version=2, state="running", health="healthy"),
            ),
        ]
    )
    [row] = model.job_rows()
    assert (row.version, row.desired, row.running, row.healthy) == (2, 2, 2, 2)
    assert row.progress == 0.5  # one healthy of the current version, of 2 desired
    assert row.waiting_promote
    assert row.rollout == "version 2: 1 canary healthy; waiting for promote"
    assert row.last_event.startswith("instance web-9-cccc") and row.last_event_ts == 100.0
    done = Rollout(version=2, previous=1, status="succeeded", healthy=2)
    model.apply([change(14, "job", "web", job(version=2, rollout=done, status="stopped"))])
    [row] = model.job_rows()
    assert (row.rollout, row.waiting_promote, row.desired, row.progress) == (
        "version 2: succeeded — 2 of 2 healthy",
        False,
        0,
        1.0,
    )


def test_the_rollout_is_said_as_colony_job_status_says_it_and_auto_promote_waits_for_none():
    model = loaded_model()
    rollout = Rollout(version=2, previous=1, canaries=1, healthy=1, placed=1)
    auto = msgspec.convert(
        {"name": "web", "task": {"command": "python3"}, "update": {"auto_promote": True}}, JobSpec
    )
    model.apply([change(11, "job", "web", job(version=2, rollout=rollout))])
    model.apply([JobsRead([job(version=2, rollout=rollout, spec=auto)])])
    [row] = model.job_rows()
    assert row.rollout == "version 2: 1 canary healthy; promoting"
    assert not row.waiting_promote  # the manager promotes them by itself


def test_a_rollback_to_an_earlier_spec_is_done_once_its_rollout_succeeded():
    # version 3 runs version 1's spec: the instances of version 1 stay (same spec)
    model = loaded_model()
    healthy = {"state": "running", "health": "healthy"}
    rolling = Rollout(version=3, previous=2, healthy=1, placed=2)
    model.apply(
        [
            change(11, "instance", "web-0-aaaa", instance(**healthy)),
            change(12, "instance", "web-1-bbbb", instance("web-1-bbbb", 1, N2, **healthy)),
            change(13, "job", "web", job(version=3, rollout=rolling)),
        ]
    )
    [row] = model.job_rows()
    assert row.progress == 0.5  # the manager's count: one of the same spec is healthy
    done = Rollout(version=3, previous=2, status="succeeded", healthy=2, placed=2)
    model.apply([change(14, "job", "web", job(version=3, rollout=done))])
    [row] = model.job_rows()
    assert (row.healthy, row.desired, row.progress) == (2, 2, 1.0)
    assert row.rollout == "version 3: succeeded — 2 of 2 healthy"


def test_instance_rows_run_first_by_slot_with_node_names_and_addresses():
    model = loaded_model()
    model.apply(
        [change(11, "instance", "web-1-bbbb", instance("web-1-bbbb", 1, N2, desired="stop"))]
    )
    model.apply([change(12, "instance", "web-2-cccc", instance("web-2-cccc", 2, N2, canary=True))])
    rows = model.instance_rows("web")
    assert [r.id for r in rows] == ["web-0-aaaa", "web-2-cccc", "web-1-bbbb"]
    assert (rows[0].node, rows[0].address, rows[0].node_id) == ("node-1", "127.0.0.1:20001", N1)
    assert rows[1].address == "" and rows[1].canary and rows[1].node == "node-2"
    assert model.instance_rows("nothing") == []


def test_events_are_summarized_bounded_and_filtered():
    model = ConsoleModel(history=5)
    model.apply([Loaded(0, [node(), node(N2, "node-2")], [], [])])
    model.apply([change(1, "job", "web", job())])
    model.apply([change(2, "instance", "web-0-aaaa", instance(node=N2))])
    model.apply([change(3, "job", "api", job(name="api"))])
    model.apply([change(4, "node", N1, node(status="suspect"))])
    model.apply([change(5, "kv", "some-key", None)])
    model.apply([change(6, "instance", "api-0-dddd", instance("api-0-dddd", job="api"))])
    assert [e.index for e in model.events] == [2, 3, 4, 5, 6]  # the oldest dropped
    placed = model.events[0]
    assert placed.summary.startswith("instance web-0-aaaa placed on node-2")
    assert (placed.job, placed.node, placed.node_id) == ("web", "node-2", N2)

    def shown(**f) -> list[int]:
        return [e.index for e in model.events_matching(EventFilter(**f))]

    assert shown() == [2, 3, 4, 5, 6]
    assert shown(kinds=frozenset({"instance"})) == [2, 6]
    assert shown(job="api") == [3, 6]
    assert shown(node="node-2") == shown(node=N2) == [2]
    assert shown(node="node-1") == [4, 6]
    assert shown(text="SUSPECT") == [4]
    assert shown(text="some-key") == [5]  # the id
    assert [e.index for e in model.events_matching(EventFilter(), limit=2)] == [5, 6]


def test_connection_and_roles_are_areas_of_their_own():
    model = ConsoleModel()
    assert model.connection.state == "connecting"
    state = Connection("connected", "nats://127.0.0.1:4222", "node-1")
    assert model.apply([ConnectionChanged(state)]) == {"connection"}
    assert model.connection == state
    roles = RolesSeen(leader=N1, manager=N1, epoch=2, voters=[N1])
    assert model.apply([roles]) == {"roles", "nodes"}
    assert model.apply([roles]) == set()  # nothing new
    assert (model.leader, model.manager, model.epoch, model.voters) == (N1, N1, 2, [N1])


def test_a_record_it_cannot_read_still_shows_as_an_event():
    model = loaded_model()
    bad = Change(index=11, kind="instance", id="x", version=1, log_index=11, detail={"id": 3})
    assert model.apply([Changed(bad)]) == {"events"}
    assert "x" not in model.instances and model.events[-1].index == 11


def test_a_thousand_changes_a_second_cost_little():
    """Applying is linear and cheap: 10,000 instance changes (ten seconds of a busy
    stream) apply well under a second's worth of time each second; memory stays bounded."""
    model = ConsoleModel(history=1000)
    model.apply([Loaded(0, [node(), node(N2, "node-2")], [job()], [])])
    items = [
        change(
            i, "instance", f"web-{i % 50}-x", instance(f"web-{i % 50}-x", i % 50, state="running")
        )
        for i in range(1, 10_001)
    ]
    started = time.perf_counter()
    for at in range(0, len(items), 50):  # batches, as the app applies them
        model.apply(items[at : at + 50])
        model.job_rows()
    took = time.perf_counter() - started
    assert took < 5.0, f"10,000 changes took {took:.2f} s to apply"
    assert len(model.events) == 1000 and len(model.instances) == 50
