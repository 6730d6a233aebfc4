"""`colony job`: validate, plan, run, inspect, scale and stop jobs.

A job file is checked here first (nothing reaches the cluster when it is invalid),
then the acting manager's curator says what running it would do (`job plan`); `job
run` refuses a job that does not fit, stores it through consensus, and follows its
instances until every one runs, saying each failure as it comes (read from the
change stream: the manager replaces and forgets a failed instance within moments),
and gives up early once every one keeps failing. The rest read and change the jobs
and instances kinds of the management database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.table import Table
from rich.text import Text

from colony.cli import commands, endpoints, records, rollout
from colony.cli.args import add_management_options, sub_verbs
from colony.cli.events import cluster_secret
from colony.cli.kv import management
from colony.cli.output import err, fail, human_age, human_bytes, out, print_json
from colony.shared import changes, jobspec, subjects
from colony.shared.bus import BusError, NoResponders
from colony.shared.jobspec import JobSpec
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    CheckState,
    CheckStatesRequest,
    EndpointsReply,
    InstanceRecord,
    JobRecord,
    JobRun,
    NodeRecord,
    PlanReply,
    PlanRequest,
    ProposeReply,
)
from colony.shared.reservations import TERMINAL
from colony.shared.statedir import StateDir

_JOB_NAME = re.compile(jobspec.JobName.__metadata__[0].pattern)
PROGRESS_EVERY = 0.2
"""Seconds between two reads of a job's instances while `job run` waits for them."""
PLAN_ATTEMPT = 2.0
"""Seconds the manager may take to answer one plan request."""

EXAMPLES = {
    "validate": """examples:
  colony job validate examples/web.yaml          check a job file; nothing is sent anywhere
  colony job validate web.yaml --json            {"file": ..., "valid": ..., "problems": [...]}""",
    "plan": """examples:
  colony job plan examples/web.yaml      what running it would place where, or why not
  colony job plan web.yaml               a changed spec: each field that differs, and whether
                                         the update replaces instances (how many at a time)
  colony job plan web.yaml --json        the manager's plan as it answered it""",
    "run": """examples:
  colony job run examples/web.yaml       store it, then wait until every instance runs
  colony job run web.yaml                a changed spec: follow its rollout (batches, canaries);
                                         exits 1 if it fails or is reverted
  colony job run web.yaml --detach       store it and return at once
  colony job run web.yaml --timeout 120  give up after 2 minutes without progress""",
    "status": """examples:
  colony job status web          the job, its rollout and its instances: node, state, health
                                 and the last check's output, address, restarts
  colony job status web --all    also the instances stopped or being removed
  colony job status web --json""",
    "history": """examples:
  colony job history web         every version, newest first: when, who (cause), outcome
  colony job history web --json""",
    "promote": """examples:
  colony job promote web         the canaries look good: replace the rest, then follow it
  colony job promote web -d      promote and return at once""",
    "rollback": """examples:
  colony job rollback web        back to the last version that rolled out well, and follow it
  colony job rollback web 3      back to version 3's spec (as a new version)
  colony job rollback web -d     store the rollback and return at once""",
    "endpoints": """examples:
  colony job endpoints web               HOST:PORT INSTANCE NODE VERSION of each healthy instance
  colony job endpoints web --port admin  the addresses of its port named admin
  colony job endpoints web --watch       print the set again each time it changes
  colony job endpoints web --json""",
    "list": """examples:
  colony job list                every job: version, status, desired and running instances
  colony job list --json""",
    "scale": """examples:
  colony job scale web 6         six instances from now on (until the spec changes them)
  colony job scale web 0         keep the job, run none of it""",
    "stop": """examples:
  colony job stop web            stop every instance; `colony job run` starts it again
  colony job stop web --purge    stop it and forget it once its instances are gone""",
}


