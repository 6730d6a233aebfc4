"""Forming and tearing down a local cluster: N nodes on loopback, one state dir.

Ports are laid out from one base port so that a cluster's addresses are
predictable (node i, counting from 0):

    client  base + i          nats://127.0.0.1:4222, 4223, ...
    routes  base + 2000 + i   6222, 6223, ...
    nats    base + 4000 + i   8222, ...  (nats-server's HTTP monitoring)
    metrics base + 5000 + i   9222, ...  (the monitor's Prometheus endpoint)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil
import tomli_w

from colony.shared import natsd, subjects
from colony.shared.bus import Bus, BusError, connect
from colony.shared.config import Config, ConfigError, NatsSettings, load
from colony.shared.config import dumps as dump_config
from colony.shared.messages import ConsensusStatusRequest
from colony.shared.statedir import SUPERVISOR, NodeDir, ProcessRecord, StateDir

DEFAULT_BASE_PORT = 4222
MAX_NODES = 100
PORT_OFFSETS = {"client": 0, "routes": 2000, "nats-http": 4000, "metrics": 5000}
METRICS_KEPT = 3600.0
"""Seconds the metrics stream keeps a node's last sample."""


class ClusterError(Exception):
    """The cluster cannot be formed as asked; the message says why."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    ports: dict[str, int]
    voter: bool = False
    """Runs a Raft voter (consensus)."""

    @property
    def server(self) -> natsd.ServerPorts:
        p = self.ports
        return natsd.ServerPorts(p["client"], p["routes"], p["nats-http"])


def default_voters(nodes: int) -> int:
    """3 voters (a majority survives one loss), or 1 when there are fewer than 3 nodes."""
    return 3 if nodes >= 3 else 1


def plan(
    nodes: int, base_port: int = DEFAULT_BASE_PORT, voters: int | None = None
) -> list[NodePlan]:
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    voters = default_voters(nodes) if voters is None else voters
    if voters not in (1, 3, 5) or voters > nodes:
        raise ClusterError(
            f"--voters must be 1, 3 or 5 and at most --nodes ({nodes}), not {voters}: "
            "an odd count keeps a majority through a split"
        )
    top = base_port + max(PORT_OFFSETS.values()) + nodes - 1
    if base_port < 1024 or top > 65535:
        raise ClusterError(
            f"--base-port {base_port} puts ports outside 1024-65535 (the highest would be {top})"
        )
    return [
        NodePlan(
            f"node-{i + 1}",
            {kind: base_port + off + i for kind, off in PORT_OFFSETS.items()},
            voter=i < voters,
        )
        for i in range(nodes)
    ]


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    """What cluster.toml records of the cluster `colony up` formed."""

    nodes: int
    base_port: int
    voters: int | None = None
    """None in a cluster.toml written before voters existed: the default then."""


def plan_of(state: StateDir) -> list[NodePlan]:
    """The plan of the state dir's cluster as `colony up` last formed it (none: empty)."""
    shape = previous_shape(state)
    return plan(shape.nodes, shape.base_port, shape.voters) if shape else []


def previous_shape(state: StateDir) -> Shape | None:
    """The shape the state dir's cluster had, or None for a new state dir."""
    if not state.cluster_file.exists():
        return None
    try:
        return msgspec.toml.decode(state.cluster_file.read_bytes(), type=Shape)
    except (msgspec.DecodeError, OSError) as e:
        raise ClusterError(
            f"{state.cluster_file} is damaged ({e}); fix it, or delete it to start over"
        ) from None


def free_base_port(nodes: int, low: int = 20000, tries: int = 200) -> int:
    """A random base port from `low` whose whole layout is free now (tests, benchmarks).

    The layout stays below the kernel's ephemeral range when it can: any outgoing
    connection may take a port there at any moment, so a layout that is free now
    could find one of its ports taken when its process binds it.
    """
    span = max(PORT_OFFSETS.values()) + nodes
    high = ephemeral_ports()[0] - span
    if high <= low:
        high = 65536 - span
    for _ in range(tries):
        base = random.randrange(low, high)
        if not ports_taken(plan(nodes, base)):
            return base
    raise ClusterError(f"no free port layout for {nodes} nodes between {low} and {high}")


