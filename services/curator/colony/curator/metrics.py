"""What the curator does, as metric families for its node's monitor (`subjects.service_metrics`):
whether it acts, how long a reconcile takes, and what it committed."""

from __future__ import annotations

from colony.shared.messages import MetricFamily
from colony.shared.metrics import Counter, Histogram, gauge, sample

ACTIONS = ("place", "stop", "remove", "node_status", "job_blocked")


class CuratorMetrics:
    def __init__(self) -> None:
        self.epoch = 0
        """The epoch it acts at (0: standing by)."""
        self.objects: dict[str, int] = {}
        """The view's size by kind, as of the last reconcile."""
        self.committed = Counter(
            "colony_curator_actions_total",
            "What the curator committed: placements, stops, removals, node statuses, blocked jobs",
            label="action",
            known=ACTIONS,
        )
        self.reconcile = Histogram(
            "colony_curator_reconcile_duration_seconds",
            "How long deciding one reconcile took (the scheduler included, committing not)",
            (0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0),
        )

    def families(self) -> list[MetricFamily]:
        return [
            gauge(
                "colony_curator_acting", "1 while this curator acts as manager", int(self.epoch > 0)
            ),
            gauge(
                "colony_curator_epoch", "The manager epoch it acts at (0: standing by)", self.epoch
            ),
            gauge(
                "colony_curator_view_objects",
                "Objects in the curator's view, by kind (while it acts)",
                [sample(n, kind=kind) for kind, n in sorted(self.objects.items())],
            ),
            self.committed.family(),
            self.reconcile.family(),
        ]
