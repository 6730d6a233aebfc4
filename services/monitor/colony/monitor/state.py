"""The monitor's pure core: from raw readings to a NodeMetrics sample.

No clock reads and no I/O here: the service passes in what it read.
"""

from __future__ import annotations

from collections import deque

from colony.shared.config import NodeSettings
from colony.shared.config import declared_capacity as declared_capacity  # the shared rule
from colony.shared.messages import HostMetrics, NodeMetrics, ProcessUsage, Resources


def used_by(processes: list[ProcessUsage]) -> Resources:
    """What the node's own processes use: cores from cpu percent, memory from RSS."""
    return Resources(
        cpu=round(sum(p.cpu_percent for p in processes) / 100, 3),
        memory=sum(p.rss for p in processes),
    )


class Samples:
    """A ring buffer of the latest samples, and the sample numbering."""

    def __init__(self, size: int) -> None:
        self.ring: deque[NodeMetrics] = deque(maxlen=size)

    @property
    def latest(self) -> NodeMetrics | None:
        return self.ring[-1] if self.ring else None

    def add(
        self,
        *,
        node: NodeSettings,
        now: float,
        interval: float,
        node_started: float,
        host: HostMetrics,
        processes: list[ProcessUsage],
        capacity: Resources,
        nats_url: str,
        metrics_url: str,
    ) -> NodeMetrics:
        used = used_by(processes)
        sample = NodeMetrics(
            node=node.id,
            name=node.name or node.id,
            seq=self.latest.seq + 1 if self.latest else 1,
            ts=now,
            interval=interval,
            node_started=node_started,
            nats_url=nats_url,
            metrics_url=metrics_url,
            processes=processes,
            capacity=capacity,
            used=used,
            free=capacity - used,
            host=host,
        )
        self.ring.append(sample)
        return sample
