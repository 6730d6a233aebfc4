"""Reconcile: what the manager must write so that the desired state matches the jobs and
the nodes. Pure: a `View` in, `Actions` out; no I/O, no clock (randomness for instance
ids comes in as `token`).

The rules, in the order they run:

1. Node statuses follow membership (`NodeStatus` where the recorded one differs); a
   recorded node membership does not know is not alive, and dead after DEAD_AFTER.
2. Per job that runs, each slot 0..replicas-1 needs exactly one instance desired `run`:
   - an instance on a dead or left node, lost, failed with `restart.then: reschedule`
     (its restarts ran out), or placed at an older spec version is stopped, and its
     slot gets a replacement (`replaces` names it). A slot remembers the nodes it
     failed on (`Placement.failed_on`, bounded): a replacement avoids them while
     another node fits, else goes where it failed least recently;
   - an instance failed with `restart.then: fail` keeps its slot: it stays failed;
   - a slot at or above replicas is stopped (scaled down);
   - two instances desired `run` in one slot (a manager died between placing a
     replacement and stopping what it replaced): the best one stays, the others stop.
3. A stopped job: every instance of it is stopped.
4. The empty slots are placed by the scheduler (one call for every job), job by job in
   name order, each job seeing what the ones before it placed. What cannot be placed is
   recorded on the job (`JobBlocked`, the scheduler's explanation), and cleared once all
   is placed.
5. Instances desired `stop` that run nothing any more (a terminal state, or a dead or
   left node that cannot say) are removed, those stopped in this very round included.

Idempotent: applying the actions to the view and reconciling again yields none.
Every decision carries its reason in plain words.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from colony.curator.scheduler import TERMINAL, Ask, Decision, NodeView, schedule_all
from colony.curator.view import View
from colony.shared.jobspec import JobSpec
from colony.shared.messages import (
    MAX_FAILED_ON,
    Command,
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobRecord,
    NodeStatus,
    Placement,
    PlannedPlacement,
    PlanReply,
)

DEAD_AFTER = 60.0
"""Seconds a recorded node may be unknown to membership (once it answered) before it is
taken for dead."""
GONE = frozenset({"dead", "left"})
"""Node statuses whose instances run nowhere any more (as far as the cluster can tell)."""
PLACE_BATCH = 500
"""Placements per InstancesPlace at most (several go in one proposal)."""
IDS_BATCH = 4096
"""Ids per InstancesStop or InstancesRemove at most (the command's limit)."""
MAX_REASON = 1024
RANK = {"running": 4, "starting": 3, "pending": 2, "exited": 1}
"""Which of two instances of one slot to keep: the one further along (failed, lost: 0)."""


def token() -> str:
    return secrets.token_hex(2)


@dataclass
class Actions:
    """What one reconcile decided, in the order it must be committed."""

    statuses: list[NodeStatus] = field(default_factory=list)
    stops: dict[str, str] = field(default_factory=dict)
    """Instance id -> why it stops."""
    places: list[Placement] = field(default_factory=list)
    blocked: list[JobBlocked] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)
    """The scheduler's decision per job that had slots to place (not an action: what a
    plan shows)."""

    def __bool__(self) -> bool:
        return bool(self.statuses or self.stops or self.places or self.blocked or self.removes)

    def commands(self) -> list[Command]:
        """As commands, in commit order: statuses, stops, placements (per job), blocked
        jobs, removals. Within one proposal, a replacement commits with the stop of what
        it replaces."""
        found: list[Command] = list(self.statuses)
        by_reason: dict[str, list[str]] = defaultdict(list)
        for id, why in self.stops.items():
            by_reason[why].append(id)
        for why, ids in by_reason.items():
            found += [InstancesStop(ids=chunk, reason=why) for chunk in _chunks(ids, IDS_BATCH)]
        by_job: dict[str, list[Placement]] = defaultdict(list)
        for p in self.places:
            by_job[p.job].append(p)
        for placements in by_job.values():  # a refused job's placements stop no other job's
            found += [InstancesPlace(placements=c) for c in _chunks(placements, PLACE_BATCH)]
        found += self.blocked
        found += [InstancesRemove(ids=chunk) for chunk in _chunks(self.removes, IDS_BATCH)]
        return found


def reconcile(
    view: View, token: Callable[[], str] = token, *, stops_ended: bool = False
) -> Actions:
    """What to write now so that the desired state matches `view`'s jobs and nodes.
    `stops_ended` (a plan): place as if what it stops had ended already, so a job whose
    new version fits once its old one is gone is said to fit."""
    actions = Actions()
    status = _node_statuses(view, actions)
    by_job: dict[str, list[InstanceRecord]] = defaultdict(list)
    for instance in sorted(view.instances.values(), key=lambda i: i.id):
        by_job[instance.job].append(instance)
    wanted: dict[str, dict[int, _Slot]] = {}
    for name, job in sorted(view.jobs.items()):
        if job.status == "stopped":
            for i in by_job[name]:
                if i.desired == "run":
                    actions.stops[i.id] = f"job {name} was stopped"
            if job.blocked:
                actions.blocked.append(JobBlocked(job=name, reason=""))
        else:
            wanted[name] = _slots(view, job, by_job[name], status, actions)
    _place(view, wanted, status, actions, token, stops_ended)
    _remove(view, status, actions)
    return actions