def add_parser(verb) -> None:
    job = verb(
        "job",
        "Run jobs on the cluster: validate, plan, run, status, list, scale, stop, history, "
        "promote, rollback, endpoints.",
    )
    job.epilog = """examples:
  colony job run examples/web.yaml   plan it, store it, wait until its instances run
  colony job status web              where its instances run and answer
  colony job <verb> --help           each verb's options and examples"""
    verbs = job.add_subparsers(
        dest="job_verb",
        required=True,
        metavar="validate|plan|run|status|list|scale|stop|history|promote|rollback|endpoints",
    )

    sub = sub_verbs(verbs, EXAMPLES)

    validate = sub(
        "validate", "Check a job file and say what it asks for, or what is wrong.", cmd_validate
    )
    validate.add_argument("file", type=Path, help="the job file (YAML)")
    validate.add_argument("--json", action="store_true", help="machine-readable output")

    plan = sub(
        "plan", "Show what running a job file would place where (nothing is stored).", cmd_plan
    )
    plan.add_argument("file", type=Path, help="the job file (YAML)")
    add_management_options(plan)

    run = sub("run", "Run a job file: plan it, store it, wait until its instances run.", cmd_run)
    run.add_argument("file", type=Path, help="the job file (YAML)")
    run.add_argument(
        "--detach", "-d", action="store_true", help="return once stored, without waiting"
    )
    add_management_options(
        run,
        timeout=60.0,
        timeout_help="seconds to wait for every instance to run (a rollout: for progress)",
    )

    status = sub("status", "Show a job and its instances.", cmd_status)
    status.add_argument("name", type=_job_name, help="the job's name")
    status.add_argument(
        "--all", action="store_true", help="also instances desired stopped (not yet removed)"
    )
    add_management_options(status)

    listing = sub("list", "Show every job.", cmd_list)
    add_management_options(listing)

    scale = sub("scale", "Change how many instances of a job run.", cmd_scale)
    scale.add_argument("name", type=_job_name, help="the job's name")
    scale.add_argument("replicas", type=_replicas, help="how many instances")
    add_management_options(scale)

    stop = sub("stop", "Stop a job's instances (and, with --purge, forget the job).", cmd_stop)
    stop.add_argument("name", type=_job_name, help="the job's name")
    stop.add_argument("--purge", action="store_true", help="forget the job once it has stopped")
    add_management_options(stop)

    history = sub(
        "history", "Show a job's versions: when, who, and how each rolled out.", cmd_history
    )
    history.add_argument("name", type=_job_name, help="the job's name")
    add_management_options(history)

    promote = sub(
        "promote", "Promote a rollout's canaries: the rest of the instances are replaced.",
        cmd_promote,
    )  # fmt: skip
    promote.add_argument("name", type=_job_name, help="the job's name")
    rollback = sub(
        "rollback", "Roll a job back to an earlier version's spec (as a new version).", cmd_rollback
    )
    rollback.add_argument("name", type=_job_name, help="the job's name")
    rollback.add_argument(
        "version",
        nargs="?",
        type=_version,
        default=0,
        help="the version to go back to (default: the last one that rolled out well)",
    )
    for follows in (promote, rollback):
        follows.add_argument(
            "--detach", "-d", action="store_true", help="return once stored, without following"
        )
        add_management_options(
            follows, timeout=60.0, timeout_help="seconds to wait for the rollout to progress"
        )

    found = sub("endpoints", "Show where a job's healthy instances answer.", cmd_endpoints)
    found.add_argument("name", type=_job_name, help="the job's name")
    found.add_argument(
        "--port", "-p", default="", help="a port name of the job (default: its first)"
    )
    found.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="print the set again at each change (Ctrl-C stops)",
    )
    add_management_options(found)


def _job_name(text: str) -> str:
    if not _JOB_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job name: lowercase letters, digits and '-', 1-40 characters, "
            "starting and ending with a letter or digit"
        )
    return text


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a version number (1 or more), not {text!r}")
    return value


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= jobspec.MAX_REPLICAS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 0 to {jobspec.MAX_REPLICAS}, not {text!r}"
        )
    return value


# --- what people see (pure) ------------------------------------------------------


def describe(spec: JobSpec) -> str:
    """What a spec asks for, in a few words: '3 replicas of process python3 -m http.server
    ${PORT}, 0.1 cpu and 64.0 MiB each, ports http'."""
    command = " ".join(" ".join([spec.task.command, *spec.task.args]).split())
    if len(command) > 40:
        command = command[:39] + "…"
    replicas = "1 replica" if spec.replicas == 1 else f"{spec.replicas} replicas"
    words = [
        f"{replicas} of {spec.driver} {command}",
        f"{spec.resources.cpu:g} cpu and {human_bytes(spec.resources.memory)} each",
    ]
    if spec.ports:
        words.append(f"ports {', '.join(spec.ports)}")
    return ", ".join(words)


def node_name(nodes: dict[str, NodeRecord], node: str) -> str:
    """A node's name as people know it (its id if it never registered a name)."""
    record = nodes.get(node)
    return record.name if record and record.name else node


def address(instance: InstanceRecord, nodes: dict[str, NodeRecord]) -> str:
    """Where the instance answers: ADDRESS:PORT, or NAME=ADDRESS:PORT for each of several
    ports ('-' while its node's address is unknown)."""
    record = nodes.get(instance.node)
    host = record.address if record and record.address else ""
    if not host:
        return "-"
    if len(instance.ports) == 1:
        [port] = instance.ports.values()
        return f"{host}:{port}"
    if not instance.ports:
        return host
    return " ".join(f"{name}={host}:{port}" for name, port in instance.ports.items())


def shown_state(instance: InstanceRecord) -> Text:
    colour = {"running": "green", "failed": "red", "lost": "red", "exited": "yellow"}
    text = Text(instance.state, colour.get(instance.state, ""))
    if instance.desired == "stop" and instance.state not in TERMINAL:
        text.append(" (stopping)", "dim")
    return text


def age(instance: InstanceRecord, now: float) -> str:
    """How long it has been running (or, until it runs, since it was placed)."""
    since = instance.started_at if instance.state == "running" else instance.placed
    return human_age(now - since) if since else "-"


