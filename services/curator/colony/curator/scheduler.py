"""The scheduler: which node each new instance of a job goes to. Pure: no I/O, no clock.

As in Nomad, *feasibility* (which nodes can take one more instance of the job, and when
none can, why not: each node is counted under the first check it fails) is kept apart
from *scoring* (which feasible node is best):

- by default, bin-pack with job anti-affinity, as Nomad scores: bin-pack is how full the
  node is after placing (cpu and memory as fractions of its capacity, averaged: 0..1), so
  whole nodes stay free for big instances; on a node already running k instances of the
  job, that is averaged with a penalty of -(k+1)/replicas, so copies of a service go to
  different nodes (one node's death takes down one copy, not all) while a big job still
  packs. Of two nodes alike but for the job (same capacity, same other load), one running
  a copy never gets a second while the other has none (averaging halves its bin-pack
  before the penalty; the other keeps all of its), so 6 instances on 5 equal nodes go
  2,1,1,1,1. Among nodes running as many of the job, the fuller wins. It is a preference:
  when only one node has room, all go there (`distinct_nodes` is the constraint);
- with `spec.spread` naming a label: the label value with the fewest instances of the job
  first (nodes without the label count as value ""), then bin-pack (no anti-affinity)
  among its nodes;
- ties go to the lowest node id, so the same inputs give the same decision, whatever the
  order of the nodes and instances given;
- a slot whose instances failed on some nodes (`Ask.avoid`) goes elsewhere while another
  node fits, else to the node where it failed least recently (never blocked by it).

An instance holds cpu, memory and ports on its node while it is desired `run` or not yet
terminal (`holds`: colony.shared.reservations, the rule `colony status` counts by too); it
counts as one of its job's (distinct_nodes, spread) while desired `run`, so a replacement
may go beside an instance that is being stopped.

Slots are placed one by one, each placement updating its node's free cpu, memory and
ports, so two slots of one ask never share a port or oversubscribe a node.

Cost: the instances are indexed by node once per call (`schedule_all` places several
jobs' asks on one index); the feasible nodes sit in heaps (one per spread value) whose
order changes only for the node just used (its fullness and its count of the job's
instances are all its score depends on), so a slot costs O(log nodes), not O(nodes)
(except a slot with nodes to avoid: a scan of the nodes). So a call costs about
O(instances + nodes + slots x log nodes).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from colony.shared.jobspec import Constraint, JobSpec
from colony.shared.messages import InstanceRecord, NodeRecord
from colony.shared.reservations import MICRO, TERMINAL, holds, micro, reserved

__all__ = [
    "TERMINAL",
    "Ask",
    "Decision",
    "NodeView",
    "holds",
    "reserved",
    "schedule",
    "schedule_all",
]
"""holds, reserved and TERMINAL come from the shared library (the CLI counts by them too)."""


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it: its record and its labels (the `labels` kind)."""

    record: NodeRecord
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ask:
    """Place these slots (replica numbers) of one job version."""

    spec: JobSpec
    version: int
    slots: tuple[int, ...]
    avoid: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Per slot: nodes not to use (where it failed), least recently failed first. When
    every node that fits is one of them, the slot goes to the least recently failed: a
    job that fails everywhere keeps trying, on each node in turn."""
    replicas: int = 0
    """How many instances the job runs (`JobRecord.replicas`: scaling changes it, not the
    spec), which the anti-affinity penalty is relative to; 0: `spec.replicas`."""


@dataclass(frozen=True)
class Decision:
    placements: tuple[tuple[int, str, dict[str, int]], ...]
    """(slot, node, ports) for every slot placed, by slot."""
    unplaced: tuple[int, ...]
    no_fit: tuple[str, ...]
    """Why the first unplaced slot fits on no node, most frequent reason first, e.g.
    "3 nodes lack memory: need 512 MiB, the best has 300 MiB free"; () if all placed."""


def schedule(nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], ask: Ask) -> Decision:
    """Place `ask.slots` on the best feasible nodes, slot by slot (lowest slot first)."""
    return schedule_all(nodes, instances, (ask,))[0]


def schedule_all(
    nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], asks: Sequence[Ask]
) -> tuple[Decision, ...]:
    """Place several asks in turn, each seeing what the ones before it placed. The
    instances are indexed once for all of them: one call per reconcile round costs
    O(instances), where one call per job would cost O(jobs x instances)."""
    cluster = _Cluster(nodes, instances, {ask.spec.name for ask in asks})
    return tuple(_decide(cluster, ask) for ask in asks)


def _decide(cluster: _Cluster, ask: Ask) -> Decision:
    if not ask.slots:
        return Decision(placements=(), unplaced=(), no_fit=())
    board = _Board(cluster, ask.spec, ask.replicas or ask.spec.replicas)
    placements: list[tuple[int, str, dict[str, int]]] = []
    unplaced: list[int] = []
    no_fit: tuple[str, ...] = ()
    for slot in sorted(set(ask.slots)):
        # Once a slot fits nowhere (nodes to avoid are a preference), no later slot can
        # fit either: placing only ever takes resources away.
        node = None if unplaced else board.pick(ask.avoid.get(slot, ()))
        if node is None:
            if not unplaced:
                no_fit = board.explain()
            unplaced.append(slot)
            continue
        placements.append((slot, node.id, board.place(node)))
    return Decision(placements=tuple(placements), unplaced=tuple(unplaced), no_fit=no_fit)


# --- feasibility ----------------------------------------------------------------------

# Why a node cannot take the instance: (check, detail), the checks in the order they run.
# A node counts under the first one it fails.
_STATUS, _INELIGIBLE, _DRIVER, _CONSTRAINT, _DISTINCT, _CPU, _MEMORY, _PORTS = range(8)
_Why = tuple[int, str | int]


@dataclass(frozen=True)
class _Rule:
    """A constraint made ready to check: its values as a set, its text for people."""

    label: str
    inside: bool
    """True for = and in (the label's value must be one of `values`), False for != and
    not_in (it must not be)."""
    values: frozenset[str]
    text: str

    @staticmethod
    def of(c: Constraint) -> _Rule:
        # The job file loader gives = and != one value, in and not_in a list.
        values = [c.value] if isinstance(c.value, str) else list(c.value)
        shown = f"({', '.join(values)})" if c.op in ("in", "not_in") else ", ".join(values)
        return _Rule(c.label, c.op in ("=", "in"), frozenset(values), f"{c.label} {c.op} {shown}")

    def holds(self, labels: dict[str, str]) -> bool:
        # A node without the label has value "" (so `!=` and `not_in` hold there).
        return (labels.get(self.label, "") in self.values) == self.inside


def _static_why(view: NodeView, spec: JobSpec, rules: Sequence[_Rule]) -> _Why | None:
    """The first check the node fails that no placement in this call can change."""
    r = view.record
    if r.status != "alive":
        return (_STATUS, r.status)
    if not r.eligible:
        return (_INELIGIBLE, "")
    if spec.driver not in r.drivers:
        return (_DRIVER, spec.driver)
    for i, rule in enumerate(rules):
        if not rule.holds(view.labels):
            return (_CONSTRAINT, i)
    return None


class _Room:
    """What is free on a live, eligible node, kept up to date as a call places instances."""

    __slots__ = (
        "cpu_cap",
        "cpu_used",
        "held",
        "memory_cap",
        "memory_used",
        "next_port",
        "port_hi",
        "port_lo",
        "ports_free",
    )

    def __init__(self, record: NodeRecord) -> None:
        self.cpu_cap = micro(record.cpu)
        self.memory_cap = record.memory
        self.cpu_used = 0
        self.memory_used = 0
        self.port_lo = record.port_lo
        self.port_hi = record.port_hi
        self.held: set[int] = set()
        """Ports held by instances on it (some may lie outside its range)."""
        self.ports_free = max(0, record.port_hi - record.port_lo + 1) if record.port_lo > 0 else 0
        self.next_port = record.port_lo
        """No port below this one is free (ports are only taken during a call)."""

    def take_port(self) -> int:
        port = self.next_port
        while port in self.held:
            port += 1
        self.held.add(port)
        self.ports_free -= 1
        self.next_port = port + 1
        return port


class _Cluster:
    """The nodes and what their instances hold, indexed once per call."""

    def __init__(
        self, nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], jobs: set[str]
    ) -> None:
        self.views = nodes
        self.rooms = {
            v.record.node: _Room(v.record)
            for v in nodes
            if v.record.status == "alive" and v.record.eligible
        }
        self.running: dict[str, list[str]] = {job: [] for job in jobs}
        """Per job asked for, the node of each of its instances desired `run` (for
        distinct_nodes and spread: an instance being stopped does not count, so its
        replacement may go beside it)."""
        rooms = self.rooms
        running = self.running
        room_of = rooms.get
        for i in instances:  # the hot loop of a call: kept to the bare minimum
            if i.desired == "run":
                if i.job in running:
                    running[i.job].append(i.node)
            elif i.state in TERMINAL:
                continue  # holds nothing: see holds()
            room = room_of(i.node)
            if room is not None:
                room.cpu_used += round(i.cpu * MICRO)
                room.memory_used += i.memory
                if i.ports:
                    room.held.update(i.ports.values())
        for room in rooms.values():
            if room.held:
                lo, hi = room.port_lo, room.port_hi
                room.ports_free -= len([p for p in room.held if lo <= p <= hi])


class _Node:
    """A node that passed the job's static checks: its room, and the job's view of it."""

    __slots__ = ("group", "id", "own", "room", "version")

    def __init__(self, nid: str, room: _Room, group: str) -> None:
        self.id = nid
        self.room = room
        self.group = group
        """Its value of the spread label ("" for all nodes without spread)."""
        self.own = 0
        """Instances of the job desired `run` on it."""
        self.version = 0
        """Bumped on every placement: heap entries of older versions are stale."""


class _Board:
    """The nodes for one ask: which can take the job, in which order."""

    def __init__(self, cluster: _Cluster, spec: JobSpec, replicas: int) -> None:
        self.cluster = cluster
        self.spec = spec
        self.replicas = max(replicas, 1)
        self.cpu = micro(spec.resources.cpu)
        self.memory = spec.resources.memory
        self.ports = tuple(dict.fromkeys(spec.ports))
        self.rules = [_Rule.of(c) for c in spec.constraints]
        self.spread = spec.spread
        self.statics: list[_Why] = []
        """The static reason of every node that failed a static check."""
        self.nodes: dict[str, _Node] = {}
        spread, nodes, rooms, rules = self.spread, self.nodes, cluster.rooms, self.rules
        group_of: dict[str, str] = {}
        for view in cluster.views:
            nid = view.record.node
            group = group_of[nid] = view.labels.get(spread, "") if spread else ""
            why = _static_why(view, spec, rules)
            if why is None:
                nodes[nid] = _Node(nid, rooms[nid], group)
            else:
                self.statics.append(why)
        self.any_alive = any(v.record.status == "alive" for v in cluster.views)
        self.counts: Counter[str] = Counter()
        """Instances of the job desired `run` per spread value (only with spread)."""
        for nid in cluster.running[spec.name]:
            if spread and nid in group_of:
                self.counts[group_of[nid]] += 1
            n = nodes.get(nid)
            if n is not None:
                n.own += 1
        # Per spread value, a heap of (-score, node id, version); and a heap of the values
        # by (instances of the job, then their best node's key). Entries are checked when
        # they reach the top (lazy deletion): a node that no longer fits or a stale score is
        # dropped; a value whose count or best node changed is pushed again.
        self.heaps: dict[str, list[tuple[float, str, int]]] = {}
        for n in nodes.values():
            if self.fits(n):
                self.heaps.setdefault(n.group, []).append((-self.score(n), n.id, 0))
        self.groups: list[tuple[int, float, str, str]] = []
        self.pushed: dict[str, tuple[int, float, str, str]] = {}
        """The entry last pushed per value: the one that may be current."""
        for group, heap in self.heaps.items():
            heapq.heapify(heap)
            self.push_group(group)

    # The per-node checks that placements change: they only ever fail more as a call goes.
    def dynamic_why(self, n: _Node) -> _Why | None:
        room = n.room
        if self.spec.distinct_nodes and n.own:
            return (_DISTINCT, "")
        if room.cpu_used + self.cpu > room.cpu_cap:
            return (_CPU, "")
        if room.memory_used + self.memory > room.memory_cap:
            return (_MEMORY, "")
        if room.ports_free < len(self.ports):
            return (_PORTS, "")
        return None

    def fits(self, n: _Node) -> bool:
        return self.dynamic_why(n) is None

    def score(self, n: _Node) -> float:
        """How good the node is for one more instance: higher is better."""
        room = n.room
        cpu = (room.cpu_used + self.cpu) / (room.cpu_cap or 1)
        memory = (room.memory_used + self.memory) / (room.memory_cap or 1)
        fill = (cpu + memory) / 2  # bin-pack: fuller after placing is better
        if self.spread or not n.own:
            return fill
        # Job anti-affinity, as Nomad's: a penalty growing with the job's instances already
        # there, relative to its replicas, averaged with bin-pack (Nomad averages the scores
        # a node gets; a node without the job's instances gets none from anti-affinity).
        return (fill - (n.own + 1) / self.replicas) / 2

    def key(self, n: _Node) -> tuple[int, float, str]:
        """The order of preference among fitting nodes: lowest first."""
        return (self.counts[n.group], -self.score(n), n.id)

    def top(self, group: str) -> tuple[float, str] | None:
        """The best node of a spread value that still fits, dropping stale entries."""
        heap = self.heaps[group]
        while heap:
            neg, nid, version = heap[0]
            n = self.nodes[nid]
            if version == n.version and self.fits(n):
                return neg, nid
            heapq.heappop(heap)  # stale, or full for the rest of this call
        return None

    def push_group(self, group: str) -> None:
        """Push the value's current entry, unless it is already in the heap."""
        best = self.top(group)
        if best is not None:
            entry = (self.counts[group], *best, group)
            if entry != self.pushed.get(group):
                self.pushed[group] = entry
                heapq.heappush(self.groups, entry)

    def pick(self, avoid: tuple[str, ...]) -> _Node | None:
        """The best node for one more instance, None if none fits; a node in `avoid` only
        if every node that fits is: the one that comes first there."""
        if avoid:
            # Rare (a replacement after failures): scan rather than disturb the heaps.
            fitting = [n for n in self.nodes.values() if self.fits(n)]
            failed = {nid: at for at, nid in enumerate(avoid)}  # a node named twice: its last
            return min(fitting, key=lambda n: (failed.get(n.id, -1), self.key(n)), default=None)
        while self.groups:
            count, neg, nid, group = self.groups[0]
            if (neg, nid) == self.top(group) and count == self.counts[group]:
                return self.nodes[nid]
            heapq.heappop(self.groups)
            self.push_group(group)
        return None

    def place(self, n: _Node) -> dict[str, int]:
        """Reserve one instance's cpu, memory and ports on `n`; returns its ports."""
        room = n.room
        room.cpu_used += self.cpu
        room.memory_used += self.memory
        ports = {name: room.take_port() for name in self.ports}
        self.cluster.running[self.spec.name].append(n.id)
        n.own += 1
        n.version += 1
        if self.spread:
            self.counts[n.group] += 1
        heapq.heappush(self.heaps[n.group], (-self.score(n), n.id, n.version))
        self.push_group(n.group)
        return ports

    # --- the no-fit explanation -----------------------------------------------------------

    def explain(self) -> tuple[str, ...]:
        """Why no node fits now: per reason, how many nodes (most first) and, for the
        resources, how close the best of them came."""
        counts = Counter(self.statics)
        best: dict[int, int] = {}
        for n in self.nodes.values():
            why = self.dynamic_why(n)
            if why is None:
                continue  # cannot happen when pick() found nothing; not a reason anyway
            counts[why] += 1
            room = n.room
            free = {
                _CPU: room.cpu_cap - room.cpu_used,
                _MEMORY: room.memory_cap - room.memory_used,
                _PORTS: room.ports_free,
            }.get(why[0])
            if free is not None:
                best[why[0]] = max(best.get(why[0], free), free)
        total = len(self.statics) + len(self.nodes)
        order = sorted(counts.items(), key=lambda item: (-item[1], *item[0]))
        lines = [self.line(why, count, total, best.get(why[0], 0)) for why, count in order]
        return tuple(([] if self.any_alive else ["0 nodes are alive"]) + lines)

    def line(self, why: _Why, count: int, total: int, best: int) -> str:
        """One reason as people read it: "3 nodes lack memory: need ..."."""
        check, detail = why

        def say(one: str, many: str) -> str:
            return f"{_plural(count, 'node')} {one if count == 1 else many}"

        best_has = "it has" if count == 1 else "the best has"
        if check == _STATUS:
            return say(*_STATUS_WORDS.get(str(detail), (f"is {detail}", f"are {detail}")))
        if check == _INELIGIBLE:
            return say("is ineligible", "are ineligible")
        if check == _DRIVER:
            if count == total:
                return f"no node has driver {detail}"
            return say(f"lacks driver {detail}", f"lack driver {detail}")
        if check == _CONSTRAINT:
            text = self.rules[int(detail)].text
            return say(f"fails constraint {text}", f"fail constraint {text}")
        if check == _DISTINCT:
            of = f"an instance of {self.spec.name} (distinct_nodes)"
            return say(f"already runs {of}", f"already run {of}")
        if check == _CPU:
            need, free = _cores(self.cpu, up=True), _cores(best, up=False)
            what = f"cpu: need {need}, {best_has} {free} free"
        elif check == _MEMORY:
            need, free = _size(self.memory, up=True), _size(best, up=False)
            what = f"memory: need {need}, {best_has} {free} free"
        else:
            need = _plural(len(self.ports), "port")
            what = f"ports: need {need}, {best_has} {max(best, 0)} free"
        return say(f"lacks {what}", f"lack {what}")


_STATUS_WORDS = {
    "left": ("has left", "have left"),
    "unknown": ("has no status yet", "have no status yet"),
}
"""How to say a status that "is <status>" would say badly (one node, several nodes)."""


# --- units ------------------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _decimal(num: int, den: int, places: int, up: bool) -> str:
    """num/den with at most `places` decimals, rounded up (what is needed) or down (what
    is free), so "need 512 MiB, the best has 512 MiB free" can never be read. Integer
    arithmetic: 0.1 core stays 0.1, not 0.101."""
    scale = 10**places
    q = -(-num * scale // den) if up else num * scale // den
    whole, frac = divmod(q, scale)
    return f"{whole}.{frac:0{places}d}".rstrip("0").rstrip(".")


def _cores(micro_cores: int, up: bool) -> str:
    text = _decimal(max(micro_cores, 0), MICRO, 3, up)
    return f"{text} core" if text == "1" else f"{text} cores"


def _size(n: int, up: bool) -> str:
    n = max(n, 0)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{_decimal(n, scale, 1, up)} {unit}"
    return f"{n} B"
