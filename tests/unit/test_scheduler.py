"""The scheduler: feasibility (and why not), bin-pack with job anti-affinity and spread
scoring, ports, reservations, determinism, and the no-fit explanation as people read it."""

from __future__ import annotations

import random

from colony.curator.scheduler import (
    Ask,
    Decision,
    NodeView,
    holds,
    reserved,
    schedule,
    schedule_all,
)
from colony.shared.jobspec import Constraint, JobResources, JobSpec, Task
from colony.shared.messages import InstanceRecord, NodeRecord, Resources

MiB = 2**20
GiB = 2**30


def node(
    nid: str,
    cpu: float = 4,
    memory: int = 8 * GiB,
    *,
    drivers: tuple[str, ...] = ("process",),
    ports: tuple[int, int] = (20000, 20099),
    status: str = "alive",
    eligible: bool = True,
    **labels: str,
) -> NodeView:
    record = NodeRecord(
        node=nid,
        cpu=cpu,
        memory=memory,
        drivers=list(drivers),
        port_lo=ports[0],
        port_hi=ports[1],
        status=status,
        eligible=eligible,
    )
    return NodeView(record, labels)


def job(name: str = "web", cpu: float = 1, memory: int = 1 * GiB, **fields) -> JobSpec:
    resources = JobResources(cpu=cpu, memory=memory)
    return JobSpec(name=name, task=Task(command="app"), resources=resources, **fields)


def instance(
    iid: str,
    nid: str,
    *,
    job: str = "other",
    cpu: float = 1,
    memory: int = 1 * GiB,
    ports: dict[str, int] | None = None,
    desired: str = "run",
    state: str = "running",
    slot: int = 0,
) -> InstanceRecord:
    return InstanceRecord(
        id=iid,
        job=job,
        version=1,
        slot=slot,
        node=nid,
        cpu=cpu,
        memory=memory,
        ports=ports or {},
        desired=desired,  # type: ignore[arg-type]
        state=state,
    )


def place(nodes, spec: JobSpec, slots=(0,), instances=(), avoid=None, replicas=0) -> Decision:
    return schedule(nodes, list(instances), Ask(spec, 1, tuple(slots), avoid or {}, replicas))


def where(decision: Decision) -> dict[int, str]:
    return {slot: nid for slot, nid, _ in decision.placements}


# --- feasibility, one reason at a time ----------------------------------------------------


def test_a_node_that_fits_takes_the_instance():
    d = place([node("n1")], job())
    assert d == Decision(placements=((0, "n1", {}),), unplaced=(), no_fit=())


def test_nodes_not_alive_are_counted_by_status():
    nodes = [
        node("n1", status="dead"),
        node("n2", status="dead"),
        node("n3", status="suspect"),
        node("n4", status="left"),
        node("n5", status="unknown"),
        node("n6", status="left"),
    ]
    d = place(nodes, job())
    assert d.unplaced == (0,)
    assert d.no_fit == (
        "0 nodes are alive",
        "2 nodes are dead",
        "2 nodes have left",
        "1 node is suspect",
        "1 node has no status yet",
    )


def test_no_nodes_at_all():
    assert place([], job()).no_fit == ("0 nodes are alive",)


def test_an_ineligible_node_is_not_used():
    d = place([node("n1", eligible=False), node("n2", status="dead")], job())
    assert d.no_fit == ("1 node is dead", "1 node is ineligible")


def test_driver_missing_everywhere_or_on_some_nodes():
    assert place([node("n1"), node("n2")], job(driver="docker")).no_fit == (
        "no node has driver docker",
    )
    nodes = [node("n1"), node("n2"), node("n3", status="dead")]
    assert place(nodes, job(driver="docker")).no_fit == (
        "2 nodes lack driver docker",
        "1 node is dead",
    )
    both = node("n4", drivers=("process", "docker"))
    assert where(place([*nodes, both], job(driver="docker"))) == {0: "n4"}


