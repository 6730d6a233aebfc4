"""Rollouts and drain: the time-based and per-job parts of reconcile (pure: time comes in
as `View.now`).

A job's rollout (`JobRecord.rollout`, of its current version V) is in one of three modes
for reconcile:
- running: older instances are replaced under the update strategy (canaries, then
  batches of max_parallel, each beside the instance it replaces where there is room);
- halted (failed, reverted): nothing new starts, no older instance is stopped (but a
  draining node is still emptied);
- steady (succeeded, no rollout record, or one of another version): as before rollouts,
  an older instance is replaced at once.

An instance is *ready* when it is desired run, running, healthy, and has been healthy for
the job's `update.min_healthy_time` by `now`.
"""

from __future__ import annotations

from typing import Literal

from colony.shared.jobspec import JobSpec, format_duration
from colony.shared.messages import InstanceRecord, JobRecord, Rollout

Mode = Literal["steady", "running", "halted"]


def mode(job: JobRecord) -> Mode:
    rollout = job.rollout
    if rollout is None or rollout.version != job.version:
        return "steady"
    if rollout.status == "running":
        return "running"
    if rollout.status in ("failed", "reverted"):
        return "halted"
    return "steady"


def ready(i: InstanceRecord, spec: JobSpec, now: float) -> bool:
    at = ready_at(i, spec)
    return at is not None and now >= at


def ready_at(i: InstanceRecord, spec: JobSpec) -> float | None:
    """When `i` is ready if it stays healthy (None: it is not healthy now)."""
    if i.desired != "run" or i.state != "running" or i.health != "healthy":
        return None
    if i.healthy_since <= 0:
        return None
    return i.healthy_since + spec.update.min_healthy_time


def instance_failure(
    i: InstanceRecord, spec: JobSpec, now: float, node: str, deadline: bool = True
) -> tuple[str, float | None]:
    """Why instance `i` of the version rolling out fails the rollout ('' : it does not),
    and when it will if nothing changes (its healthy deadline, unless not `deadline`;
    None: never)."""
    if i.state == "failed":
        said = i.reason or (f"exit code {i.exit_code}" if i.exit_code is not None else "")
        return f"instance {i.id} failed on node {node}" + (f": {said}" if said else ""), None
    if i.health == "unhealthy":
        said = ": ".join(s for s in (i.health_check, i.health_output) if s)
        return f"instance {i.id} unhealthy" + (f": {said}" if said else ""), None
    if not deadline or ready(i, spec, now):
        return "", None
    deadline = i.placed + spec.update.healthy_deadline
    if now >= deadline:
        within = format_duration(spec.update.healthy_deadline)
        return f"instance {i.id} not healthy within {within}", None
    return "", deadline


def batch_failure(rollout: Rollout, spec: JobSpec, now: float) -> tuple[str, float | None]:
    """Why the rollout's current batch (which is in flight) fails it, and when it will."""
    if rollout.batch < 1:
        return "", None
    deadline = rollout.batch_started + spec.update.progress_deadline
    if now >= deadline:
        within = format_duration(spec.update.progress_deadline)
        return f"batch {rollout.batch} not healthy within {within}", None
    return "", deadline


def earliest(*times: float | None) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None