def health_cell(instance: InstanceRecord, now: float) -> Text:
    """'healthy (3m02s)', 'unhealthy (12s)' or '—' (not running, or not decided yet); a
    canary says so."""
    since = instance.healthy_since if instance.health == "healthy" else instance.health_at
    if instance.state != "running" or not instance.health:
        text = Text("—", "dim")
    else:
        colour = "green" if instance.health == "healthy" else "red"
        text = Text(instance.health, colour)
        if since:
            text.append(f" ({human_age(now - since)})")
    if instance.canary:
        text.append(" canary", "yellow")
    return text


def last_check(instance: InstanceRecord, checks: Sequence[CheckState] = ()) -> str:
    """The last check's output: what its node's monitor says now (a failing check first),
    else what was recorded when its health was last decided ('-': nothing known)."""
    mine = sorted((c for c in checks if c.instance == instance.id), key=lambda c: c.ok)
    if mine and mine[0].at:
        c = mine[0]
        return f"{c.check}: {c.output}" if c.check else c.output or ("ok" if c.ok else "failed")
    if instance.health_output:
        check = f"{instance.health_check}: " if instance.health_check else ""
        return check + instance.health_output
    return "-"


def instance_table(
    instances: Sequence[InstanceRecord],
    nodes: dict[str, NodeRecord],
    now: float,
    checks: Sequence[CheckState] | None = None,
) -> Table:
    """ID NODE STATE HEALTH ADDRESS RESTARTS AGE LAST REASON (and, given the monitors'
    `checks`, LAST CHECK)."""
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "NODE", "STATE", "HEALTH", "ADDRESS"):
        grid.add_column(column, no_wrap=True)
    grid.add_column("RESTARTS", justify="right")
    grid.add_column("AGE", justify="right")
    if checks is not None:
        grid.add_column("LAST CHECK")
    grid.add_column("LAST REASON")
    for i in sorted(instances, key=lambda i: (i.slot, i.desired != "run", i.id)):
        shown = [last_check(i, checks)] if checks is not None else []
        grid.add_row(
            i.id,
            node_name(nodes, i.node),
            shown_state(i),
            health_cell(i, now),
            address(i, nodes),
            str(i.restarts),
            age(i, now),
            *shown,
            i.reason or i.desired_reason or "-",
        )
    return grid


def instance_json(instance: InstanceRecord, nodes: dict[str, NodeRecord]) -> dict[str, Any]:
    shown = address(instance, nodes)
    return {**msgspec.to_builtins(instance), "address": None if shown == "-" else shown}


def job_json(job: JobRecord) -> dict[str, Any]:
    """The job record for scripts (its file's text left out: `source` can be 64 KiB)."""
    data = msgspec.to_builtins(job)
    data.pop("source", None)
    return data


def plan_lines(
    plan: PlanReply, nodes: dict[str, NodeRecord], spec: JobSpec | None = None
) -> list[Text | Table | str]:
    """The manager's plan for people: what changes (an update: each field that differs
    and what the update does), a SLOT NODE PORTS table, what would stop, and each reason
    something does not fit."""
    change = {
        "new": "new job",
        "update": f"changed spec, version {plan.version}",
        "unchanged": f"unchanged (version {plan.version})",
        "restart": f"stopped, runs again (version {plan.version})",
    }.get(plan.change, f"{plan.change} (version {plan.version})")
    lines: list[Text | Table | str] = [f"{plan.job}: {change}", *rollout.diff_lines(plan, spec)]
    if plan.place:
        grid = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("SLOT", "NODE", "PORTS"):
            grid.add_column(column, no_wrap=True)
        for p in plan.place:
            ports = ", ".join(f"{name}={port}" for name, port in p.ports.items()) or "-"
            grid.add_row(str(p.slot), node_name(nodes, p.node), ports)
        lines.append(grid)
    elif plan.unplaced == 0:
        lines.append("nothing to place")
    if plan.stop:
        rolling = plan.change == "update" and plan.replace
        said = "replaces, as above" if rolling else "would stop"
        lines.append(f"{said}: {', '.join(plan.stop)}")
    if plan.unplaced:
        lines.append(
            Text.assemble(
                (f"{plan.unplaced} instance(s) fit on no node", "red"),
                ":" if plan.no_fit else " (the manager gave no reason)",
            )
        )
        lines.extend(f"  {reason}" for reason in plan.no_fit)
    return lines


@dataclass(frozen=True)
class Progress:
    """Where a job's instances stand, counted over those desired to run at its version."""

    desired: int
    placed: int
    starting: int
    running: int
    failed: int
    older: int
    """Instances of an older spec version still desired to run (the manager replaces them)."""
    failed_for_good: int
    """Failed instances the manager leaves failed (`restart.then: fail`)."""
    blocked: str
    healthy: int = 0
    """Of those running, the healthy ones (counted only for a job with checks)."""
    checked: bool = False
    """The job has health checks: done only once they pass."""
    settled: bool = True
    """Its version's rollout succeeded (its instances stayed healthy min_healthy_time):
    only then is the version the one a failed next version reverts to."""

    @property
    def done(self) -> bool:
        healthy = self.healthy >= self.desired or not self.checked
        placed = self.placed + self.older <= self.desired
        return self.running >= self.desired and placed and healthy and self.settled

    def line(self, job: str) -> str:
        n = self.desired
        text = (
            f"{job}: {self.placed}/{n} placed, {self.starting} starting, {self.running}/{n} running"
        )
        if self.checked:
            text += f", {self.healthy}/{n} healthy"
        if self.failed:
            text += f", {self.failed} failed"
        if self.older:
            text += f", {self.older} of an older version"
        if self.blocked:
            text += f"; blocked: {self.blocked}"
        elif self.running >= self.desired and not self.settled:
            text += "; staying healthy for min_healthy_time"
        return text