def test_cpu_and_memory_shortfalls_say_how_close_the_best_came():
    nodes = [node("n1", cpu=1.5), node("n2", cpu=0.5), node("n3", memory=300 * MiB)]
    d = place(nodes, job(cpu=2, memory=512 * MiB))
    assert d.no_fit == (
        "2 nodes lack cpu: need 2 cores, the best has 1.5 cores free",
        "1 node lacks memory: need 512 MiB, it has 300 MiB free",
    )


def test_reserved_resources_count_against_free():
    busy = [instance("a", "n1", cpu=3.5, memory=7 * GiB + 700 * MiB)]
    d = place([node("n1")], job(memory=512 * MiB), instances=busy)
    assert d.no_fit == ("1 node lacks cpu: need 1 core, it has 0.5 cores free",)
    d = place([node("n1")], job(cpu=0.5, memory=512 * MiB), instances=busy)
    assert d.no_fit == ("1 node lacks memory: need 512 MiB, it has 324 MiB free",)


def test_free_is_rounded_down_and_need_up_so_they_never_read_equal():
    nodes = [node("n1", memory=GiB - 1)]
    assert place(nodes, job(memory=GiB)).no_fit == (
        "1 node lacks memory: need 1 GiB, it has 1023.9 MiB free",
    )


def test_ports_in_the_node_range():
    held = [instance("a", "n1", ports={"http": 20000}), instance("b", "n1", ports={"x": 20002})]
    d = place([node("n1", ports=(20000, 20002))], job(ports=["http", "admin"]), instances=held)
    assert d.no_fit == ("1 node lacks ports: need 2 ports, it has 1 free",)
    # a node without a port range runs only jobs without ports
    assert place([node("n1", ports=(0, 0))], job(ports=["http"])).no_fit == (
        "1 node lacks ports: need 1 port, it has 0 free",
    )
    assert where(place([node("n1", ports=(0, 0))], job())) == {0: "n1"}


def test_constraints_each_operator():
    nodes = [
        node("a", zone="eu", disk="ssd"),
        node("b", zone="us", disk="ssd"),
        node("c", zone="ap"),
        node("d"),
    ]

    def feasible(*constraints: Constraint) -> set[str]:
        spec = job(constraints=list(constraints), distinct_nodes=True)
        d = place(nodes, spec, slots=range(4))
        return set(where(d).values())

    assert feasible(Constraint(label="zone", value="eu")) == {"a"}
    assert feasible(Constraint(label="zone", op="!=", value="eu")) == {"b", "c", "d"}
    assert feasible(Constraint(label="zone", op="in", value=["eu", "us"])) == {"a", "b"}
    assert feasible(Constraint(label="zone", op="in", value=["eu", "ap"])) == {"a", "c"}
    assert feasible(Constraint(label="zone", op="not_in", value=["eu", "us"])) == {"c", "d"}
    assert feasible(
        Constraint(label="zone", op="!=", value="us"), Constraint(label="disk", value="ssd")
    ) == {"a"}


def test_each_constraint_is_its_own_reason():
    nodes = [node("a", zone="eu"), node("b", zone="us"), node("c", zone="us"), node("d")]
    spec = job(
        constraints=[
            Constraint(label="zone", op="in", value=["eu", "us"]),
            Constraint(label="zone", value="eu"),
            Constraint(label="zone", op="not_in", value=["eu"]),
        ]
    )
    assert place(nodes, spec).no_fit == (
        "2 nodes fail constraint zone = eu",
        "1 node fails constraint zone in (eu, us)",
        "1 node fails constraint zone not_in (eu)",
    )


def test_distinct_nodes_places_one_instance_of_the_job_per_node():
    nodes = [node("n1"), node("n2"), node("n3")]
    there = [instance("web-0-aaaa", "n1", job="web")]
    d = place(nodes, job(distinct_nodes=True), slots=[1, 2, 3], instances=there)
    assert sorted(where(d).values()) == ["n2", "n3"]
    assert d.unplaced == (3,)
    assert d.no_fit == ("3 nodes already run an instance of web (distinct_nodes)",)
    # an instance being stopped does not count: its replacement may go beside it
    leaving = [instance("web-0-aaaa", "n1", job="web", desired="stop")]
    d = place([node("n1")], job(distinct_nodes=True), instances=leaving)
    assert where(d) == {0: "n1"}


