"""Metric families a service hands to its node's monitor, for Prometheus.

A service keeps its counters and histograms here, builds its gauges when asked, and
answers `subjects.service_metrics` with them; the node's monitor serves them on its
endpoint with its own figures. Names follow Prometheus' rules: colony_<service>_...,
a counter's ends in _total, units are spelled out (_seconds, _bytes).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

from colony.shared.messages import Bucket, MetricFamily, MetricSample


def sample(value: float, **labels: str) -> MetricSample:
    return MetricSample(labels=labels, value=float(value))


def gauge(name: str, help: str, value: float | list[MetricSample]) -> MetricFamily:
    """A gauge: one unlabelled value, or these samples."""
    samples = value if isinstance(value, list) else [sample(value)]
    return MetricFamily(name=name, type="gauge", help=help, samples=samples)


class Counter:
    """A counter, optionally by one label. Label values known in advance start at 0,
    so that a rate over them exists before the first event."""

    def __init__(self, name: str, help: str, label: str = "", known: Iterable[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        self.name, self.help, self.label = name, help, label
        self.values: dict[str, float] = dict.fromkeys(known, 0.0) if label else {"": 0.0}

    def inc(self, by: str = "", amount: float = 1.0) -> None:
        """Count `amount` more (for label value `by`)."""
        self.values[by] = self.values.get(by, 0.0) + amount

    def family(self) -> MetricFamily:
        samples = [
            MetricSample(labels={self.label: by} if self.label else {}, value=value)
            for by, value in sorted(self.values.items())
        ]
        return MetricFamily(name=self.name, type="counter", help=self.help, samples=samples)


class Histogram:
    """A histogram of observations (seconds, bytes...). Safe to observe from another
    thread (pysyncobj's, for the apply time) while the event loop reads it."""

    def __init__(self, name: str, help: str, bounds: Iterable[float]) -> None:
        self.name, self.help = name, help
        self.bounds = sorted(bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        slot = bisect.bisect_left(self.bounds, value)  # the first bound >= value
        with self._lock:
            self._counts[slot] += 1
            self._sum += value

    def family(self) -> MetricFamily:
        with self._lock:  # one consistent reading: the buckets add up to the count
            counts, total = list(self._counts), self._sum
        buckets, cumulative = [], 0
        for le, count in zip(self.bounds, counts, strict=False):
            cumulative += count
            buckets.append(Bucket(le=le, count=cumulative))
        histogram = MetricSample(buckets=buckets, count=sum(counts), sum=total)
        return MetricFamily(name=self.name, type="histogram", help=self.help, samples=[histogram])
