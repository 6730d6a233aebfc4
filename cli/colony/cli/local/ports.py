"""Which planned ports something already listens on, and a layout that is free now."""

from __future__ import annotations

import random
from pathlib import Path

from colony.cli.local.plan import PORT_OFFSETS, ClusterError, NodePlan, plan
from colony.shared import natsd


def ports_taken(plans: list[NodePlan], host: str = "127.0.0.1") -> list[str]:
    """Every planned port something already listens on, named."""
    return [
        f"{host}:{port} ({node.name} {kind})"
        for node in plans
        for kind, port in node.ports.items()
        if not natsd.port_free(host, port)
    ]


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