def ephemeral_ports() -> tuple[int, int]:
    """The range of local ports the kernel hands to outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # the IANA range, which other systems use


def ports_taken(plans: list[NodePlan], host: str = "127.0.0.1") -> list[str]:
    """Every planned port something already listens on, named."""
    return [
        f"{host}:{port} ({node.name} {kind})"
        for node in plans
        for kind, port in node.ports.items()
        if not natsd.port_free(host, port)
    ]


def running(state: StateDir) -> list[NodeDir]:
    """Nodes of the state dir whose supervisor is alive."""
    return [n for n in state.nodes() if (r := n.record(SUPERVISOR)) is not None and r.alive()]


def leftovers(state: StateDir) -> list[ProcessRecord]:
    """Recorded processes (of any node) still running."""
    return [r for n in state.nodes() for r in n.records() if r.group_alive()]


def write_nodes(state: StateDir, plans: list[NodePlan]) -> list[NodeDir]:
    """Write each node's config and nats.conf; keep ids and hand-edited capacity/labels."""
    state.create()
    voters = sum(p.voter for p in plans)
    shape = {"nodes": len(plans), "base_port": plans[0].ports["client"], "voters": voters}
    state.cluster_file.write_text(tomli_w.dumps(shape))
    routes = [p.ports["routes"] for p in plans]
    voter_ids = [state.node(p.name).node_id for p in plans if p.voter]
    secret = cluster_secret(state)
    node_dirs = []
    for node in plans:
        node_dir = state.node(node.name)
        node_dir.create()
        config = _existing_config(node_dir)
        config = msgspec.structs.replace(
            config,
            node=msgspec.structs.replace(
                config.node,
                id=node_dir.node_id,
                name=node.name,
                dir=str(node_dir.path.resolve()),
                local_nodes=len(plans),
            ),
            nats=msgspec.structs.replace(
                config.nats, servers=[f"nats://127.0.0.1:{node.ports['client']}"]
            ),
            monitor=msgspec.structs.replace(config.monitor, http_port=node.ports["metrics"]),
            consensus=msgspec.structs.replace(
                config.consensus, voters=voter_ids, secret_file=str(secret.resolve())
            ),
        )
        roles = [r for r in config.node.roles if r != "voter"] + (["voter"] if node.voter else [])
        config = msgspec.structs.replace(
            config, node=msgspec.structs.replace(config.node, roles=roles)
        )
        node_dir.config_file.write_text(dump_config(config))
        server = natsd.ServerConfig(
            node_dir.node_id, node.server, node_dir.nats_store.resolve(), routes=routes
        )
        node_dir.nats_conf.write_text(server.render())
        node_dirs.append(node_dir)
    return node_dirs


def cluster_secret(state: StateDir) -> Path:
    """The file of the secret that signs Raft frames: made once, readable by its owner only."""
    path = state.path / "cluster.secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


def _existing_config(node_dir: NodeDir) -> Config:
    if not node_dir.config_file.exists():
        return Config()
    try:
        return load(node_dir.config_file, env={})
    except ConfigError as e:
        raise ClusterError(f"{e} (fix it, or delete the file to start over)") from None


def start_supervisor(node_dir: NodeDir) -> ProcessRecord:
    """Start the node's supervisor, detached from this terminal and process group."""
    argv = [sys.executable, "-m", "colony.bootstrapper", "--node-dir", str(node_dir.path)]
    with open(node_dir.log(SUPERVISOR), "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = ProcessRecord.of(SUPERVISOR, process.pid, argv)
    if record is None:
        raise ClusterError(f"{node_dir.name}'s supervisor exited at once; see {out.name}")
    node_dir.write_record(record)  # at once, so `colony down` finds it even mid-start
    return record


def servers(state: StateDir) -> list[str]:
    """The client URL of every node's nats-server."""
    return [url for node_dir in state.nodes() if (url := node_dir.nats_url())]


async def wait_ready(
    state: StateDir,
    node_dirs: list[NodeDir],
    timeout: float,
    progress: Callable[[str], None] = lambda _: None,
) -> None:
    """Wait for a JetStream meta leader and a first metrics sample from every node."""
    deadline = time.monotonic() + timeout
    http_urls = [_nats_http(n) for n in node_dirs]

    def check_supervisors() -> None:
        for node_dir in node_dirs:
            record = node_dir.record(SUPERVISOR)
            if record is None or not record.alive():
                raise ClusterError(
                    f"{node_dir.name}'s supervisor exited; see {node_dir.log(SUPERVISOR)}"
                )

    progress("waiting for the nats-servers and a JetStream meta leader")
    while True:
        check_supervisors()
        leaders = {natsd.jetstream_leader(url, timeout=0.5) for url in http_urls}
        if None not in leaders and len(leaders) == 1:
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"no JetStream meta leader within {timeout:g} s")
        await asyncio.sleep(0.1)

    bus = await connect(NatsSettings(servers=servers(state)), "colony-up", reconnect=False)
    try:
        replicas = min(3, len(state.nodes()))
        await _ensure_metrics_stream(bus, replicas=replicas, deadline=deadline)
        expected = {n.node_id for n in node_dirs}
        seen: set[str] = set()
        sub = await bus.subscribe(subjects.node_metrics(subjects.ANY))
        progress(f"waiting for metrics from {len(expected)} nodes")
        while expected - seen:  # the nodes of a running cluster publish too
            check_supervisors()
            try:
                sample = await sub.next(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                seen.add(sample.node)
                progress(f"metrics from {len(seen & expected)}/{len(expected)} nodes")
            except TimeoutError:
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(expected - seen))
                    raise ClusterError(f"no metrics from {missing} within {timeout:g} s") from None
        await sub.stop()
        await _wait_for_raft_leader(bus, voters_of(state), deadline, progress, check_supervisors)
    finally:
        await bus.close()