@dataclass
class _Slot:
    """A slot to place: what it replaces, why, and where not to go."""

    reason: str
    replaces: str = ""
    avoid: tuple[str, ...] = ()
    """Where the slot's instances failed, least recent first (`Placement.failed_on`)."""
    stop_if_placed: bool = False
    """`replaces` stops only once its replacement is placed (a failed instance stays
    put, and its slot blocked, while no node can take it)."""


def _node_statuses(view: View, actions: Actions) -> dict[str, str]:
    """Every node's status after this round: membership's where it has one. Once it
    answered, a recorded node it does not know is not alive (nothing is placed there)
    and, after DEAD_AFTER seconds, dead: a node that never came back is not alive
    forever."""
    status = {node: record.status for node, record in view.nodes.items()}
    for node, said in sorted(view.members.items()):
        if status.get(node) != said:
            reason = f"membership says node {_name(view, node)} is {said}"
            actions.statuses.append(NodeStatus(node=node, status=said, reason=reason))  # type: ignore[arg-type]
            status[node] = said
    if not view.answered:
        return status
    for node in sorted(view.nodes.keys() - view.members.keys()):
        if view.absent.get(node, 0.0) < DEAD_AFTER:
            if status[node] == "alive":
                status[node] = "unknown"  # for this round's placements: not recorded
        elif status[node] not in GONE:
            reason = f"membership has not known node {_name(view, node)} for {DEAD_AFTER:g} s"
            actions.statuses.append(NodeStatus(node=node, status="dead", reason=reason))
            status[node] = "dead"
    return status


def _name(view: View, node: str) -> str:
    record = view.nodes.get(node)
    return (record.name if record else "") or node


def _slots(
    view: View,
    job: JobRecord,
    instances: list[InstanceRecord],
    status: dict[str, str],
    actions: Actions,
) -> dict[int, _Slot]:
    """Decide the job's stops; return its slots to place."""
    holders: dict[int, list[InstanceRecord]] = defaultdict(list)
    slots: dict[int, _Slot] = {}
    for i in instances:
        if i.desired == "stop":
            if i.slot < job.replicas and i.slot not in slots:  # its slot may be empty since
                why = f"slot {i.slot} is empty: {i.id} stopped ({i.desired_reason})"
                slots[i.slot] = _Slot(why, i.id, _failed_on(job, i, i.state == "failed"))
            continue
        if i.slot >= job.replicas:
            actions.stops[i.id] = f"scaled to {job.replicas}"
            continue
        why, failed = _replace_why(view, job, i, status)
        if not why:
            holders[i.slot].append(i)
            continue
        slots[i.slot] = _Slot(why, i.id, _failed_on(job, i, failed), stop_if_placed=failed)
        if not failed:
            actions.stops[i.id] = why
    for slot, found in holders.items():
        keep = max(found, key=lambda i: (RANK.get(i.state, 0), i.version, i.placed, i.id))
        extra = [i.id for i in found if i is not keep]
        if slot in slots and slots[slot].stop_if_placed:  # failed, and held by another
            extra.append(slots[slot].replaces)
        for id in extra:
            actions.stops[id] = f"slot {slot} of {job.name} has {keep.id} already"
    fresh = f"scaled to {job.replicas}" if instances else f"job {job.name} submitted"
    return {
        slot: slots.get(slot) or _Slot(fresh) for slot in range(job.replicas) if slot not in holders
    }


def _replace_why(
    view: View, job: JobRecord, i: InstanceRecord, status: dict[str, str]
) -> tuple[str, bool]:
    """Why instance `i` (desired run, in range) must be replaced ('' : it must not), and
    whether it failed there (its replacement avoids its node)."""
    node = _name(view, i.node)
    if status.get(i.node) in GONE:
        return f"node {node} is {status[i.node]}", False
    if i.state == "lost":
        return f"instance {i.id} was lost on node {node}", False
    if i.version < job.version:
        return f"updated to version {job.version}", False
    if i.state == "failed":
        spec = view.spec_of(i)
        if spec is None or spec.restart.then == "reschedule":
            said = i.reason or (f"exit code {i.exit_code}" if i.exit_code is not None else "")
            why = f"restarts ran out on node {node}" + (f": {said}" if said else "")
            return why, True
    return "", False


def _failed_on(job: JobRecord, i: InstanceRecord, failed: bool) -> tuple[str, ...]:
    """The nodes where the slot of `i` failed, least recent first, `i`'s own node last if
    it `failed` there: what its replacement avoids, and carries on (at most
    MAX_FAILED_ON). A new spec version starts over: it may not fail any more."""
    if i.version < job.version:
        return ()
    nodes = [n for n in i.failed_on if not (failed and n == i.node)]
    return tuple([*nodes, i.node][-MAX_FAILED_ON:] if failed else nodes[-MAX_FAILED_ON:])


