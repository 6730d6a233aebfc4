"""The figures of the node's other services, asked for at each scrape.

What Raft and membership look like is known only to the consensus and membership
services: at each scrape the monitor asks each of its node's services for its
metric families (`subjects.service_metrics`), all at once and each with a short
timeout, and serves what came back with its own figures. A service that is down
or slow costs the scrape its families only: `colony_service_metrics_up` says
which one is missing. Families are checked before they are served (one bad
family would make Prometheus refuse the whole scrape): each service names only
its own (colony_<service>_...), once each, only counters end in _total, and the
`node` label is the monitor's.
"""

from __future__ import annotations

import asyncio
import logging
import time

from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.messages import MetricFamily, MetricSample, ServiceMetricsRequest
from colony.shared.metrics import gauge, sample

SERVICES = ("consensus", "membership", "curator")
"""The node's services that export metric families."""
TIMEOUT = 1.0
"""Seconds a service has to answer a scrape's request (Prometheus waits 10 by default)."""


class ServiceFigures:
    """Gathers the metric families of the node's services."""

    def __init__(
        self,
        bus: Bus,
        node: str,
        log: logging.Logger,
        services: tuple[str, ...] = SERVICES,
        timeout: float = TIMEOUT,
    ) -> None:
        self.bus, self.node, self.log = bus, node, log
        self.services, self.timeout = services, timeout
        self._trouble: dict[str, str] = {}
        """What was last wrong with each service's answer (logged when it changes)."""

    async def gather(self) -> list[MetricFamily]:
        """Every service's families, then whether each answered and how fast."""
        answers = await asyncio.gather(*(self._ask(s) for s in self.services))
        up, seconds, families = [], [], []
        for service, (ok, took, theirs) in zip(self.services, answers, strict=True):
            up.append(sample(1 if ok else 0, node=self.node, service=service))
            seconds.append(sample(took, node=self.node, service=service))
            families += theirs
        return [
            *families,
            gauge(
                "colony_service_metrics_up",
                "1 if the service answered this scrape's request for its metrics",
                up,
            ),
            gauge(
                "colony_service_metrics_duration_seconds",
                "How long the service took to answer this scrape's request",
                seconds,
            ),
        ]

    async def _ask(self, service: str) -> tuple[bool, float, list[MetricFamily]]:
        began = time.perf_counter()
        subject = subjects.service_metrics(self.node, service)
        try:
            reply = await self.bus.request(subject, ServiceMetricsRequest(), self.timeout)
        except BusError as e:
            self._note(service, f"no metrics: {e}")
            return False, time.perf_counter() - began, []
        took = time.perf_counter() - began
        if (reply.node, reply.service) != (self.node, service):
            self._note(service, f"an answer from {reply.service} on {reply.node}")
            return False, took, []
        families, refused = self._checked(service, reply.families)
        self._note(service, f"families dropped: {'; '.join(refused)}" if refused else "")
        return True, took, families

    def _checked(
        self, service: str, families: list[MetricFamily]
    ) -> tuple[list[MetricFamily], list[str]]:
        """The families fit to serve, with the node label; and why the others are not."""
        prefix = f"colony_{service}_"
        kept: list[MetricFamily] = []
        refused: list[str] = []
        names: set[str] = set()
        for family in families:
            if not family.name.startswith(prefix):
                refused.append(f"{family.name} is not named {prefix}...")
            elif family.name in names:
                refused.append(f"{family.name} sent twice")
            elif (family.type == "counter") != family.name.endswith("_total"):
                refused.append(f"{family.name}: only a counter's name ends in _total")
            elif any("node" in s.labels or "le" in s.labels for s in family.samples):
                refused.append(f"{family.name} has a 'node' or 'le' label of its own")
            elif len({tuple(sorted(s.labels.items())) for s in family.samples}) < len(
                family.samples
            ):
                refused.append(f"{family.name} has two samples with the same labels")
            else:
                names.add(family.name)
                samples = [_on(self.node, s) for s in family.samples]
                kept.append(MetricFamily(family.name, family.type, family.help, samples))
        return kept, refused

    def _note(self, service: str, trouble: str) -> None:
        """Log what is wrong with a service's metrics when it changes (not every scrape)."""
        if self._trouble.get(service, "") == trouble:
            return
        self._trouble[service] = trouble
        if trouble:
            self.log.warning(
                "service metrics missing", extra={"service": service, "reason": trouble}
            )
        else:
            self.log.info("service metrics back", extra={"service": service})


def _on(node: str, s: MetricSample) -> MetricSample:
    return MetricSample({**s.labels, "node": node}, s.value, s.buckets, s.count, s.sum)
