"""The commands the CLI's verbs and the console propose to change jobs and nodes, built
in one place so both send the same ones. `by` is the words that say who asked, after
`colony` (the CLI: its verb; the console: "console" and the action), recorded as the
command's cause or reason where the command keeps one (a version's history, a drain).
"""

from __future__ import annotations

from colony.cli.rollout import cause
from colony.shared.messages import JobPromote, JobRollback, JobScale, JobStop, NodeDrain

DRAIN_DEADLINE = 3600.0
"""Seconds a drain waits before it stops what is still on the node (the default)."""


def job_scale(job: str, replicas: int) -> JobScale:
    return JobScale(job=job, replicas=replicas)


def job_stop(job: str, purge: bool = False) -> JobStop:
    return JobStop(job=job, purge=purge)


def job_promote(job: str, by: tuple[str, ...] = ("job", "promote")) -> JobPromote:
    return JobPromote(job=job, reason=cause(*by, job))


def job_rollback(
    job: str, version: int = 0, by: tuple[str, ...] = ("job", "rollback")
) -> JobRollback:
    """Back to `version`'s spec (0: the last version that rolled out well)."""
    words = [*by, job, *([str(version)] if version else [])]
    return JobRollback(job=job, version=version, cause=cause(*words))


def node_drain(
    node: str,
    named: str,
    deadline: float = DRAIN_DEADLINE,
    by: tuple[str, ...] = ("node", "drain"),
) -> NodeDrain:
    """Drain node id `node`, which whoever asked `named` (its name or id)."""
    return NodeDrain(node=node, drain=True, deadline=deadline, reason=cause(*by, named))


def node_undrain(node: str, named: str, by: tuple[str, ...] = ("node", "undrain")) -> NodeDrain:
    return NodeDrain(node=node, drain=False, reason=cause(*by, named))
