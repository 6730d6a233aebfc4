"""Which planned ports something already listens on, and a layout that is free now."""

from __future__ import annotations

import random
from pathlib import Path

from colony.cli.local.plan import ClusterError, NodePlan, plan, span
from colony.shared import natsd


def ports_taken(
    plans: list[NodePlan], host: str = "127.0.0.1", instances: bool = False
) -> list[str]:
    """Every planned port something already listens on, named: the nodes' own, and with
    `instances` the ports their agents give instances too."""
    taken = [
        f"{host}:{port} ({node.name} {kind})"
        for node in plans
        for kind, port in node.ports.items()
        if not natsd.port_free(host, port)
    ]
    if instances:
        taken += [
            f"{host}:{port} ({node.name} instances)"
            for node in plans
            for port in node.instances
            if not natsd.port_free(host, port)
        ]
    return taken


def free_base_port(nodes: int, low: int = 20000, tries: int = 200) -> int:
    """A random base port from `low` whose whole layout (instance ports included) is
    free now (tests, benchmarks).

    The layout stays below the kernel's ephemeral range when it can: any outgoing
    connection may take a port there at any moment, so a layout that is free now
    could find one of its ports taken when its process binds it.
    """
    width = span(nodes)
    high = ephemeral_ports()[0] - width
    if high <= low:
        high = 65536 - width
    for _ in range(tries):
        base = random.randrange(low, high)
        if not ports_taken(plan(nodes, base), instances=True):
            return base
    raise ClusterError(f"no free port layout for {nodes} nodes between {low} and {high}")


def ephemeral_ports() -> tuple[int, int]:
    """The range of local ports the kernel hands to outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535  # the IANA range, which other systems use
