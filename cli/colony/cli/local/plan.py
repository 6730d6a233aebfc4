"""What a local cluster runs: its nodes, their ports and their configs; no I/O.

Ports are laid out from one base port so that a cluster's addresses are
predictable (node i, counting from 0):

    client  base + i          nats://127.0.0.1:4222, 4223, ...
    routes  base + 2000 + i   6222, 6223, ...
    nats    base + 4000 + i   8222, ...  (nats-server's HTTP monitoring)
    metrics base + 5000 + i   9222, ...  (the monitor's Prometheus endpoint)
    instances base + 6000 + 100 i .. + 99   10222-10321, 10322-10421, ...

Each node's instances get ports from a block of 100 of their own (the agent's
port_lo..port_hi), right after the service ports: two clusters on layouts that do
not overlap never hand out the same port. The whole layout spans `span(nodes)` ports
from the base (6000 + 100 per node).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from colony.shared import natsd
from colony.shared.config import Config

DEFAULT_BASE_PORT = 4222
DEFAULT_NODES = 3
MAX_NODES = 100
PORT_OFFSETS = {"client": 0, "routes": 2000, "nats-http": 4000, "metrics": 5000}
INSTANCE_OFFSET = 6000
"""Where the nodes' instance port blocks start, from the base port."""
INSTANCE_PORTS_PER_NODE = 100


def instance_ports(base_port: int, index: int) -> range:
    """Node `index`'s instance ports: a block of its own, disjoint from every other port
    of the layout."""
    first = base_port + INSTANCE_OFFSET + INSTANCE_PORTS_PER_NODE * index
    return range(first, first + INSTANCE_PORTS_PER_NODE)


def span(nodes: int) -> int:
    """How many ports a layout of `nodes` covers from its base port (its instance
    blocks last)."""
    return INSTANCE_OFFSET + INSTANCE_PORTS_PER_NODE * nodes


class ClusterError(Exception):
    """The cluster cannot be formed as asked; the message says why."""


@dataclass(frozen=True)
class NodePlan:
    name: str
    ports: dict[str, int]
    voter: bool = False
    """Runs a Raft voter (consensus)."""
    instances: range = range(0)
    """The ports its agent gives instances."""

    @property
    def server(self) -> natsd.ServerPorts:
        p = self.ports
        return natsd.ServerPorts(p["client"], p["routes"], p["nats-http"])


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    """What cluster.toml records of the cluster `colony up` formed."""

    nodes: int
    base_port: int
    voters: int | None = None
    """None in a cluster.toml written before voters existed: the default then."""


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
    top = base_port + span(nodes) - 1
    if base_port < 1024 or top > 65535:
        raise ClusterError(
            f"--base-port {base_port} puts ports outside 1024-65535 (the highest would be {top})"
        )
    return [
        NodePlan(
            f"node-{i + 1}",
            {kind: base_port + off + i for kind, off in PORT_OFFSETS.items()},
            voter=i < voters,
            instances=instance_ports(base_port, i),
        )
        for i in range(nodes)
    ]


def choose(
    nodes: int | None,
    base_port: int | None,
    voters: int | None,
    previous: Shape | None,
    existing: int = 0,
) -> list[NodePlan]:
    """`colony up`'s plan: each of nodes, base port and voters as asked, else as the
    state dir's cluster had it (`previous`), else the default. `existing` is how many
    node folders the state dir holds (a state dir from before cluster.toml)."""
    if nodes is None:
        nodes = previous.nodes if previous else max(existing, DEFAULT_NODES)
    if base_port is None:
        base_port = previous.base_port if previous else DEFAULT_BASE_PORT
    if voters is None and previous and previous.voters and previous.voters <= nodes:
        voters = previous.voters
    return plan(nodes, base_port, voters)


def shape_of(plans: list[NodePlan]) -> Shape:
    return Shape(len(plans), plans[0].ports["client"], sum(p.voter for p in plans))


def node_config(
    existing: Config,
    node: NodePlan,
    plans: list[NodePlan],
    node_id: str,
    node_dir: Path,
    voter_ids: list[str],
    secret_file: Path,
    cluster_id: str = "",
) -> Config:
    """The node's config: `existing` (hand-edited capacity, labels... kept) with what the
    plan decides (name, id, ports, voters, roles) set. Paths are made absolute by the caller."""
    roles = [r for r in existing.node.roles if r != "voter"] + (["voter"] if node.voter else [])
    replace = msgspec.structs.replace
    return replace(
        existing,
        node=replace(
            existing.node,
            id=node_id,
            name=node.name,
            dir=str(node_dir),
            local_nodes=len(plans),
            roles=roles,
        ),
        nats=replace(existing.nats, servers=[f"nats://127.0.0.1:{node.ports['client']}"]),
        monitor=replace(existing.monitor, http_port=node.ports["metrics"]),
        consensus=replace(
            existing.consensus,
            voters=voter_ids,
            secret_file=str(secret_file),
            cluster_id=cluster_id,
        ),
        agent=replace(
            existing.agent, port_lo=node.instances.start, port_hi=node.instances.stop - 1
        ),
    )


def nats_config(
    node: NodePlan, plans: list[NodePlan], node_id: str, store: Path
) -> natsd.ServerConfig:
    """The node's nats-server config: routes to every node of the cluster."""
    routes = [p.ports["routes"] for p in plans]
    return natsd.ServerConfig(node_id, node.server, store, routes=routes)
