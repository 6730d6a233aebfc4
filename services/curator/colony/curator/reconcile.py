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
6. Rollouts (colony.curator.rollouts: running, halted or steady) and drain change rule 2:
   - an older instance (one whose spec differs from the current version's outside
     IN_PLACE) is replaced at once only in a steady job; in a rolling job it *leaves*
     gently: a replacement (`replaces` = it) is placed beside it, and it stops once the
     replacement is ready. So is an instance on a draining node (until the drain
     deadline: then it stops at once). A slot may so hold one staying and one leaving
     instance: they are not duplicates;
   - a running rollout places its canaries (slots 0..canaries-1), proposes JobPromote
     once they are ready (auto_promote), then replaces `max_parallel` slots at a time (a
     batch, started when nothing is in flight; where no node has room beside the older
     instance, the older one stops first), and records its progress (RolloutProgress,
     only when it changed); it fails on a failed or unhealthy new instance or a missed
     deadline (and with auto_revert proposes the rollback to the stable version), and
     succeeds once every slot holds one ready current instance and nothing older runs;
   - a draining node's instances migrate at most `max_parallel` per job at a time; a
     draining node without instances is recorded drained (NodeDrained).
   `Actions.wake` says when a time-based rule changes next (reconcile again then).

Idempotent: applying the actions to the view and reconciling again (at the same `now`)
yields none. Every decision carries its reason in plain words.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from colony.curator import rollouts
from colony.curator.rollouts import Mode, earliest, ready
from colony.curator.scheduler import TERMINAL, Ask, Decision, NodeView, schedule_all
from colony.curator.view import View
from colony.shared.jobspec import JobSpec, diff, replaces_instances
from colony.shared.messages import (
    MAX_FAILED_ON,
    Command,
    InstanceRecord,
    InstancesPlace,
    InstancesRemove,
    InstancesStop,
    JobBlocked,
    JobPromote,
    JobRecord,
    JobRollback,
    NodeDrained,
    NodeStatus,
    Placement,
    PlannedPlacement,
    PlanReply,
    RolloutProgress,
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
    promotes: list[JobPromote] = field(default_factory=list)
    """auto_promote: canaries all ready."""
    progress: list[RolloutProgress] = field(default_factory=list)
    """Rollouts' progress and ends (a failure and its revert one after the other)."""
    rollbacks: list[JobRollback] = field(default_factory=list)
    """auto_revert: each right after its job's failed and reverted progress."""
    stops: dict[str, str] = field(default_factory=dict)
    """Instance id -> why it stops."""
    places: list[Placement] = field(default_factory=list)
    blocked: list[JobBlocked] = field(default_factory=list)
    drained: list[NodeDrained] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)
    """The scheduler's decision per job that had slots to place (not an action: what a
    plan shows)."""
    wake: float | None = None
    """The next `View.now` at which a time-based rule decides otherwise (an instance
    reaching min_healthy_time, a healthy, progress or drain deadline); None: nothing
    waits for time. Not an action: the curator reconciles again then."""

    def __bool__(self) -> bool:
        return bool(
            self.statuses
            or self.promotes
            or self.progress
            or self.rollbacks
            or self.stops
            or self.places
            or self.blocked
            or self.drained
            or self.removes
        )

    def commands(self) -> list[Command]:
        """As commands, in commit order: statuses, promotions, rollout progress (a
        failure, its revert and the rollback together), stops, placements (per job),
        blocked jobs, drained nodes, removals. Within one proposal, a replacement commits
        with the stop of what it replaces; a batch's start is recorded before its
        placements."""
        found: list[Command] = [*self.statuses, *self.promotes]
        rollbacks = {r.job: r for r in self.rollbacks}
        for progress in self.progress:
            found.append(progress)
            if progress.status == "reverted" and progress.job in rollbacks:
                found.append(rollbacks.pop(progress.job))
        found += rollbacks.values()
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
        found += self.drained
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
    rounds: list[_Round] = []
    for name, job in sorted(view.jobs.items()):
        if job.status == "stopped":
            for i in by_job[name]:
                if i.desired == "run":
                    actions.stops[i.id] = f"job {name} was stopped"
            if job.blocked:
                actions.blocked.append(JobBlocked(job=name, reason=""))
        else:
            one = _Round(view, job, status)
            wanted[name] = one.slots(by_job[name], actions)
            rounds.append(one)
    _place(view, wanted, status, actions, token, stops_ended)
    placed: dict[str, set[int]] = defaultdict(set)
    for p in actions.places:
        placed[p.job].add(p.slot)
    for one in rounds:
        one.finish(actions, placed[one.job.name])
    _remove(view, status, actions)
    _drained(view, status, actions)
    actions.wake = earliest(*(one.wake for one in rounds), _drain_wake(view))
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
    stop_unless_placed: bool = False
    """A batch: `replaces` keeps running beside its replacement, or, where no node has
    room for it, stops first (its replacement is placed once it is gone)."""
    canary: bool = False
    stop_reason: str = ""
    """Why `replaces` stops when `stop_unless_placed` finds no room."""


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


