"""The Prometheus text endpoint: GET /metrics renders the latest sample, and the
metric families of the node's services (gathered at each scrape).

A tiny HTTP server on the service's own event loop (no thread); it only
ever answers GET /metrics, on loopback by default. prometheus_client is imported at the
first scrape: a node nobody scrapes does without its 2 MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from colony.shared.messages import MetricFamily, NodeMetrics

if TYPE_CHECKING:
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric

Gather = Callable[[], Awaitable[list[MetricFamily]]]
"""Fetches the families of the node's services, at scrape time."""


class NodeCollector:
    """The latest sample as Prometheus gauges (a collector: the registry calls `collect`)."""

    def __init__(self, latest: Callable[[], NodeMetrics | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from prometheus_client.core import GaugeMetricFamily

        m = self.latest()
        if m is None:
            return
        node = [m.node]

        def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"colony_{name}", help_text, labels=["node"])
            family.add_metric(node, value)
            return family

        yield gauge("sample_seq", "Sample number since the monitor started", m.seq)
        yield gauge("sample_timestamp_seconds", "When the sample was taken", m.ts)
        yield gauge("node_start_time_seconds", "When the node's agent started", m.node_started)
        yield gauge("host_cpu_cores", "Cores on the host", m.host.cpu_count)
        yield gauge("host_cpu_percent", "Host cpu use, percent of all cores", m.host.cpu_percent)
        for minutes, value in zip((1, 5, 15), m.host.load, strict=True):
            yield gauge(f"host_load{minutes}", f"Load average over {minutes} min", value)
        yield gauge("host_memory_total_bytes", "Host memory", m.host.memory_total)
        yield gauge("host_memory_available_bytes", "Host memory available", m.host.memory_available)
        yield gauge("host_disk_total_bytes", "Size of the state dir's disk", m.host.disk_total)
        yield gauge("host_disk_free_bytes", "Free space on the state dir's disk", m.host.disk_free)
        yield gauge("host_processes", "Processes on the host", m.host.process_count)
        for kind, amount in (("capacity", m.capacity), ("used", m.used), ("free", m.free)):
            yield gauge(f"node_{kind}_cpu_cores", f"Node cpu {kind}, cores", amount.cpu)
            yield gauge(f"node_{kind}_memory_bytes", f"Node memory {kind}, bytes", amount.memory)
        rss = GaugeMetricFamily(
            "colony_process_resident_bytes",
            "RSS of the node's processes",
            labels=["node", "process"],
        )
        cpu = GaugeMetricFamily(
            "colony_process_cpu_percent", "Cpu of the node's processes", labels=["node", "process"]
        )
        for p in m.processes:
            rss.add_metric([m.node, p.name], p.rss)
            cpu.add_metric([m.node, p.name], p.cpu_percent)
        yield rss
        yield cpu


class Families:
    """Families handed over as messages (by the node's services), as Prometheus metrics
    (a collector)."""

    def __init__(self, families: list[MetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.utils import floatToGoString

        for family in self.families:
            metric = Metric(family.name.removesuffix("_total"), family.help, family.type)
            for s in family.samples:
                if family.type != "histogram":
                    metric.add_sample(family.name, s.labels, s.value)
                    continue
                for bucket in s.buckets:
                    le = {**s.labels, "le": floatToGoString(bucket.le)}
                    metric.add_sample(f"{family.name}_bucket", le, bucket.count)
                inf = {**s.labels, "le": "+Inf"}
                metric.add_sample(f"{family.name}_bucket", inf, s.count)
                metric.add_sample(f"{family.name}_count", s.labels, s.count)
                metric.add_sample(f"{family.name}_sum", s.labels, s.sum)
            yield metric


async def _nothing() -> list[MetricFamily]:
    return []


class MetricsServer:
    """Serves GET /metrics until closed: the node's figures, then its services'."""

    def __init__(self, latest: Callable[[], NodeMetrics | None], gather: Gather = _nothing) -> None:
        self.node = NodeCollector(latest)
        self.gather = gather
        self.server: asyncio.Server | None = None

    async def render(self) -> bytes:
        """One scrape's text (a registry per scrape: concurrent scrapes gather apart)."""
        from prometheus_client import generate_latest
        from prometheus_client.registry import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.node)
        registry.register(Families(await self.gather()))
        return generate_latest(registry)

    async def start(self, host: str, port: int) -> str:
        """Listen; return the endpoint's URL."""
        self.server = await asyncio.start_server(self._handle, host, port)
        bound = self.server.sockets[0].getsockname()
        return f"http://{bound[0]}:{bound[1]}/metrics"

    async def close(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing in them matters here
            method, path, *_ = [*request.decode("latin-1").split(), "", ""]
            if method != "GET":
                status, body, kind = "405 Method Not Allowed", b"only GET\n", "text/plain"
            elif path.split("?")[0] != "/metrics":
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                from prometheus_client import CONTENT_TYPE_LATEST

                status, body, kind = "200 OK", await self.render(), CONTENT_TYPE_LATEST
            head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a client that hangs up or never finishes its request gets nothing
        finally:
            writer.close()