def test_a_slot_avoids_the_nodes_where_it_failed():
    nodes = [node("n1"), node("n2")]
    busy = [instance("a", "n1", cpu=2)]  # n1 is the fuller: bin-pack's choice
    avoid = {0: ("n1",)}
    assert where(place(nodes, job(), slots=[0, 1], instances=busy, avoid=avoid)) == {
        0: "n2",
        1: "n1",
    }
    # avoiding a node it would not have used changes nothing
    plain = place(nodes, job(), slots=range(5))
    assert place(nodes, job(), slots=range(5), avoid={2: ("n9",)}) == plain


def test_a_slot_that_failed_everywhere_goes_where_it_failed_least_recently():
    nodes = [node("n1"), node("n2"), node("n3")]
    # least recent first: n2, then n3, then n1
    assert where(place(nodes, job(), avoid={0: ("n2", "n3", "n1")})) == {0: "n2"}
    # a node that cannot take it is no choice, avoided or not
    full = [instance("a", "n2", cpu=4)]
    assert where(place(nodes, job(), instances=full, avoid={0: ("n2", "n3", "n1")})) == {0: "n3"}
    d = place([node("n1", cpu=0.5)], job(), avoid={0: ("n1",)})
    assert d.unplaced == (0,) and d.no_fit[0].startswith("1 node lacks cpu")


def test_most_frequent_reason_first_and_each_node_counted_once():
    nodes = [
        node("n1", status="dead", drivers=()),
        node("n2", memory=100 * MiB),
        node("n3", memory=200 * MiB),
        node("n4", memory=300 * MiB),
        node("n5", eligible=False),
        node("n6", drivers=()),
        node("n7", drivers=()),
    ]
    assert place(nodes, job(memory=512 * MiB), slots=[0, 1]) == Decision(
        placements=(),
        unplaced=(0, 1),
        no_fit=(
            "3 nodes lack memory: need 512 MiB, the best has 300 MiB free",
            "2 nodes lack driver process",
            "1 node is dead",
            "1 node is ineligible",
        ),
    )


# --- scoring ----------------------------------------------------------------------------


def test_bin_pack_prefers_the_fullest_node_after_placing():
    nodes = [node("n1"), node("n2"), node("n3")]
    busy = [instance("a", "n2", cpu=2, memory=2 * GiB)]
    assert where(place(nodes, job(), instances=busy)) == {0: "n2"}
    # other jobs' instances go there too: it fills before the next node starts
    d = place(nodes, job("a"), instances=busy)
    busy.append(instance("a-0", d.placements[0][1], job="a"))
    assert where(place(nodes, job("b"), instances=busy)) == {0: "n2"}


def test_anti_affinity_six_instances_on_five_equal_nodes_go_two_one_one_one_one():
    nodes = [node(f"n{i}") for i in range(1, 6)]
    d = place(nodes, job(replicas=6), slots=range(6))
    assert where(d) == {0: "n1", 1: "n2", 2: "n3", 3: "n4", 4: "n5", 5: "n1"}
    assert place(nodes[::-1], job(replicas=6), slots=range(6)) == d


def test_anti_affinity_a_service_s_copies_go_to_different_nodes():
    # examples/web.yaml on a 5-node cluster with 0.4 cores free on each node: pure
    # bin-pack put all three on node-1, which took the service down with it.
    nodes = [node(f"node-{i}", cpu=1, memory=GiB) for i in range(1, 6)]
    busy = [instance(f"x{i}", f"node-{i}", cpu=0.6, memory=100 * MiB) for i in range(1, 6)]
    web = job(cpu=0.1, memory=64 * MiB, replicas=3, ports=["http"])
    d = place(nodes, web, slots=range(3), instances=busy)
    assert where(d) == {0: "node-1", 1: "node-2", 2: "node-3"}
    # a copy already running counts as much as one placed in this call
    there = [*busy, instance("web-0-aaaa", "node-1", job="web", cpu=0.1, memory=64 * MiB)]
    assert where(place(nodes, web, slots=[1, 2], instances=there)) == {1: "node-2", 2: "node-3"}


