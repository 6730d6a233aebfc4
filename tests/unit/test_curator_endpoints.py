"""Service discovery's endpoint sets, computed from views built by hand."""

from __future__ import annotations

import pytest

from colony.curator.endpoints import UnknownJob, UnknownPort, every_job, job_endpoints
from colony.curator.view import View
from colony.shared.jobspec import JobSpec, Task
from colony.shared.messages import InstanceRecord, JobRecord, NodeRecord


def job(name: str, ports: list[str]) -> JobRecord:
    spec = JobSpec(name=name, task=Task(command="sleep", args=["60"]), ports=ports)
    return JobRecord(name=name, version=1, spec=spec, replicas=3)


def healthy(id: str, node: str, job: str = "web", **fields) -> InstanceRecord:
    values = {
        "version": 1,
        "slot": 0,
        "cpu": 1.0,
        "memory": 1,
        "ports": {"http": 30001, "admin": 30002},
        "state": "running",
        "health": "healthy",
        "healthy_since": 100.0,
        **fields,
    }
    return InstanceRecord(id=id, job=job, node=node, **values)


def view(*instances: InstanceRecord, nodes: dict[str, str] | None = None) -> View:
    statuses = nodes or {"n1": "alive", "n2": "alive"}
    return View(
        nodes={
            n: NodeRecord(node=n, address=f"10.0.0.{k}", status=status)
            for k, (n, status) in enumerate(sorted(statuses.items()), 1)
        },
        jobs={"web": job("web", ["http", "admin"]), "batch": job("batch", [])},
        instances={i.id: i for i in instances},
    )


def ids(endpoints) -> list[str]:
    return [e.instance for e in endpoints]


def test_healthy_running_instances_desired_run_are_endpoints_ordered_by_id():
    v = view(
        healthy("web-2-b", "n2"),
        healthy("web-0-a", "n1"),
        healthy("web-1-x", "n1", health=""),  # not decided yet (starting, in its grace)
        healthy("web-1-y", "n1", health="unhealthy"),
        healthy("web-3-z", "n1", state="starting", health=""),
        healthy("web-4-s", "n1", desired="stop"),  # leaves the set at its stop's commit
    )
    port, found = job_endpoints(v, "web")
    assert port == "http"  # the job's first port
    assert ids(found) == ["web-0-a", "web-2-b"]
    first = found[0]
    assert (first.node, first.host, first.port, first.version) == ("n1", "10.0.0.1", 30001, 1)
    assert first.ports == {"http": 30001, "admin": 30002} and first.healthy_since == 100.0
    assert found[1].host == "10.0.0.2"


def test_a_port_by_name_and_no_port_at_all():
    v = view(healthy("web-0-a", "n1"), healthy("batch-0-a", "n1", job="batch", ports={}))
    port, found = job_endpoints(v, "web", "admin")
    assert port == "admin" and [e.port for e in found] == [30002]
    port, found = job_endpoints(v, "batch")
    assert port == "" and [(e.instance, e.port) for e in found] == [("batch-0-a", 0)]


def test_an_instance_without_the_asked_port_is_left_out():
    v = view(healthy("web-0-a", "n1"), healthy("web-1-b", "n1", ports={"http": 30005}))
    assert ids(job_endpoints(v, "web", "admin")[1]) == ["web-0-a"]
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a", "web-1-b"]


@pytest.mark.parametrize("status", ["dead", "left"])
def test_instances_on_a_dead_or_left_node_are_not_endpoints(status):
    nodes = {"n1": "alive", "n2": status}
    v = view(healthy("web-0-a", "n1"), healthy("web-1-b", "n2"), nodes=nodes)
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a"]


def test_suspect_nodes_still_serve_and_unknown_nodes_do_not():
    v = view(
        healthy("web-0-a", "n1"), healthy("web-1-b", "n9"), nodes={"n1": "suspect", "n2": "alive"}
    )
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a"]


def test_unknown_job_and_unknown_port_are_clear_errors():
    v = view()
    with pytest.raises(UnknownJob, match="no job named 'api'"):
        job_endpoints(v, "api")
    with pytest.raises(UnknownPort, match=r"no port named 'grpc' \(its ports: http, admin\)"):
        job_endpoints(v, "web", "grpc")
    with pytest.raises(UnknownPort, match=r"batch has no port named 'http' \(it has no ports\)"):
        job_endpoints(v, "batch", "http")


def test_every_job_has_a_set_even_when_empty_and_matches_each_jobs_own():
    v = view(
        healthy("web-1-b", "n2"),
        healthy("web-0-a", "n1"),
        healthy("batch-0-a", "n1", job="batch", ports={}, health="unhealthy"),
        healthy("gone-0-a", "n1", job="gone"),  # its job is not in the view: no set
    )
    found = every_job(v)
    assert set(found) == {"web", "batch"}
    assert found["web"] == job_endpoints(v, "web")
    assert found["batch"] == ("", [])


def test_an_instance_on_a_node_membership_no_longer_sees_alive_leaves_at_once():
    """Before the manager records the node dead (a suspicion window, then DEAD_AFTER),
    membership's word takes its instances out: clients stop sending there now."""
    v = view(healthy("web-0-a", "n1"), healthy("web-1-b", "n2"))
    v.answered, v.members = True, {"n1": "alive", "n2": "suspect"}
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a"]
    v.members = {"n1": "alive"}  # n2 unknown to membership
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a"]
    v.members = {"n1": "alive", "n2": "alive"}
    assert ids(job_endpoints(v, "web")[1]) == ["web-0-a", "web-1-b"]