def voters_of(state: StateDir) -> list[str]:
    """Node ids to ask for consensus: the configured voters first, then every other node
    (any may have been promoted since, replacing a lost voter)."""
    configured, others = [], []
    for node_dir in state.nodes():
        if node_dir.config_file.exists():
            config = _existing_config(node_dir)
            configured = configured or config.consensus.voters
            others.append(config.node.id)
    return list(dict.fromkeys([*configured, *others])) if configured else []


async def _wait_for_raft_leader(
    bus: Bus, nodes: list[str], deadline: float, progress, check_supervisors
) -> None:
    """Until there is a leader and every voter in its view answers naming it (standby
    nodes, which are not voters now, are not waited for)."""
    if not nodes:
        return
    progress("waiting for the voters to elect a Raft leader")
    while True:
        check_supervisors()
        views = {}
        for node in nodes:
            with contextlib.suppress(BusError):
                views[node] = await bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
        leader = next((v for v in views.values() if v.role == "leader"), None)
        if leader and all(
            v.node in views and views[v.node].leader == leader.node for v in leader.voters
        ):
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                "the voters elected no Raft leader in time; see their consensus logs"
            )
        await asyncio.sleep(0.1)


async def _ensure_metrics_stream(bus: Bus, replicas: int, deadline: float) -> None:
    """The stream that keeps each node's last sample (for `last heard` in status)."""
    while True:
        try:
            await bus.ensure_stream(
                subjects.METRICS_STREAM,
                [subjects.node_metrics(subjects.ANY).name],
                replicas=replicas,
                max_msgs_per_subject=1,
                max_age=METRICS_KEPT,
                memory=True,
            )
            return
        except Exception as e:  # JetStream answers 503 for a moment after electing
            if time.monotonic() > deadline:
                raise ClusterError(f"cannot create the metrics stream: {e}") from None
            await asyncio.sleep(0.2)


def _nats_http(node_dir: NodeDir) -> str:
    for line in node_dir.nats_conf.read_text().splitlines():
        if line.startswith("http:"):
            return "http://" + line.split(":", 1)[1].strip()
    raise ClusterError(f"{node_dir.nats_conf} has no http line")


def down(
    state: StateDir, timeout: float = 10.0, nodes: list[NodeDir] | None = None
) -> list[ProcessRecord]:
    """Stop every recorded process of every node (or of `nodes`); return those that were running.

    Supervisors get SIGTERM and stop their children in order; whatever is
    still recorded and alive after that (a supervisor killed with -9 leaves
    its children behind) is killed by process group.
    """
    nodes = state.nodes() if nodes is None else nodes
    was_running = [r for n in nodes for r in n.records() if r.group_alive()]
    supervisors = [r for r in was_running if r.name == SUPERVISOR and r.alive()]
    for record in supervisors:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(r.alive() for r in supervisors) and time.monotonic() < deadline:
        time.sleep(0.05)
    for node_dir in nodes:
        for record in node_dir.records():
            if record.group_alive():
                _kill_group(record)
            node_dir.remove_record(record.name)
    return was_running


def _kill_group(record: ProcessRecord) -> None:
    try:
        os.killpg(record.pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    with contextlib.suppress(psutil.Error, psutil.TimeoutExpired):
        psutil.Process(record.pid).wait(timeout=2)