def test_anti_affinity_is_a_preference_not_a_constraint():
    # only n1 has room: all six go there (distinct_nodes is the constraint)
    nodes = [node("n1"), *(node(f"n{i}", memory=512 * MiB) for i in range(2, 6))]
    d = place(nodes, job(cpu=0.5, replicas=6), slots=range(6))
    assert where(d) == dict.fromkeys(range(6), "n1")
    d = place(nodes, job(cpu=0.5, replicas=6, distinct_nodes=True), slots=range(6))
    assert where(d) == {0: "n1"}
    assert d.unplaced == (1, 2, 3, 4, 5)


def test_anti_affinity_among_nodes_running_as_many_of_the_job_bin_pack_picks_the_fuller():
    nodes = [node("n1"), node("n2"), node("n3")]
    busy = [instance("a", "n2", cpu=1), instance("b", "n3", cpu=0.5)]
    busy += [instance(f"web-{k}", f"n{k + 1}", job="web", slot=k) for k in range(3)]
    # one of the job on each: the fullest (n2), then the fuller of the others (n3)
    assert where(place(nodes, job(replicas=4), [3], busy)) == {3: "n2"}
    assert where(place(nodes, job(replicas=4), [3], busy, {3: frozenset({"n2"})})) == {3: "n3"}


def test_anti_affinity_is_relative_to_the_job_s_replicas_so_a_big_job_still_packs():
    nodes = [node("n1"), node("n2")]
    busy = [instance("a", "n1", cpu=2.5, memory=5 * GiB)]  # n1 is the fuller

    def second(replicas: int) -> str:
        there = [*busy, instance("web-0", "n1", job="web", cpu=0.5, memory=GiB)]
        d = place(nodes, job(cpu=0.5, memory=GiB), [1], there, replicas=replicas)
        return where(d)[1]

    # a second of two on n1 would be half the job: it goes to n2; a second of a hundred
    # on the much fuller n1 is a small risk for the packing gained
    assert second(2) == "n2"
    assert second(100) == "n1"
    # the count is the Ask's (the job record's: scaled), else the spec's
    there = [*busy, instance("web-0", "n1", job="web", cpu=0.5, memory=GiB)]
    assert where(place(nodes, job(cpu=0.5, memory=GiB, replicas=100), [1], there)) == {1: "n1"}


def test_anti_affinity_never_a_second_copy_beside_a_first_while_an_equal_node_has_none():
    rng = random.Random(7)
    for _ in range(200):
        count, cpu, replicas = rng.randrange(2, 8), rng.choice([1, 2, 4, 16]), rng.randrange(1, 40)
        nodes = [node(f"n{i}", cpu=cpu, memory=cpu * GiB) for i in range(count)]
        load = rng.choice([0, 0.25, 0.5]) * cpu  # the same other load on every node
        busy = [instance(f"x{i}", f"n{i}", cpu=load, memory=int(load * GiB)) for i in range(count)]
        size = rng.choice([0.1, 0.25, 0.3, 0.5, 1, 2])
        spec = job(cpu=size, memory=int(size * GiB), replicas=replicas)
        d = place(nodes, spec, slots=range(replicas), instances=busy)
        per_node = [list(where(d).values()).count(f"n{i}") for i in range(count)]
        if min(per_node) == 0:
            assert max(per_node) <= 1, (count, cpu, load, size, replicas, per_node)


def test_bin_pack_weighs_cpu_and_memory_as_fractions_of_capacity():
    # n1 is half full by cpu, n2 a quarter full by memory: n1 is fuller.
    nodes = [node("n1", cpu=4, memory=8 * GiB), node("n2", cpu=4, memory=8 * GiB)]
    busy = [
        instance("a", "n1", cpu=2, memory=1 * MiB),
        instance("b", "n2", cpu=0.1, memory=2 * GiB),
    ]
    assert where(place(nodes, job(), instances=busy)) == {0: "n1"}