def _place(
    view: View,
    wanted: dict[str, dict[int, _Slot]],
    status: dict[str, str],
    actions: Actions,
    token: Callable[[], str],
    stops_ended: bool,
) -> None:
    """Ask the scheduler for every job's empty slots; record what does not fit. With
    `stops_ended`, what this round stops holds nothing any more (as once it ended)."""
    nodes = [
        NodeView(
            msgspec.structs.replace(record, status=status[node]),
            view.labels.get(node, {}),
        )
        for node, record in sorted(view.nodes.items())
    ]
    # What holds resources after this round: the stops applied, the failed instances to
    # replace among them (they run nothing: their replacement may take their node). The
    # scheduler adds what it places for one job before it places the next.
    stopping = set(actions.stops)
    stopping.update(
        s.replaces for slots in wanted.values() for s in slots.values() if s.stop_if_placed
    )
    state = {"state": "exited"} if stops_ended else {}
    instances = [
        msgspec.structs.replace(i, desired="stop", **state) if i.id in stopping else i
        for i in view.instances.values()
    ]
    asks = {
        name: Ask(
            spec=view.jobs[name].spec,
            version=view.jobs[name].version,
            slots=tuple(sorted(slots)),
            avoid={slot: s.avoid for slot, s in slots.items() if s.avoid},
            replicas=view.jobs[name].replicas,
        )
        for name, slots in wanted.items()
        if slots
    }
    decisions = dict(zip(asks, schedule_all(nodes, instances, list(asks.values())), strict=True))
    actions.decisions.update(decisions)
    taken = set(view.instances)
    for name, slots in wanted.items():
        job = view.jobs[name]
        decision = decisions.get(name)
        for slot, node, ports in decision.placements if decision else ():
            why = slots[slot]
            actions.places.append(_placement(job, slot, node, ports, why, taken, token))
            if why.stop_if_placed:
                actions.stops[why.replaces] = why.reason
        blocked = _blocked(job, decision)
        if blocked != job.blocked:
            actions.blocked.append(JobBlocked(job=name, reason=blocked))


def _placement(
    job: JobRecord,
    slot: int,
    node: str,
    ports: dict[str, int],
    why: _Slot,
    taken: set[str],
    token: Callable[[], str],
) -> Placement:
    while (id := f"{job.name}-{slot}-{token()}") in taken:
        pass  # 65,536 tokens per slot: a clash is rare, and the next one differs
    taken.add(id)
    resources = job.spec.resources
    return Placement(
        id=id,
        job=job.name,
        version=job.version,
        slot=slot,
        node=node,
        cpu=resources.cpu,
        memory=resources.memory,
        ports=ports,
        replaces=why.replaces,
        reason=why.reason[:MAX_REASON],
        failed_on=list(why.avoid),
    )


def _blocked(job: JobRecord, decision: Decision | None) -> str:
    """Why some of the job's instances cannot be placed ('' : none)."""
    if decision is None or not decision.unplaced:
        return ""
    count = len(decision.unplaced)
    why = "; ".join(decision.no_fit) or "no node fits"
    said = f"{count} of {job.replicas} instances cannot be placed: {why}"
    return said[:MAX_REASON]


def _remove(view: View, status: dict[str, str], actions: Actions) -> None:
    for id, i in sorted(view.instances.items()):
        stopped = i.desired == "stop" or id in actions.stops
        if stopped and (i.state in TERMINAL or status.get(i.node) in GONE):
            actions.removes.append(id)


def plan(view: View, spec: JobSpec, epoch: int, token: Callable[[], str] = token) -> PlanReply:
    """What submitting `spec` (JobRun) would do now: the job as the jobs kind would record
    it, reconciled in a copy of the view. Nothing is written. What it places is decided
    as if what it stops had ended: an update that fits once its older instances are
    gone fits (they hold their nodes only until they exit)."""
    current = view.jobs.get(spec.name)
    change: Literal["new", "update", "unchanged", "restart"]
    if current is None:
        change, version, replicas = "new", 1, spec.replicas
    elif current.spec == spec:  # run again as it is: its replicas stay (it may be scaled)
        change = "unchanged" if current.status == "running" else "restart"
        version, replicas = current.version, current.replicas
    else:
        change, version, replicas = "update", current.version + 1, spec.replicas
    record = JobRecord(name=spec.name, version=version, spec=spec, replicas=replicas)
    actions = reconcile(view.with_job(record), token, stops_ended=True)
    decision = actions.decisions.get(spec.name)
    return PlanReply(
        job=spec.name,
        change=change,
        version=version,
        place=[
            PlannedPlacement(p.slot, p.node, dict(p.ports))
            for p in actions.places
            if p.job == spec.name
        ],
        stop=[id for id in actions.stops if view.instances[id].job == spec.name],
        unplaced=len(decision.unplaced) if decision else 0,
        no_fit=list(decision.no_fit) if decision else [],
        epoch=epoch,
    )


def _chunks(items: list, size: int) -> list[list]:
    return [items[at : at + size] for at in range(0, len(items), size)]
