"""Service discovery: where a job's healthy instances answer, from the curator's view.

Pure: a `View` in, endpoints out. An instance is an endpoint of its job while it is
desired to run, runs, is healthy (as its node's monitor last said of its current run)
and is on a node that is neither dead nor left; it leaves the set at the commit of its
stop, before its agent stops it (the agent waits `shutdown_delay` first, so clients stop
sending before it goes). Endpoints are ordered by instance id: the same set always reads
the same, so a watcher is told only of real changes.
"""

from __future__ import annotations

from collections import defaultdict

from colony.curator.reconcile import GONE
from colony.curator.view import View
from colony.shared.jobspec import JobSpec
from colony.shared.messages import Endpoint, InstanceRecord


class UnknownJob(LookupError):
    """No such job in the view."""


class UnknownPort(ValueError):
    """The job has no port of the asked name."""


def port_name(job: str, spec: JobSpec, asked: str = "") -> str:
    """The port an endpoint set gives: `asked`, or the job's first port ('' : it has none).
    UnknownPort if the job has no port `asked`."""
    if not asked:
        return spec.ports[0] if spec.ports else ""
    if asked not in spec.ports:
        has = f"its ports: {', '.join(spec.ports)}" if spec.ports else "it has no ports"
        raise UnknownPort(f"job {job} has no port named {asked!r} ({has})")
    return asked


def job_endpoints(view: View, job: str, port: str = "") -> tuple[str, list[Endpoint]]:
    """The port's name and `job`'s endpoints on it (`port` '' : the job's first port).
    UnknownJob if the view has no such job, UnknownPort if it has no such port."""
    record = view.jobs.get(job)
    if record is None:
        raise UnknownJob(f"no job named {job!r} (colony job list shows the jobs)")
    name = port_name(job, record.spec, port)
    found = [i for i in view.instances.values() if i.job == job and _serving(view, i)]
    return name, _endpoints(view, found, name)


def every_job(view: View) -> dict[str, tuple[str, list[Endpoint]]]:
    """Every job's endpoints on its first port (what `endpoints_changed` publishes): one
    pass over the instances."""
    serving: dict[str, list[InstanceRecord]] = defaultdict(list)
    for i in view.instances.values():
        if i.job in view.jobs and _serving(view, i):
            serving[i.job].append(i)
    found = {}
    for job, record in view.jobs.items():
        name = port_name(job, record.spec)
        found[job] = (name, _endpoints(view, serving.get(job, []), name))
    return found


def _serving(view: View, i: InstanceRecord) -> bool:
    if i.desired != "run" or i.state != "running" or i.health != "healthy":
        return False
    node = view.nodes.get(i.node)
    if view.answered and view.members.get(i.node) != "alive":
        return False  # suspect, or gone before the manager recorded it: clients stop now
    return node is not None and node.status not in GONE


def _endpoints(view: View, instances: list[InstanceRecord], port: str) -> list[Endpoint]:
    """`instances` as endpoints on `port`, by id. An instance without that port (placed
    at a version that named its ports otherwise) is left out: it answers elsewhere."""
    return [
        Endpoint(
            instance=i.id,
            node=i.node,
            host=view.nodes[i.node].address,
            port=i.ports[port] if port else 0,
            ports=dict(i.ports),
            version=i.version,
            healthy_since=i.healthy_since,
        )
        for i in sorted(instances, key=lambda i: i.id)
        if not port or port in i.ports
    ]