def test_spread_prefers_the_label_value_with_fewest_instances_then_bin_packs():
    nodes = [
        node("a1", zone="a"),
        node("a2", zone="a"),
        node("b1", zone="b"),
        node("b2", zone="b"),
        node("x1"),
    ]
    there = [
        instance("web-0-0001", "a1", job="web"),
        instance("web-1-0002", "a2", job="web"),
        instance("web-2-0003", "b2", job="web"),
        instance("other", "b1", cpu=3),
    ]
    d = place(nodes, job(spread="zone"), slots=[3, 4, 5, 6], instances=there)
    # counts a=2, b=1, ""=1: x1 ("" has none); then b and "" tie at 1, and b1 (holding
    # 3 cores of another job) is fuller than x1; then "" again (a and b hold 2); then all
    # hold 2, b1 is full, and x1 is the fullest of the rest.
    assert where(d) == {3: "x1", 4: "b1", 5: "x1", 6: "x1"}


def test_spread_balances_instances_across_values():
    nodes = [node(f"n{i}", cpu=64, memory=64 * GiB, rack=f"r{i % 3}") for i in range(9)]
    d = place(nodes, job(spread="rack"), slots=range(30))
    per_rack: dict[str, int] = {}
    for nid in where(d).values():
        rack = f"r{int(nid[1:]) % 3}"
        per_rack[rack] = per_rack.get(rack, 0) + 1
    assert per_rack == {"r0": 10, "r1": 10, "r2": 10}
    # and inside a rack it bin-packs: one node per rack takes them all
    assert len(set(where(d).values())) == 3


def test_spread_skips_a_value_whose_nodes_are_full():
    nodes = [node("a1", cpu=1, zone="a"), node("b1", cpu=8, zone="b")]
    d = place(nodes, job(spread="zone"), slots=range(4))
    assert sorted(where(d).values()) == ["a1", "b1", "b1", "b1"]


# --- ports and reservations ---------------------------------------------------------------


def test_ports_are_the_lowest_free_and_never_given_twice():
    held = [
        instance("a", "n1", ports={"http": 20000, "admin": 20002}),
        # terminal and desired stop: holds nothing, its port is free again
        instance("b", "n1", ports={"http": 20001}, desired="stop", state="exited"),
        # stopping but still running: still holds
        instance("c", "n1", ports={"http": 20003}, desired="stop", state="running"),
    ]
    d = place([node("n1")], job(ports=["http", "admin"]), slots=[0, 1], instances=held)
    assert d.placements == (
        (0, "n1", {"http": 20001, "admin": 20004}),
        (1, "n1", {"http": 20005, "admin": 20006}),
    )


def test_ports_run_out_within_one_ask():
    d = place([node("n1", ports=(30000, 30004))], job(ports=["a", "b"]), slots=range(3))
    assert [p for _, _, p in d.placements] == [{"a": 30000, "b": 30001}, {"a": 30002, "b": 30003}]
    assert d.unplaced == (2,)
    assert d.no_fit == ("1 node lacks ports: need 2 ports, it has 1 free",)


def test_holds_and_reserved():
    records = [
        instance("a", "n1", cpu=0.1, memory=100),
        instance("b", "n1", cpu=0.2, memory=200, desired="stop", state="running"),
        instance("c", "n1", cpu=5, memory=5, desired="stop", state="exited"),
        instance("d", "n2", cpu=1, memory=1, state="failed"),  # desired run: may restart
        instance("e", "n3", cpu=1, memory=1, desired="stop", state="lost"),
    ]
    assert [holds(i) for i in records] == [True, True, False, True, False]
    assert reserved(records) == {
        "n1": Resources(cpu=0.3, memory=300),
        "n2": Resources(cpu=1, memory=1),
    }
    assert reserved(records, "n1") == Resources(cpu=0.3, memory=300)
    assert reserved(records, "n3") == Resources()


def test_an_ask_never_oversubscribes_a_node():
    d = place([node("n1", cpu=2, memory=64 * GiB)], job(cpu=0.7), slots=range(5))
    assert len(d.placements) == 2
    assert d.unplaced == (2, 3, 4)


