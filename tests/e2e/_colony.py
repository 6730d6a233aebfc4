"""A real `colony up` cluster shared by an e2e module, its nodes labelled ``host=<name>``
(so that a job can be kept on, or spread across, chosen nodes), with the reads and
verbs the job tests use on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import yaml
from _cli import colony, down, on_cluster, up

from colony.cli.local.ports import free_base_port
from colony.harness import jobs as harness
from colony.harness.jobs import LocalJobs, all_running, instance_processes
from colony.harness.processes import wait_for
from colony.shared.statedir import StateDir

FORM = 90
"""Seconds for a fresh cluster to elect, appoint a manager and register every node."""
SETTLE = 60
"""Seconds for a job's instances to be placed and running (or to end as expected)."""


class Colony:
    """The module's cluster: its state dir, its reads, its nodes by name and id."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.jobs = LocalJobs(state)

    def ids(self) -> dict[str, str]:
        """Node name -> id."""
        return {n.name: n.read_id() or "" for n in StateDir(self.state).nodes()}

    def name_of(self, node_id: str) -> str:
        return next(name for name, i in self.ids().items() if i == node_id)

    def manager(self, above_epoch: int = 0, timeout: float = FORM):
        return on_cluster(self.state, lambda c: c.wait_manager(timeout, above_epoch=above_epoch))

    def others(self) -> list[str]:
        """Names of the nodes that are not the manager's, in order."""
        chief = self.name_of(self.manager().node)
        return [name for name in self.ids() if name != chief]

    def nodes_alive(self, ids: list[str] | None = None, timeout: float = FORM) -> None:
        """Until the manager has recorded these nodes (every node) alive, each registered
        by its agent."""
        wanted = set(ids or self.ids().values())

        def alive() -> bool:
            nodes = self.jobs.nodes()
            return all(n in nodes and nodes[n].status == "alive" and nodes[n].registered
                       for n in wanted)  # fmt: skip

        wait_for(alive, timeout, f"nodes {sorted(wanted)} registered and alive", every=0.5)

    def run(self, spec: dict, tmp_path: Path, *extra: str, check: bool = True):
        """`colony job run` of `spec` written as a YAML job file."""
        path = tmp_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return colony("job", "run", str(path), *extra, state=self.state, check=check)

    def running(self, job: str, replicas: int, avoid=(), timeout: float = SETTLE):
        return self.jobs.until(
            lambda seen: all_running(seen, replicas, avoid),
            job,
            timeout,
            f"{replicas} instances of {job} running, one per slot"
            + (f", none on {sorted(avoid)}" if avoid else ""),
        )

    def purge(self, *names: str) -> None:
        """Stop and forget these jobs; until they are gone, with every process of theirs."""
        for name in names:
            colony("job", "stop", name, "--purge", state=self.state, check=False)
        for name in names:
            wait_for(
                lambda n=name: n not in self.jobs.jobs() and not instance_processes(n),
                SETTLE,
                f"job {name} forgotten and its processes gone",
                every=0.5,
            )

    def crash(self, node_id: str, instances: bool) -> None:
        """kill -9 the node's supervisor and services (and, with `instances`, every
        instance process its agent started: a machine failure)."""
        next(n for n in StateDir(self.state).nodes() if n.read_id() == node_id).crash()
        if instances:
            harness.kill_instances_of(node_id)


def on_host(*names: str) -> list[dict]:
    if len(names) == 1:
        return [{"label": "host", "op": "=", "value": names[0]}]
    return [{"label": "host", "op": "in", "value": list(names)}]


@contextlib.contextmanager
def labelled_cluster(state: Path, nodes: int) -> Iterator[Colony]:
    """`colony up --nodes N` in `state`, each node labelled host=<its name>, every node
    registered and alive; `colony down` after, and whatever instance it left killed."""
    up(state, free_base_port(nodes), nodes=nodes)
    try:
        here = Colony(state)
        here.manager()
        for name in here.ids():
            colony("node", "label", name, f"host={name}", state=state)
        here.nodes_alive()
        yield here
    finally:
        ids = Colony(state).ids().values()
        down(state)
        for node in ids:  # what `colony down` would have left behind
            harness.kill_instances_of(node)