def progress(job: JobRecord | None, instances: Sequence[InstanceRecord]) -> Progress | None:
    """How far the job's instances are (None while the job is not recorded yet)."""
    if job is None:
        return None
    wanted = [i for i in instances if i.desired == "run" and i.job == job.name]
    rollout = job.rollout
    current = [i for i in wanted if i.version >= job.version]
    failed = [i for i in current if i.state in ("failed", "lost")]
    return Progress(
        desired=job.replicas if job.status == "running" else 0,
        placed=len(current),
        starting=sum(i.state in ("pending", "starting") for i in current),
        running=sum(i.state == "running" for i in current),
        failed=len(failed),
        older=len(wanted) - len(current),
        failed_for_good=sum(i.state == "failed" for i in failed)
        if job.spec.restart.then == "fail"
        else 0,
        blocked=job.blocked,
        healthy=sum(i.state == "running" and i.health == "healthy" for i in current),
        checked=bool(job.spec.checks),
        settled=rollout is None or rollout.version != job.version or rollout.status != "running",
    )


def instance_said(instance: InstanceRecord, nodes: dict[str, NodeRecord]) -> str:
    """'web-0-3fa2 on node-1 is failed: exit code 3: bad config'"""
    why = f": {instance.reason}" if instance.reason else ""
    return f"{instance.id} on {node_name(nodes, instance.node)} is {instance.state}{why}"


def why_not_running(
    job: JobRecord | None,
    instances: Sequence[InstanceRecord],
    nodes: dict[str, NodeRecord],
    failed: Iterable[InstanceRecord] = (),
) -> list[str]:
    """Each reason the job's instances are not all running: the job's blocked reason,
    then every instance desired to run that does not, and every one seen `failed` (the
    manager may have replaced it since), with its state and last reason."""
    if job is None:
        return ["the job was not recorded"]
    reasons = [f"blocked: {job.blocked}"] if job.blocked else []
    failed = {i.id: i for i in failed}
    shown = {**failed, **{i.id: i for i in instances if i.id not in failed}}
    for i in sorted(shown.values(), key=lambda i: (i.slot, i.id)):
        if i.id in failed or (i.desired == "run" and i.state != "running"):
            reasons.append(instance_said(i, nodes))
    return reasons


class Failures:
    """The instances of a job seen `failed` (their restarts ran out) while `job run`
    waits, each as last seen: the manager replaces a failed instance and forgets it
    within moments, so they are gathered from every read and change seen."""

    def __init__(self, job: str, version: int = 0) -> None:
        self.job = job
        self.version = version
        """Instances of older versions are not this run's."""
        self.failed: dict[str, InstanceRecord] = {}

    def saw(self, instances: Iterable[InstanceRecord], new: bool = True) -> list[InstanceRecord]:
        """Take these records of instances (`new` False: only later records of those seen
        failed already); return those seen failed for the first time."""
        found = []
        for i in instances:
            was = self.failed.get(i.id)
            if i.job != self.job or i.version < self.version:
                continue
            if was is None and (not new or i.state != "failed"):
                continue
            if was is None:
                found.append(i)
            if was is None or i.changed >= was.changed:  # reads and changes come unordered
                self.failed[i.id] = i
        return found


def keeps_failing(
    job: JobRecord | None, instances: Sequence[InstanceRecord], failed: Mapping[str, InstanceRecord]
) -> bool:
    """Whether every instance of the job's version keeps failing, so waiting longer is
    pointless: in each slot nothing runs, and an instance of that version failed that the
    manager then rescheduled (stopped, to place a replacement), or leaves failed (the job
    is blocked: nowhere else to go; or `restart.then: fail`)."""
    if job is None or job.status != "running" or job.replicas == 0:
        return False
    stays = bool(job.blocked) or job.spec.restart.then == "fail"
    for slot in range(job.replicas):
        if any(i.slot == slot and i.desired == "run" and i.state == "running" for i in instances):
            return False
        if not any(
            i.slot == slot and i.version >= job.version and (i.desired == "stop" or stays)
            for i in failed.values()
        ):
            return False
    return True


def rollout_halted(job: JobRecord | None, version: int) -> str:
    """Why the rollout of the job's first version (or of a stopped job run again) ended
    badly: a deadline passed, an instance failed ('' : it did not)."""
    r = job.rollout if job is not None else None
    if r is None or r.version < version or r.status in ("running", "succeeded"):
        return ""
    return f"the rollout of version {r.version} {r.status}" + (f": {r.reason}" if r.reason else "")


