"""Deciding an instance's health from its checks' results (pure: no I/O, no clock).

One `RunHealth` per run of an instance (a run is the instance's `started_at`: a restart
is a new run, whose health starts over). Each check keeps its passes and failures in a
row; after each result:

    unhealthy  once any check has `unhealthy_threshold` failures in a row
    healthy    once every check has `healthy_threshold` passes in a row

A failure within a check's `grace` seconds of the run's start does not count as a
failure (it still breaks a run of passes: the instance is not known to work yet). The
first decision of a run is returned, then only transitions, so a flapping check can move
the health no faster than its thresholds allow: it must pass (or fail) that many times in
a row first. A run without checks is healthy at once (healthy while it runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from colony.shared.jobspec import HealthCheck, check_name
from colony.shared.messages import CheckState, CheckTarget, Health


@dataclass(frozen=True)
class Decision:
    """A health the run turned to, and the check (and its output) that decided it."""

    health: Health
    check: str = ""
    output: str = ""


@dataclass
class CheckRecord:
    """One check of one run: its last result and its streak."""

    check: HealthCheck
    name: str
    ok: bool = False
    output: str = ""
    at: float = 0.0
    """When it last ran (0: not yet)."""
    passes: int = 0
    failures: int = 0


@dataclass
class RunHealth:
    """The health of one run of one instance, from its checks' results."""

    id: str
    run: float
    checks: list[CheckRecord] = field(default_factory=list)
    health: str = ""
    """'' until the first decision, then healthy or unhealthy."""

    @classmethod
    def of(cls, target: CheckTarget) -> RunHealth:
        return cls(target.id, target.run, [CheckRecord(c, check_name(c)) for c in target.checks])

    def start(self) -> Decision | None:
        """The decision due before any check ran: healthy at once without checks."""
        if not self.checks and not self.health:
            self.health = "healthy"
            return Decision("healthy")
        return None

    def record(self, index: int, ok: bool, output: str, now: float) -> Decision | None:
        """Check `index` ran at `now` (this node's clock, as the run's start): the health
        it turned to, if that is the run's first decision or a change; else None."""
        record = self.checks[index]
        record.ok, record.output, record.at = ok, output, now
        if ok:
            record.passes += 1
            record.failures = 0
        else:
            record.passes = 0
            if now - self.run >= record.check.grace:
                record.failures += 1
        failing = next((c for c in self.checks if c.failures >= c.check.unhealthy_threshold), None)
        if failing is not None:
            return self._turn("unhealthy", failing)
        if all(c.passes >= c.check.healthy_threshold for c in self.checks):
            return self._turn("healthy", record)
        return None

    def _turn(self, health: Health, by: CheckRecord) -> Decision | None:
        if health == self.health:
            return None
        self.health = health
        return Decision(health, by.name, by.output)

    def states(self) -> list[CheckState]:
        return [
            CheckState(
                instance=self.id,
                check=c.name,
                ok=c.ok,
                output=c.output,
                at=c.at,
                passes=c.passes,
                failures=c.failures,
                health=self.health,
            )
            for c in self.checks
        ]


def changed_runs(
    checking: dict[str, float], targets: Iterable[CheckTarget]
) -> tuple[list[CheckTarget], list[str]]:
    """What a new whole set of targets changes, given the run checked now per instance:
    the targets to start checking (new instances, and newer runs of known ones) and the
    instances whose checking stops (gone, or about to start over with a newer run)."""
    start: list[CheckTarget] = []
    stop: list[str] = []
    seen: set[str] = set()
    for target in targets:
        seen.add(target.id)
        run = checking.get(target.id)
        if run is not None and target.run <= run:
            continue  # the run checked now (or an older one, from a set that came late)
        if run is not None:
            stop.append(target.id)
        start.append(target)
    stop.extend(id for id in checking if id not in seen)
    return start, stop