def test_schedule_all_places_each_ask_after_the_ones_before():
    nodes = [
        node("n1", cpu=2, ports=(20000, 20001)),
        node("n2", cpu=2, ports=(20000, 20001)),
        node("n3", cpu=2, ports=(0, 0)),
    ]
    web = job("web", replicas=3, ports=["http"])
    api = job("api", distinct_nodes=True, ports=["http"])
    web_d, api_d = schedule_all(nodes, [], [Ask(web, 1, (0, 1, 2)), Ask(api, 1, (0, 1, 2))])
    assert web_d.placements == (
        (0, "n1", {"http": 20000}),
        (1, "n2", {"http": 20000}),
        (2, "n1", {"http": 20001}),
    )
    assert api_d.placements == ((0, "n2", {"http": 20001}),)
    assert api_d.unplaced == (1, 2)
    assert api_d.no_fit == (
        "1 node already runs an instance of api (distinct_nodes)",
        "1 node lacks cpu: need 1 core, it has 0 cores free",
        "1 node lacks ports: need 1 port, it has 0 free",
    )
    # the same as asking one by one, adding each decision's instances
    one = schedule(nodes, [], Ask(web, 1, (0, 1, 2)))
    placed = [
        instance(f"web-{slot}", nid, job="web", ports=ports) for slot, nid, ports in one.placements
    ]
    assert (one, schedule(nodes, placed, Ask(api, 1, (0, 1, 2)))) == (web_d, api_d)


# --- determinism, explanation, size ---------------------------------------------------------


def _random_cluster(rng: random.Random) -> tuple[list[NodeView], list[InstanceRecord]]:
    nodes = []
    for i in range(60):
        labels = {"zone": rng.choice(["a", "b", "c"])} if rng.random() < 0.8 else {}
        nodes.append(
            node(
                f"n{i:02d}",
                cpu=rng.choice([2, 4, 8]),
                memory=rng.choice([4, 8, 16]) * GiB,
                status=rng.choice(["alive"] * 8 + ["dead", "suspect"]),
                ports=(20000, 20000 + rng.randrange(3, 30)),
                **labels,
            )
        )
    instances = []
    for i in range(150):
        nid = rng.choice(nodes).record.node
        instances.append(
            instance(
                f"i{i}",
                nid,
                job=rng.choice(["web", "db"]),
                cpu=rng.choice([0.1, 0.2, 0.3, 0.5]),
                memory=rng.choice([64, 128, 256]) * MiB,
                ports={"http": 20000 + rng.randrange(0, 3)},
                desired=rng.choice(["run", "run", "stop"]),
                state=rng.choice(["running", "exited", "pending"]),
            )
        )
    return nodes, instances


def test_same_inputs_same_decision_whatever_their_order():
    for seed in range(5):
        nodes, instances = _random_cluster(random.Random(seed))
        for spec in (
            job(cpu=0.3, memory=200 * MiB, ports=["http", "metrics"]),
            job(cpu=0.3, memory=200 * MiB, ports=["http"], spread="zone"),
            job(cpu=1, memory=GiB, distinct_nodes=True, spread="zone"),
        ):
            ask = Ask(spec, 1, tuple(range(600)), {3: frozenset({"n01", "n02"})})
            first = schedule(nodes, instances, ask)
            assert first.placements and first.unplaced  # the sample both places and runs out
            for shuffle_seed in range(3):
                rng = random.Random(shuffle_seed)
                n2, i2 = list(nodes), list(instances)
                rng.shuffle(n2)
                rng.shuffle(i2)
                assert schedule(n2, i2, ask) == first


def test_placements_match_a_plain_reading_of_the_rules():
    """The heaps give what scanning every node with the stated key would."""
    for seed in range(3):
        nodes, instances = _random_cluster(random.Random(seed))
        for spec in (
            job(cpu=0.3, memory=300 * MiB, ports=["http"], spread="zone"),
            job(cpu=0.3, memory=300 * MiB, ports=["http"], replicas=100),
            job(cpu=0.3, memory=300 * MiB, ports=["http"], replicas=5),
        ):
            d = schedule(nodes, instances, Ask(spec, 1, tuple(range(100))))
            assert len(d.placements) > 50  # enough for the comparison to mean something
            held = list(instances)
            for slot, nid, ports in d.placements:
                assert nid == _naive_best(nodes, held, spec), f"slot {slot}"
                web = instance(
                    f"web-{slot}", nid, job="web", cpu=0.3, memory=300 * MiB, ports=ports
                )
                held.append(web)