def running_count(job: str, instances: Sequence[InstanceRecord]) -> int:
    return sum(i.job == job and i.desired == "run" and i.state == "running" for i in instances)


def job_row(job: JobRecord, instances: Sequence[InstanceRecord]) -> list[str]:
    """NAME VERSION STATUS DESIRED RUNNING BLOCKED of `job_list`."""
    running = running_count(job.name, instances)
    status = job.status + (" (purge)" if job.purge else "")
    return [job.name, str(job.version), status, str(job.replicas), str(running), job.blocked or "-"]


def job_list(jobs: Sequence[JobRecord], instances: Sequence[InstanceRecord]) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "VERSION", "STATUS", "DESIRED", "RUNNING"):
        grid.add_column(column, no_wrap=True)
    grid.add_column("BLOCKED")
    for job in sorted(jobs, key=lambda j: j.name):
        grid.add_row(*job_row(job, instances))
    return grid


# --- the verbs -------------------------------------------------------------------


def load(path: Path, as_json: bool = False) -> jobspec.LoadedJob:
    """The job file, checked; every problem and exit 1 if it is not valid."""
    try:
        loaded = jobspec.load(path)
    except jobspec.SpecError as e:
        if as_json:
            problems = [{**msgspec.to_builtins(p), "message": str(p)} for p in e.problems]
            print_json({"file": str(path), "valid": False, "problems": problems})
            raise SystemExit(1) from None
        *first, last = [str(p) for p in e.problems]
        for problem in first:
            err.print(Text.assemble(("error:", "bold red"), " ", problem), soft_wrap=True)
        fail(last, f"{len(e.problems)} problems in {path}" if first else "")
    for warning in loaded.warnings:
        err.print(Text.assemble(("warning:", "yellow"), " ", str(warning)), soft_wrap=True)
    return loaded


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load(args.file, args.json)
    if args.json:
        spec = msgspec.to_builtins(loaded.spec)
        print_json({"file": str(args.file), "valid": True, "problems": [], "spec": spec})
    else:
        out.print(f"{args.file}: valid ({describe(loaded.spec)})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = load(args.file, args.json)
    plan, nodes = _run(args, "colony-job-plan", _plan_and_nodes(loaded.spec, args.timeout))
    if args.json:
        print_json({**msgspec.to_builtins(plan), "fits": plan.unplaced == 0})
    else:
        for line in plan_lines(plan, nodes, loaded.spec):
            out.print(line)
    return 0 if plan.unplaced == 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load(args.file, args.json)
    return _run(args, "colony-job-run", _submit(args, loaded))


def cmd_status(args: argparse.Namespace) -> int:
    async def read(client: Management):
        job = await _job(client, args.name)
        instances = await records.instances(client, args.name)
        checks = await monitors_checks(client, instances)
        return job, instances, await _nodes(client), checks

    job, instances, nodes, checks = _run(args, "colony-job-status", read)
    if not args.all:
        instances = [i for i in instances if i.desired == "run"]
    if args.json:
        shown = [
            {**instance_json(i, nodes), "last_check": last_check(i, checks)} for i in instances
        ]
        print_json({"job": job_json(job), "instances": shown})
        return 0
    running = running_count(job.name, instances)
    out.print(
        f"job {job.name}: version {job.version}, {job.status}, "
        f"{job.replicas} desired, {running} running"
    )
    if job.blocked:
        out.print(Text.assemble(("blocked: ", "red"), job.blocked))
    if line := rollout.rollout_line(job):
        out.print(f"rollout: {line}")
    if instances:
        out.print(instance_table(instances, nodes, time.time(), checks))
    else:
        out.print("no instances" + ("" if args.all else " (--all shows the stopped ones)"))
    return 0


CHECKS_ASK = 0.5
"""Seconds a node's monitor may take to say its checks (else the recorded output shows)."""


async def monitors_checks(
    client: Management, instances: Sequence[InstanceRecord]
) -> list[CheckState]:
    """The last result of each check of these instances, from their nodes' monitors (a
    monitor that does not answer in time adds nothing)."""
    by_node: dict[str, list[str]] = {}
    for i in instances:
        if i.desired == "run" and i.state == "running":
            by_node.setdefault(i.node, []).append(i.id)

    async def ask(node: str, ids: list[str]) -> list[CheckState]:
        request = CheckStatesRequest(instances=ids)
        try:
            reply = await client.bus.request(subjects.monitor_checks(node), request, CHECKS_ASK)
        except BusError:
            return []
        return reply.checks

    found = await asyncio.gather(*(ask(node, ids) for node, ids in by_node.items()))
    return [c for checks in found for c in checks]


def cmd_history(args: argparse.Namespace) -> int:
    async def read(client: Management):
        await _job(client, args.name)  # a clear error for a job that does not exist
        try:
            return await rollout.versions_of(client, args.name)
        except msgspec.ValidationError as e:
            fail(f"the versions of {args.name} came back unreadable: {e}")

    versions = _run(args, "colony-job-history", read)
    if args.json:
        print_json([rollout.version_json(v) for v in versions])
    elif versions:
        out.print(rollout.history_table(versions, time.time()))
    else:
        out.print(f"{args.name}: no versions recorded")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    async def work(client: Management) -> int:
        job = await _job(client, args.name)
        after = None if args.detach else await _last_index(client, _secret(args))
        reply = await client.propose(commands.job_promote(args.name))
        [outcome] = reply.outcomes
        if not outcome.ok:
            fail(
                f"{args.name} not promoted: {outcome.error}", f"see `colony job status {args.name}`"
            )
        version = job.rollout.version if job.rollout else job.version
        said = f"version {version}'s canaries promoted: the rest of the instances are replaced next"
        return await _stored_then_follow(client, args, version, said, reply, after)

    return _run(args, "colony-job-promote", work)


def cmd_rollback(args: argparse.Namespace) -> int:
    async def work(client: Management) -> int:
        await _job(client, args.name)
        after = None if args.detach else await _last_index(client, _secret(args))
        reply = await client.propose(commands.job_rollback(args.name, args.version))
        [outcome] = reply.outcomes
        if not outcome.ok:
            fail(
                f"{args.name} not rolled back: {outcome.error}",
                f"see `colony job history {args.name}`",
            )
        version = outcome.version or (await _job(client, args.name)).version
        said = f"rolled back: version {version} runs " + (
            f"version {args.version}'s spec" if args.version else "the last good version's spec"
        )
        return await _stored_then_follow(client, args, version, said, reply, after)

    return _run(args, "colony-job-rollback", work)


async def _stored_then_follow(
    client: Management,
    args: argparse.Namespace,
    version: int,
    said: str,
    reply: ProposeReply,
    after: int | None,
) -> int:
    """Say what was stored, then (unless --detach) follow the rollout of `version`."""
    if args.detach:
        if args.json:
            print_json({"job": args.name, "version": version, **msgspec.to_builtins(reply)})
        else:
            out.print(f"{args.name}: {said} (log index {reply.index})")
        return 0
    if not args.json:
        out.print(f"{args.name}: {said}")
    return await _follow_rollout(client, args, args.name, version, await _nodes(client), after)


async def _follow_rollout(
    client: Management,
    args: argparse.Namespace,
    name: str,
    version: int,
    nodes: dict[str, NodeRecord],
    after: int | None,
) -> int:
    """Follow the rollout of `version` until it ends; show the instances, say how it
    ended; the exit status."""
    heard = None if after is None else rollout.Heard(client, name, after, _secret(args))
    try:
        ended = await rollout.follow(
            client, name, version, args, lambda i: instance_said(i, nodes), heard
        )
    finally:
        if heard is not None:
            await heard.stop()
    if not args.json:
        nodes = {**nodes, **await _nodes(client)}
        running = [
            i for i in await records.instances(client, name, stale=True) if i.desired == "run"
        ]
        if running:
            out.print(instance_table(running, nodes, time.time()))
    return rollout.said_verdict(name, ended, args.json)


def cmd_endpoints(args: argparse.Namespace) -> int:
    async def work(client: Management) -> int:
        try:
            reply, stale = await endpoints.current(client.bus, args.name, args.port)
        except endpoints.EndpointsError as e:
            hints = {404: "see the jobs with `colony job list`", 400: ""}
            fail(f"no endpoints of {args.name}: {e}", hints.get(e.code, "see `colony status`"))
        names: dict[str, str] = {}
        if not args.json:
            with contextlib.suppress(ManagementError, TimeoutError):
                async with asyncio.timeout(1.0):
                    names = {n: r.name for n, r in (await _nodes(client)).items() if r.name}
        show_endpoints(args, reply, stale, names)
        if not args.watch:
            return 0
        async for published in endpoints.changed(client.bus, args.name):
            reply, stale = published, False
            if args.port and published.port != args.port:
                # the set changed, but was published for the job's first port: ask for ours
                with contextlib.suppress(endpoints.EndpointsError):
                    reply, stale = await endpoints.current(client.bus, args.name, args.port)
                if reply is published:
                    continue
            show_endpoints(args, reply, stale, names)
        return 0

    return _run(args, "colony-job-endpoints", work)


def show_endpoints(
    args: argparse.Namespace, reply: EndpointsReply, stale: bool, names: dict[str, str]
) -> None:
    if args.json:
        print(endpoints.endpoints_json(reply, stale), flush=True)
        return
    if args.watch:
        out.print(f"— {time.strftime('%H:%M:%S')} {plural_endpoints(len(reply.endpoints))}")
    for line in endpoints.endpoint_lines(reply, names):
        out.print(line, soft_wrap=True)
    if stale:
        err.print(
            Text.assemble(
                ("warning:", "yellow"),
                " no manager answers: this is the last set published, it may be stale",
            )
        )


def plural_endpoints(n: int) -> str:
    return rollout.plural(n, "endpoint")


def cmd_list(args: argparse.Namespace) -> int:
    async def read(client: Management):
        return await records.jobs(client), await records.instances(client)

    jobs, instances = _run(args, "colony-job-list", read)
    if args.json:
        print_json(
            [
                {**job_json(j), "running": running_count(j.name, instances)}
                for j in sorted(jobs, key=lambda j: j.name)
            ]
        )
    elif jobs:
        out.print(job_list(jobs, instances))
    else:
        out.print("no jobs (run one with `colony job run FILE`)")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    command = commands.job_scale(args.name, args.replicas)
    reply = _run(args, "colony-job-scale", _propose(command))
    return _changed(args, reply, f"scaled to {args.replicas}")


def cmd_stop(args: argparse.Namespace) -> int:
    command = commands.job_stop(args.name, args.purge)
    reply = _run(args, "colony-job-stop", _propose(command))
    [outcome] = reply.outcomes
    return _changed(args, reply, stopped_said(args.purge, outcome.value))


def stopped_said(purge: bool, outcome: str | None) -> str:
    """What `job stop` did, as the jobs kind answered it (`Outcome.value`): forgotten at
    once (a purge with no instance left), or stopped."""
    if outcome == "forgotten":
        return "forgotten (it had no instances left)"
    return "stopped: its instances stop now" + ("; forgotten once they are gone" if purge else "")


def _changed(args: argparse.Namespace, reply: ProposeReply, done: str) -> int:
    [outcome] = reply.outcomes
    if not outcome.ok:
        fail(f"job {args.name!r} not changed: {outcome.error}")
    if args.json:
        print_json({"job": args.name, **msgspec.to_builtins(reply)})
    else:
        out.print(f"{args.name}: {done} (log index {reply.index})")
    return 0


# --- talking to the cluster ------------------------------------------------------


def _run(args: argparse.Namespace, name: str, work):
    """Run `work(client)` against the cluster; a failure to reach it ends the command with
    what went wrong."""

    async def run():
        async with management(args, name) as client:
            return await work(client)

    try:
        return asyncio.run(run())
    except ManagementError as e:
        hint = "is a majority of the voters up? see `colony status`" if e.retryable else ""
        fail(str(e), hint)


def _propose(command):
    async def work(client: Management) -> ProposeReply:
        return await client.propose(command)

    return work


async def _nodes(client: Management) -> dict[str, NodeRecord]:
    return {n.node: n for n in await records.nodes(client, stale=True)}


async def _job(client: Management, name: str, *, stale: bool = False) -> JobRecord:
    found = await records.one_of(client, records.JOBS, name, stale=stale)
    if found is None:
        names = sorted(j.name for j in await records.jobs(client, stale=True))
        fail(f"no job {name!r} ({known('jobs', names)})", "see them with `colony job list`")
    return msgspec.convert(found.value, JobRecord)


def known(what: str, names: Sequence[str], most: int = 10) -> str:
    """'jobs: api, web' (the first `most`), or 'no jobs at all'."""
    if not names:
        return f"no {what} at all"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{what}: {', '.join(names[:most])}{more}"


async def plan_of(client: Management, spec: JobSpec, timeout: float) -> PlanReply:
    """The acting manager's plan for `spec`, asked until `timeout` while no manager acts
    (right after a failover, or right after `colony up`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await client.bus.request(
                subjects.curator_plan(), PlanRequest(spec=spec), timeout=PLAN_ATTEMPT
            )
        except NoResponders:
            if loop.time() + 0.2 >= deadline:
                fail(
                    f"no manager is acting now (none answered within {timeout:g} s); try again",
                    "`colony status` shows the manager; one is chosen when Raft has a leader",
                )
            await asyncio.sleep(0.2)
        except BusError as e:
            fail(f"the manager did not answer the plan: {e}", "try again, or see `colony status`")


def _plan_and_nodes(spec: JobSpec, timeout: float):
    async def work(client: Management) -> tuple[PlanReply, dict[str, NodeRecord]]:
        return await plan_of(client, spec, timeout), await _nodes(client)

    return work


def _submit(args: argparse.Namespace, loaded: jobspec.LoadedJob):
    """Plan, refuse what does not fit, store the job, then follow it (unless --detach)."""

    async def work(client: Management) -> int:
        spec = loaded.spec
        plan, nodes = await _plan_and_nodes(spec, min(args.timeout, 10.0))(client)
        if plan.unplaced:
            if args.json:
                print_json({**msgspec.to_builtins(plan), "fits": False, "stored": False})
            else:
                for line in plan_lines(plan, nodes):
                    err.print(line)
            fail(
                f"{spec.name} does not fit: nothing was stored",
                "free or add capacity, or "
                "ask for less (see `colony status` for what each node has free)",
            )
        if not args.json:
            for line in plan_lines(plan, nodes, spec):
                out.print(line)
        secret = _secret(args)
        # every change after this one is of this run (its failures are followed from it)
        after = None if args.detach else await _last_index(client, secret)
        cause = rollout.cause("job", "run", str(args.file))
        command = JobRun(spec=spec, source=loaded.source, file=str(loaded.file), cause=cause)
        reply = await client.propose(command)
        [outcome] = reply.outcomes
        if not outcome.ok:
            fail(f"{spec.name} was not stored: {outcome.error}")
        if outcome.value == "unchanged":
            if args.json:
                print_json(
                    {
                        "job": spec.name,
                        "stored": False,
                        "status": "unchanged",
                        "version": outcome.version,
                    }
                )
            else:
                out.print(f"{spec.name}: unchanged (version {outcome.version}); nothing to do")
            return 0
        if args.detach:
            if args.json:
                print_json({"job": spec.name, "stored": True, **msgspec.to_builtins(reply)})
            else:
                out.print(
                    f"{spec.name}: stored (log index {reply.index}); "
                    f"follow it with `colony job status {spec.name}`"
                )
            return 0
        if outcome.value == "update":
            return await _follow_rollout(client, args, spec.name, outcome.version, nodes, after)
        failures = Failures(spec.name, outcome.version)
        if after is None:  # no change stream to follow: the reads alone see failures
            return await _follow(client, spec.name, args, nodes, failures, None)
        heard = rollout.Heard(client, spec.name, after, secret)
        try:
            return await _follow(client, spec.name, args, nodes, failures, heard)
        finally:
            await heard.stop()

    return work


def _secret(args: argparse.Namespace) -> bytes | None:
    """The state dir's cluster secret, to check the changes followed (None: unchecked)."""
    try:
        return cluster_secret(StateDir(args.state_dir))
    except (ValueError, OSError):
        return None  # `job run` only shows them; `colony events` says what is wrong


async def _last_index(client: Management, secret: bytes | None) -> int | None:
    """The last change's index (None: the change stream cannot be read now)."""
    try:
        return await changes.last_index(client.bus, secret)
    except BusError:
        return None


async def _follow(
    client: Management,
    name: str,
    args: argparse.Namespace,
    nodes: dict[str, NodeRecord],
    failures: Failures,
    heard: rollout.Heard | None,
) -> int:
    """Show the job's progress, and each failure as it is heard of, until every instance
    it wants runs; exit 1 with the reasons when every one keeps failing, or they do not
    all run within args.timeout. The failures are those the change stream carries into
    `heard` (without it: those the reads find, which can miss one replaced between two
    reads)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    job: JobRecord | None = None
    instances: list[InstanceRecord] = []
    given_up = False
    halted = ""
    with contextlib.ExitStack() as stack:
        # with --json, stdout is for the JSON and people see no progress
        waiting = Text(f"{name}: waiting for the manager to place it")
        show = (lambda _: None) if args.json else stack.enter_context(err.status(waiting)).update
        stale = False  # the first read sees the job just stored (a commit makes it current)
        while True:
            # then stale reads of the same voter: never older, and they cost no commit
            found = await records.one_of(client, records.JOBS, name, stale=stale)
            job = msgspec.convert(found.value, JobRecord) if found else None
            instances = await records.instances(client, name, stale=True)
            stale = True
            changed = heard.taken() if heard else []
            if heard is not None and heard.ended:  # the reads go on alone
                heard = None
            # while the stream is followed, the reads only update a failure it told of: a
            # failed instance they show may be of before this run (same version, run again)
            new = [*failures.saw(changed), *failures.saw(instances, new=heard is None)]
            if not args.json:
                for i in new:
                    err.print(Text.assemble(("✗ ", "red"), instance_said(i, nodes)), soft_wrap=True)
            now = progress(job, instances)
            given_up = keeps_failing(job, instances, failures.failed)
            halted = rollout_halted(job, failures.version)
            if now is not None:
                show(Text(now.line(name)))
                if now.done or now.failed_for_good or given_up or halted:
                    break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(PROGRESS_EVERY)
    nodes = {**nodes, **await _nodes(client)}
    running = [i for i in instances if i.desired == "run"]
    finished = now is not None and now.done
    if args.json:
        print_json(
            {
                "job": name,
                "running": finished,
                "instances": [instance_json(i, nodes) for i in running],
                "reasons": []
                if finished
                else why_not_running(job, instances, nodes, failures.failed.values()),
            }
        )
    elif running:
        out.print(instance_table(running, nodes, time.time()))
    if finished:
        if not args.json:
            out.print(Text.assemble(("✓", "green"), f" {name}: {len(running)} running"))
        return 0
    if not args.json:
        for reason in why_not_running(job, instances, nodes, failures.failed.values()):
            err.print(Text("  " + reason), soft_wrap=True)
    if halted:
        what = halted
    elif now is not None and now.failed_for_good:
        what = f"{now.failed_for_good} instance(s) failed and stay failed (restart.then: fail)"
    elif given_up:
        what = "every instance keeps failing: their restarts ran out"
        if job is not None and job.spec.restart.then == "reschedule" and not job.blocked:
            what += " and the manager rescheduled them"
    else:
        what = f"not every instance runs after {args.timeout:g} s"
    fail(
        f"{name}: {what}" + ("" if halted else " (reasons above)"),
        f"see `colony job status {name}` and `colony logs INSTANCE`",
    )