class _Round:
    """One job (not stopped) in one reconcile: which of its instances stay, which leave
    (older ones in a rolling job, those on a draining node) and which are replaced at
    once; its rollout's canaries, batches, failure or success; its drain migrations."""

    def __init__(self, view: View, job: JobRecord, status: dict[str, str]) -> None:
        self.view, self.job, self.status = view, job, status
        self.now = view.now
        self.mode: Mode = rollouts.mode(job)
        self.rolling = self.mode == "running"
        """Whether the rollout ran at the start of this round (it may fail in it)."""
        rollout = job.rollout
        self.promoted = rollout.promoted if rollout else True
        self.canaries = min(rollout.canaries, job.replicas) if rollout else 0
        self.batch = rollout.batch if rollout else 0
        self.batch_started = rollout.batch_started if rollout else 0.0
        self.failure = ""
        self.keep: dict[int, InstanceRecord] = {}
        """Per slot, the instance that stays (current, not on a draining node)."""
        self.leave: dict[int, InstanceRecord] = {}
        """Per slot, the instance that leaves once its replacement is ready."""
        self.deadlines: list[float | None] = []
        """When a running rollout fails if nothing changes (its healthy and progress
        deadlines)."""
        self.wake: float | None = None
        self._current: dict[int, bool] = {}

    def current(self, i: InstanceRecord) -> bool:
        """Whether `i` runs the current version as it is: placed at it, or at an older
        one that differs only in what changes in place (IN_PLACE)."""
        job = self.job
        if i.version == job.version:
            return True
        found = self._current.get(i.version)
        if found is None:
            spec = self.view.specs.get((job.name, i.version))
            found = (
                spec is not None
                and i.version < job.version
                and not replaces_instances(spec, job.spec)
            )
            self._current[i.version] = found
        return found

    def draining(self, i: InstanceRecord) -> bool:
        record = self.view.nodes.get(i.node)
        return record is not None and record.drain == "draining"

    def ready(self, i: InstanceRecord | None) -> bool:
        return i is not None and ready(i, self.job.spec, self.now)

    def slots(self, instances: list[InstanceRecord], actions: Actions) -> dict[int, _Slot]:
        """Decide the job's stops and rollout; return its slots to place."""
        job = self.job
        holders: dict[int, list[InstanceRecord]] = defaultdict(list)
        leaving: dict[int, list[InstanceRecord]] = defaultdict(list)
        slots: dict[int, _Slot] = {}
        replaced: set[int] = set()
        for i in instances:
            if i.desired == "stop":
                if i.slot < job.replicas and i.slot not in slots:  # its slot may be empty since
                    why = f"slot {i.slot} is empty: {i.id} stopped ({i.desired_reason})"
                    slots[i.slot] = _Slot(why, i.id, _failed_on(job, i, i.state == "failed"))
                continue
            if i.slot >= job.replicas:
                actions.stops[i.id] = f"scaled to {job.replicas}"
                continue
            why, failed = self.replace_why(i)
            if why:
                slots[i.slot] = _Slot(why, i.id, _failed_on(job, i, failed), stop_if_placed=failed)
                replaced.add(i.slot)
                if not failed:
                    actions.stops[i.id] = why
                continue
            leaves = self.draining(i) or (self.mode != "steady" and not self.current(i))
            (leaving if leaves else holders)[i.slot].append(i)
        # One staying and one leaving instance per slot: the best of each (a manager may
        # have died between placing a replacement and stopping what it replaced).
        for group, kept in ((holders, self.keep), (leaving, self.leave)):
            for slot, found in group.items():
                keep = kept[slot] = max(
                    found,
                    key=lambda i: (self.ready(i), RANK.get(i.state, 0), i.version, i.placed, i.id),
                )
                extra = [i.id for i in found if i is not keep]
                if group is holders and slot in slots and slots[slot].stop_if_placed:
                    extra.append(slots[slot].replaces)  # failed, and held by another
                for id in extra:
                    actions.stops[id] = f"slot {slot} of {job.name} has {keep.id} already"
        places = {
            slot: slots.get(slot) or _Slot(self.fresh(instances))
            for slot in range(job.replicas)
            if slot not in holders and (slot not in leaving or slot in replaced)
        }
        if self.rolling:
            self.fail_or_promote(instances, places, actions)
        self.stop_replaced(actions)
        self.migrate(places)
        return places

    def fresh(self, instances: list[InstanceRecord]) -> str:
        return f"scaled to {self.job.replicas}" if instances else f"job {self.job.name} submitted"

    def replace_why(self, i: InstanceRecord) -> tuple[str, bool]:
        """Why instance `i` (desired run, in range) must be replaced at once ('' : it
        must not), and whether it failed there (its replacement avoids its node)."""
        view, job = self.view, self.job
        node = _name(view, i.node)
        if self.status.get(i.node) in GONE:
            return f"node {node} is {self.status[i.node]}", False
        if i.state == "lost":
            return f"instance {i.id} was lost on node {node}", False
        record = view.nodes.get(i.node)
        deadline = record.drain_deadline if record and record.drain == "draining" else 0.0
        if deadline and self.now >= deadline:
            return f"node {node} is draining and its deadline passed", False
        if self.mode == "steady" and not self.current(i):
            return f"updated to version {job.version}", False
        if i.state == "failed":
            spec = view.spec_of(i)
            if spec is None or spec.restart.then == "reschedule":
                said = i.reason or (f"exit code {i.exit_code}" if i.exit_code is not None else "")
                why = f"restarts ran out on node {node}" + (f": {said}" if said else "")
                return why, True
        return "", False

    def in_flight(self, places: dict[int, _Slot]) -> set[int]:
        """Slots being replaced: placed now, or whose new instance is not ready yet (in a
        running rollout, any instance of its version; else one beside a leaving one)."""
        version, rolling = self.job.version, self.mode == "running"
        found = set(places)
        found.update(
            slot
            for slot, new in self.keep.items()
            if ((rolling and new.version == version) or slot in self.leave) and not self.ready(new)
        )
        return found

    def fail_or_promote(
        self, instances: list[InstanceRecord], places: dict[int, _Slot], actions: Actions
    ) -> None:
        """A running rollout: fail it (a new instance failed, or a deadline passed), or
        promote its canaries once all are ready (auto_promote)."""
        job, spec = self.job, self.job.spec
        deadlines = self.deadlines
        for i in instances:
            if i.desired != "run" or i.slot >= job.replicas or i.version != job.version:
                continue
            # An instance placed before the current batch was ready when it started: not
            # ready now, it restarts (a failure, or the next check, will tell).
            fresh = self.batch < 1 or i.placed >= self.batch_started
            node = _name(self.view, i.node)
            why, at = rollouts.instance_failure(i, spec, self.now, node, deadline=fresh)
            if why:
                self.fail(why)
                return
            deadlines.append(at)
        if self.promoted and job.rollout is not None and self.in_flight(places):
            why, at = rollouts.batch_failure(job.rollout, spec, self.now)
            if why:
                self.fail(why)
                return
            deadlines.append(at)
        if self.promoted or not spec.update.auto_promote:
            return
        if all(self.ready(self.keep.get(slot)) for slot in range(self.canaries)):
            said = f"{self.canaries} canaries of version {job.version} healthy (auto_promote)"
            if self.canaries == 1:
                said = f"the canary of version {job.version} is healthy (auto_promote)"
            actions.promotes.append(JobPromote(job=job.name, reason=said, version=job.version))
            self.promoted = True

    def revert(self, actions: Actions, said: dict, failure: str) -> None:
        """auto_revert: roll back to the last version that rolled out healthy (if any)."""
        job, stable = self.job, self.job.stable
        if not (job.spec.update.auto_revert and stable and stable != job.version):
            return
        if self.view.specs.get((job.name, stable)) == job.spec:
            return  # it is the revert that failed: going back again would change nothing
        cause = f"auto-revert: version {job.version} failed: {failure}"
        reverted = f"reverted to version {stable}: {failure}"
        actions.progress.append(
            RolloutProgress(**said, status="reverted", reason=reverted[:MAX_REASON])
        )
        rollback = JobRollback(
            job=job.name, version=stable, cause=cause[:MAX_REASON], from_version=job.version
        )
        actions.rollbacks.append(rollback)

    def fail(self, why: str) -> None:
        self.failure = why[:MAX_REASON]
        self.mode = "halted"

    def stop_replaced(self, actions: Actions) -> None:
        """A leaving instance stops once the one that stays in its slot is ready: always
        on a draining node; in a running rollout, unless it waits beside an unpromoted
        canary (an instance of another version that needs no replacing is no canary);
        never in a halted rollout (it halted where it was)."""
        for slot, old in self.leave.items():
            new = self.keep.get(slot)
            if new is None or not self.ready(new):
                continue
            if self.draining(old):
                where = _name(self.view, old.node)
                actions.stops[old.id] = f"node {where} is draining: {new.id} replaced it"
            elif self.mode == "running" and not (self.waits(slot) and new.canary):
                said = f"updated to version {self.job.version}: {new.id} is healthy"
                actions.stops[old.id] = said

    def waits(self, slot: int) -> bool:
        """Whether slot `slot` waits for the canaries' promotion: a canary of the
        version rolling out runs there beside the instance it replaces until then."""
        return not self.promoted and slot < self.canaries

    def migrate(self, places: dict[int, _Slot]) -> None:
        """Start replacing leaving instances: a running rollout's canaries, or its next
        batch once nothing is in flight; then drain migrations, up to max_parallel of the
        job in flight."""
        job, update = self.job, self.job.spec.update
        pending = [
            slot for slot in sorted(self.leave) if slot not in self.keep and slot not in places
        ]
        olds = [slot for slot in pending if not self.draining(self.leave[slot])]
        if self.mode == "running" and olds:
            if not self.promoted:
                for slot in olds:
                    if slot < self.canaries:
                        old = self.leave[slot]
                        why = f"canary of version {job.version} beside {old.id}"
                        places[slot] = _Slot(why, old.id, canary=True)
            elif not self.in_flight(places):
                self.batch += 1
                self.batch_started = self.now
                for slot in olds[: update.max_parallel]:
                    old = self.leave[slot]
                    why = f"batch {self.batch} of version {job.version}: replaces {old.id}"
                    stop = f"batch {self.batch} of version {job.version}: no room beside it"
                    places[slot] = _Slot(why, old.id, stop_unless_placed=True, stop_reason=stop)
        room = update.max_parallel - len(self.in_flight(places))
        for slot in [slot for slot in pending if slot not in olds][: max(room, 0)]:
            old = self.leave[slot]
            why = f"node {_name(self.view, old.node)} is draining: replaces {old.id}"
            places[slot] = _Slot(why, old.id)

    def finish(self, actions: Actions, placed_now: set[int]) -> None:
        """After placement (of slots `placed_now`): the rollout's progress, failure,
        revert or success; when something here changes with time."""
        job = self.job
        if any(self.draining(old) for old in self.leave.values()) or self.mode == "running":
            self.wake = earliest(
                *(
                    at
                    for new in self.keep.values()
                    if (at := rollouts.ready_at(new, job.spec)) is not None and at > self.now
                ),
            )
        rollout = job.rollout
        if rollout is not None and rollout.status == "failed" and self.mode == "halted":
            # failed, and its revert not recorded (a manager died between the two)
            said = dict(job=job.name, version=job.version)
            self.revert(actions, said, rollout.reason)
        if not self.rolling or rollout is None:
            return
        placed = healthy = 0
        done = True
        for slot in range(job.replicas):
            new = self.keep.get(slot)
            old = self.leave.get(slot)
            placed += new is not None or slot in placed_now
            healthy += self.ready(new)
            gone = old is None or old.id in actions.stops
            done = done and self.ready(new) and slot not in placed_now and gone
        said = dict(job=job.name, version=job.version, batch=self.batch)
        said.update(batch_started=self.batch_started, placed=placed, healthy=healthy)
        if self.failure:
            actions.progress.append(RolloutProgress(**said, status="failed", reason=self.failure))
            self.revert(actions, said, self.failure)
            return
        if done:
            actions.progress.append(RolloutProgress(**said, status="succeeded"))
            return
        # What this round started has deadlines too (a wake too early decides nothing).
        update = job.spec.update
        if placed_now:
            self.deadlines.append(self.now + update.healthy_deadline)
        if self.promoted and self.batch:
            self.deadlines.append(self.batch_started + update.progress_deadline)
        self.wake = earliest(self.wake, *self.deadlines)
        if (self.batch, self.batch_started, placed, healthy) != (
            rollout.batch,
            rollout.batch_started,
            rollout.placed,
            rollout.healthy,
        ):
            actions.progress.append(RolloutProgress(**said))


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
    `stops_ended`, what this round stops holds nothing any more (as once it ended). A
    batch's slot that finds no room beside the instance it replaces has that instance
    stopped first, and is asked for again."""
    nodes = [
        NodeView(
            msgspec.structs.replace(
                record, status=status[node], eligible=record.eligible and not record.drain
            ),
            view.labels.get(node, {}),
        )
        for node, record in sorted(view.nodes.items())
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
    instances = _after(view, wanted, actions, stops_ended)
    decisions = dict(zip(asks, schedule_all(nodes, instances, list(asks.values())), strict=True))
    first = {
        name: [slot for slot in d.unplaced if wanted[name][slot].stop_unless_placed]
        for name, d in decisions.items()
    }
    if again := {name: slots for name, slots in first.items() if slots}:
        for name, slots in again.items():
            for slot in slots:
                why = wanted[name][slot]
                actions.stops[why.replaces] = why.stop_reason
                reason = f"{why.reason} (it stopped first: no room beside it)"
                wanted[name][slot] = _Slot(reason, why.replaces)
        placed = [
            InstanceRecord(
                id=f"{name}-{slot}-?",
                job=name,
                version=view.jobs[name].version,
                slot=slot,
                node=node,
                cpu=view.jobs[name].spec.resources.cpu,
                memory=view.jobs[name].spec.resources.memory,
                ports=ports,
            )
            for name, decision in decisions.items()
            for slot, node, ports in decision.placements
        ]
        instances = _after(view, wanted, actions, stops_ended) + placed
        retry = {
            name: dataclasses.replace(asks[name], slots=decisions[name].unplaced) for name in again
        }
        for name, decision in zip(
            retry, schedule_all(nodes, instances, list(retry.values())), strict=True
        ):
            before = decisions[name]
            decisions[name] = Decision(
                placements=before.placements + decision.placements,
                unplaced=decision.unplaced,
                no_fit=decision.no_fit,
            )
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


def _after(
    view: View, wanted: dict[str, dict[int, _Slot]], actions: Actions, stops_ended: bool
) -> list[InstanceRecord]:
    """The instances as they hold resources after this round: the stops applied, the
    failed instances to replace among them (they run nothing: their replacement may take
    their node). The scheduler adds what it places for one job before it places the
    next."""
    stopping = set(actions.stops)
    stopping.update(
        s.replaces for slots in wanted.values() for s in slots.values() if s.stop_if_placed
    )
    state = {"state": "exited"} if stops_ended else {}
    return [
        msgspec.structs.replace(i, desired="stop", **state) if i.id in stopping else i
        for i in view.instances.values()
    ]


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
        canary=why.canary,
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


def _drained(view: View, status: dict[str, str], actions: Actions) -> None:
    """A draining node with no instance desired run and none running is drained."""
    draining = {node for node, record in view.nodes.items() if record.drain == "draining"}
    if not draining:
        return
    busy = set()
    for i in view.instances.values():
        if i.node in draining:
            running = i.state not in TERMINAL and status.get(i.node) not in GONE
            if running or (i.desired == "run" and i.id not in actions.stops):
                busy.add(i.node)
    actions.drained += [NodeDrained(node=node) for node in sorted(draining - busy)]


def _drain_wake(view: View) -> float | None:
    return earliest(
        *(
            record.drain_deadline
            for record in view.nodes.values()
            if record.drain == "draining" and record.drain_deadline > view.now
        )
    )


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
    changes, replace, canary = [], 0, 0
    if current is not None and change == "update":
        changes = diff(current.spec, spec)
        running = [i for i in view.instances.values() if i.job == spec.name and i.desired == "run"]
        replace = sum(1 for i in running if _replaced(view, i, spec))
        canary = min(spec.update.canary, replace)
    return PlanReply(
        diff=changes,
        in_place=change == "update" and replace == 0,
        replace=replace,
        max_parallel=spec.update.max_parallel,
        canary=canary,
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


def _replaced(view: View, i: InstanceRecord, spec: JobSpec) -> bool:
    """Whether instance `i` must be replaced to run `spec` (its own spec unknown: yes)."""
    own = view.specs.get((i.job, i.version))
    return own is None or replaces_instances(own, spec)


def _chunks(items: list, size: int) -> list[list]:
    return [items[at : at + size] for at in range(0, len(items), size)]