def _naive_best(nodes: list[NodeView], instances: list[InstanceRecord], spec: JobSpec) -> str:
    """The rules as the design states them, one node at a time, no cleverness."""
    per_value: dict[str, int] = {}
    per_node: dict[str, int] = {}
    for i in instances:
        if i.job == spec.name and i.desired == "run":
            value = next(v.labels.get("zone", "") for v in nodes if v.record.node == i.node)
            per_value[value] = per_value.get(value, 0) + 1
            per_node[i.node] = per_node.get(i.node, 0) + 1
    best = None
    for v in nodes:
        r = v.record
        if r.status != "alive" or not r.eligible or spec.driver not in r.drivers:
            continue
        on = [i for i in instances if i.node == r.node and holds(i)]
        cpu = sum(i.cpu for i in on) + spec.resources.cpu
        memory = sum(i.memory for i in on) + spec.resources.memory
        ports = {p for i in on for p in i.ports.values() if r.port_lo <= p <= r.port_hi}
        if cpu > r.cpu + 1e-9 or memory > r.memory:
            continue
        if r.port_hi - r.port_lo + 1 - len(ports) < len(spec.ports):
            continue
        score = (cpu / r.cpu + memory / r.memory) / 2
        if spec.spread:
            key = (per_value.get(v.labels.get("zone", ""), 0), -round(score, 9), r.node)
        else:  # Nomad's job anti-affinity, averaged with bin-pack where it applies
            own = per_node.get(r.node, 0)
            if own:
                score = (score - (own + 1) / spec.replicas) / 2
            key = (0, -round(score, 9), r.node)
        best = min(best or key, key)
    assert best is not None
    return best[2]


def test_size_ten_thousand_instances_over_a_thousand_nodes_in_batches():
    nodes = [
        node(f"n{i:04d}", cpu=16, memory=32 * GiB, ports=(20000, 20019), zone=f"z{i % 4}")
        for i in range(1000)
    ]
    instances: list[InstanceRecord] = []

    def record(spec: JobSpec, decision: Decision) -> None:
        assert decision.unplaced == () and decision.no_fit == ()
        for slot, nid, ports in decision.placements:
            resources = spec.resources
            instances.append(
                instance(
                    f"{spec.name}-{slot}",
                    nid,
                    job=spec.name,
                    cpu=resources.cpu,
                    memory=resources.memory,
                    ports=ports,
                    slot=slot,
                )
            )

    web = job("web", cpu=1, memory=2 * GiB, ports=["http"], replicas=4000)
    api = job("api", cpu=0.5, memory=GiB, ports=["http", "grpc"], spread="zone", replicas=4000)
    for start in range(0, 8_000, 250):  # one job's batch per call
        spec = (web, api)[(start // 250) % 2]
        record(spec, schedule(nodes, instances, Ask(spec, 1, tuple(range(start, start + 250)))))
    # and a round of several jobs' asks at once
    asks = [
        Ask(job(f"j{k}", cpu=0.25, memory=GiB // 2, replicas=400), 1, tuple(range(400)))
        for k in range(5)
    ]
    for ask, decision in zip(asks, schedule_all(nodes, instances, asks), strict=True):
        record(ask.spec, decision)

    assert len(instances) == 10_000
    per_node: dict[str, list[InstanceRecord]] = {}
    for i in instances:
        per_node.setdefault(i.node, []).append(i)
    for nid, on in per_node.items():
        assert sum(i.cpu for i in on) <= 16 and sum(i.memory for i in on) <= 32 * GiB, nid
        ports = [p for i in on for p in i.ports.values()]
        assert len(ports) == len(set(ports)) and all(20000 <= p <= 20019 for p in ports), nid
    api_zones: dict[str, int] = {}
    for i in instances:
        if i.job == "api":
            zone = f"z{int(i.node[1:]) % 4}"
            api_zones[zone] = api_zones.get(zone, 0) + 1
    assert sorted(api_zones.values()) == [1000] * 4
