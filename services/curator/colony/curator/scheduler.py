"""The scheduler: which node each new instance of a job goes to. Pure: no I/O, no clock.

As in Nomad, *feasibility* (which nodes can take one more instance of the job, and when
none can, why not: each node is counted under the first check it fails) is kept apart
from *scoring* (which feasible node is best):

- bin-pack by default: the node fullest after placing (cpu and memory as fractions of its
  capacity, averaged), so whole nodes stay free for big instances;
- with `spec.spread` naming a label: the label value with the fewest instances of the job
  first (nodes without the label count as value ""), then bin-pack among its nodes;
- ties go to the lowest node id, so the same inputs give the same decision, whatever the
  order of the nodes and instances given.

Slots are placed one by one, each placement updating its node's free cpu, memory and
ports, so two slots of one ask never share a port or oversubscribe a node.

Cost: the instances are indexed by node once per call; the feasible nodes sit in heaps
(one per spread value) whose order changes only for the node just used, so a slot costs
O(log nodes), not O(nodes) (except a slot with nodes to avoid: a scan of the nodes).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

from colony.shared.jobspec import Constraint, JobSpec
from colony.shared.messages import InstanceRecord, NodeRecord, Resources

TERMINAL = frozenset({"exited", "failed", "lost"})
"""Instance states in which an instance runs nothing (it still holds its node's resources
while it is desired `run`: its node may restart it)."""

_MICRO = 1_000_000
"""Cpu is summed in micro-cores (integers), so the sums do not depend on the order of
the instances (float sums do, by a few ulps, which could flip a tie)."""


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
    avoid: dict[int, frozenset[str]] = field(default_factory=dict)
    """Per slot: nodes not to use (where it failed)."""


@dataclass(frozen=True)
class Decision:
    placements: tuple[tuple[int, str, dict[str, int]], ...]
    """(slot, node, ports) for every slot placed, by slot."""
    unplaced: tuple[int, ...]
    no_fit: tuple[str, ...]
    """Why the first unplaced slot fits on no node, most frequent reason first, e.g.
    "3 nodes lack memory: need 512 MiB, the best has 300 MiB free"; () if all placed."""


def holds(instance: InstanceRecord) -> bool:
    """Whether the instance holds its cpu, memory and ports on its node: while it is
    desired `run`, or has not yet reached a terminal state (it may still be running)."""
    return instance.desired == "run" or instance.state not in TERMINAL


@overload
def reserved(instances: Iterable[InstanceRecord]) -> dict[str, Resources]: ...
@overload
def reserved(instances: Iterable[InstanceRecord], node: str) -> Resources: ...
def reserved(
    instances: Iterable[InstanceRecord], node: str | None = None
) -> dict[str, Resources] | Resources:
    """Cpu and memory held per node (nodes holding nothing are left out), or on `node`."""
    cpu: Counter[str] = Counter()
    memory: Counter[str] = Counter()
    for i in instances:
        if holds(i) and (node is None or i.node == node):
            cpu[i.node] += _micro(i.cpu)
            memory[i.node] += i.memory
    if node is not None:
        return Resources(cpu=cpu[node] / _MICRO, memory=memory[node])
    return {n: Resources(cpu=cpu[n] / _MICRO, memory=memory[n]) for n in cpu}


def schedule(nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], ask: Ask) -> Decision:
    """Place `ask.slots` on the best feasible nodes, slot by slot (lowest slot first)."""
    if not ask.slots:
        return Decision(placements=(), unplaced=(), no_fit=())
    board = _Board(nodes, instances, ask.spec)
    placements: list[tuple[int, str, dict[str, int]]] = []
    unplaced: list[int] = []
    no_fit: tuple[str, ...] = ()
    exhausted = False
    for slot in sorted(set(ask.slots)):
        avoid = ask.avoid.get(slot, frozenset())
        # Once a slot with nothing to avoid fits nowhere, no later slot can fit either:
        # placing only ever takes resources away.
        node = None if exhausted else board.pick(avoid)
        if node is None:
            if not unplaced:
                no_fit = board.explain(avoid)
            unplaced.append(slot)
            exhausted = exhausted or not avoid
            continue
        placements.append((slot, node.id, board.place(node)))
    return Decision(placements=tuple(placements), unplaced=tuple(unplaced), no_fit=no_fit)


# --- feasibility ----------------------------------------------------------------------

# Why a node cannot take the instance: (check, detail), the checks in the order they run.
# A node counts under the first one it fails.
_STATUS, _INELIGIBLE, _DRIVER, _CONSTRAINT, _DISTINCT, _AVOIDED, _CPU, _MEMORY, _PORTS = range(9)
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
        if isinstance(c.value, str):
            # `in: "eu, us"` reads as a list, as people write it.
            values = [v.strip() for v in c.value.split(",")] if "in" in c.op else [c.value]
        else:
            values = list(c.value)
        shown = values[0] if len(values) == 1 and "in" not in c.op else f"({', '.join(values)})"
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


class _Node:
    """A node that passed the static checks, with what is free on it, kept up to date as
    this call places instances."""

    __slots__ = (
        "cpu_cap",
        "cpu_used",
        "group",
        "held",
        "id",
        "memory_cap",
        "memory_used",
        "next_port",
        "own",
        "port_hi",
        "port_lo",
        "ports_free",
        "version",
    )

    def __init__(self, view: NodeView, group: str) -> None:
        r = view.record
        self.id = r.node
        self.group = group
        """Its value of the spread label ("" for all nodes without spread)."""
        self.cpu_cap = _micro(r.cpu)
        self.memory_cap = r.memory
        self.cpu_used = 0
        self.memory_used = 0
        self.port_lo = r.port_lo
        self.port_hi = r.port_hi
        self.held: set[int] = set()
        """Ports held by instances on it (some may lie outside its range)."""
        self.ports_free = max(0, r.port_hi - r.port_lo + 1) if r.port_lo > 0 else 0
        self.next_port = r.port_lo
        """No port below this one is free (ports are only taken during a call)."""
        self.own = 0
        """Instances of the job desired `run` on it."""
        self.version = 0
        """Bumped on every placement: heap entries of older versions are stale."""

    def hold(self, instance: InstanceRecord) -> None:
        self.cpu_used += _micro(instance.cpu)
        self.memory_used += instance.memory
        for port in instance.ports.values():
            if self.port_lo <= port <= self.port_hi and port not in self.held:
                self.ports_free -= 1
            self.held.add(port)

    def take_port(self) -> int:
        port = self.next_port
        while port in self.held:
            port += 1
        self.held.add(port)
        self.ports_free -= 1
        self.next_port = port + 1
        return port


class _Board:
    """The nodes during one schedule() call: which can take the job, in which order."""

    def __init__(
        self, nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], spec: JobSpec
    ) -> None:
        self.spec = spec
        self.cpu = _micro(spec.resources.cpu)
        self.memory = spec.resources.memory
        self.ports = tuple(dict.fromkeys(spec.ports))
        self.rules = [_Rule.of(c) for c in spec.constraints]
        self.spread = spec.spread
        self.statics: list[_Why] = []
        """The static reason of every node that failed a static check."""
        self.any_alive = False
        self.nodes: dict[str, _Node] = {}
        group_of: dict[str, str] = {}
        for view in nodes:
            nid = view.record.node
            group_of[nid] = view.labels.get(self.spread, "") if self.spread else ""
            self.any_alive = self.any_alive or view.record.status == "alive"
            why = _static_why(view, spec, self.rules)
            if why is None:
                self.nodes[nid] = _Node(view, group_of[nid])
            else:
                self.statics.append(why)
        self.counts: Counter[str] = Counter()
        """Instances of the job desired `run` per spread value (only with spread)."""
        for i in instances:
            mine = i.job == spec.name and i.desired == "run"
            if mine and self.spread and i.node in group_of:
                self.counts[group_of[i.node]] += 1
            n = self.nodes.get(i.node)
            if n is None:
                continue
            if holds(i):
                n.hold(i)
            if mine:
                n.own += 1
        # Per spread value, a heap of (-score, node id, version); and a heap of the values
        # by (instances of the job, then their best node's key). Entries are checked when
        # they reach the top (lazy deletion): a node that no longer fits, a stale score, or
        # a value whose count or best node changed are dropped or pushed again.
        self.heaps: dict[str, list[tuple[float, str, int]]] = {}
        for n in self.nodes.values():
            if self.fits(n):
                self.heaps.setdefault(n.group, []).append((-self.score(n), n.id, 0))
        self.groups: list[tuple[int, float, str, str]] = []
        for group, heap in self.heaps.items():
            heapq.heapify(heap)
            self.push_group(group)

    # The per-node checks that placements change: they only ever fail more as a call goes.
    def dynamic_why(self, n: _Node, avoid: frozenset[str]) -> _Why | None:
        if self.spec.distinct_nodes and n.own:
            return (_DISTINCT, "")
        if n.id in avoid:
            return (_AVOIDED, "")
        if n.cpu_used + self.cpu > n.cpu_cap:
            return (_CPU, "")
        if n.memory_used + self.memory > n.memory_cap:
            return (_MEMORY, "")
        if n.ports_free < len(self.ports):
            return (_PORTS, "")
        return None

    def fits(self, n: _Node) -> bool:
        return self.dynamic_why(n, frozenset()) is None

    def score(self, n: _Node) -> float:
        """How full the node is after placing one more instance (bin-pack: fuller is better)."""
        cpu = (n.cpu_used + self.cpu) / (n.cpu_cap or 1)
        memory = (n.memory_used + self.memory) / (n.memory_cap or 1)
        return (cpu + memory) / 2

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
        best = self.top(group)
        if best is not None:
            heapq.heappush(self.groups, (self.counts[group], *best, group))

    def pick(self, avoid: frozenset[str]) -> _Node | None:
        """The best node for one more instance, None if none fits."""
        if avoid:
            # Rare (a replacement after failures): scan rather than disturb the heaps.
            fitting = [n for n in self.nodes.values() if self.dynamic_why(n, avoid) is None]
            return min(fitting, key=self.key, default=None)
        while self.groups:
            entry = self.groups[0]
            group = entry[3]
            best = self.top(group)
            if best is None:
                heapq.heappop(self.groups)
            elif entry != (current := (self.counts[group], *best, group)):
                heapq.heapreplace(self.groups, current)
            else:
                return self.nodes[best[1]]
        return None

    def place(self, n: _Node) -> dict[str, int]:
        """Reserve one instance's cpu, memory and ports on `n`; returns its ports."""
        n.cpu_used += self.cpu
        n.memory_used += self.memory
        ports = {name: n.take_port() for name in self.ports}
        n.own += 1
        n.version += 1
        if self.spread:
            self.counts[n.group] += 1
        heapq.heappush(self.heaps[n.group], (-self.score(n), n.id, n.version))
        self.push_group(n.group)
        return ports

    # --- the no-fit explanation -----------------------------------------------------------

    def explain(self, avoid: frozenset[str]) -> tuple[str, ...]:
        """Why no node fits now: per reason, how many nodes (most first) and, for the
        resources, how close the best of them came."""
        counts = Counter(self.statics)
        best: dict[int, int] = {}
        for n in self.nodes.values():
            why = self.dynamic_why(n, avoid)
            if why is None:
                continue  # cannot happen when pick() found nothing; not a reason anyway
            counts[why] += 1
            free = {
                _CPU: n.cpu_cap - n.cpu_used,
                _MEMORY: n.memory_cap - n.memory_used,
                _PORTS: n.ports_free,
            }.get(why[0])
            if free is not None:
                best[why[0]] = max(best.get(why[0], free), free)
        total = len(self.statics) + len(self.nodes)
        order = sorted(counts.items(), key=lambda item: (-item[1], *item[0]))
        lines = [self.line(why, count, total, best.get(why[0], 0)) for why, count in order]
        return tuple(([] if self.any_alive else ["0 nodes are alive"]) + lines)

    def line(self, why: _Why, count: int, total: int, best: int) -> str:
        check, detail = why
        nodes = _plural(count, "node")
        one = count == 1
        best_of = "it has" if one else "the best has"
        if check == _STATUS:
            verb = {"left": "has" if one else "have", "unknown": "has" if one else "have"}
            state = {"left": "left", "unknown": "no status yet"}.get(str(detail), detail)
            return f"{nodes} {verb.get(str(detail), 'is' if one else 'are')} {state}"
        if check == _INELIGIBLE:
            return f"{nodes} {'is' if one else 'are'} ineligible"
        if check == _DRIVER:
            if count == total:
                return f"no node has driver {detail}"
            return f"{nodes} {'lacks' if one else 'lack'} driver {detail}"
        if check == _CONSTRAINT:
            return f"{nodes} {'fails' if one else 'fail'} constraint {self.rules[int(detail)].text}"
        if check == _DISTINCT:
            runs = "runs" if one else "run"
            return f"{nodes} already {runs} an instance of {self.spec.name} (distinct_nodes)"
        if check == _AVOIDED:
            return f"{nodes} {'was' if one else 'were'} avoided (the instance failed there)"
        lack = "lacks" if one else "lack"
        if check == _CPU:
            need, free = _cores(self.cpu, up=True), _cores(best, up=False)
            return f"{nodes} {lack} cpu: need {need}, {best_of} {free} free"
        if check == _MEMORY:
            need, free = _size(self.memory, up=True), _size(best, up=False)
            return f"{nodes} {lack} memory: need {need}, {best_of} {free} free"
        need_ports = _plural(len(self.ports), "port")
        return f"{nodes} {lack} ports: need {need_ports}, {best_of} {max(best, 0)} free"


# --- units ------------------------------------------------------------------------------


def _micro(cores: float) -> int:
    return round(cores * _MICRO)


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


def _cores(micro: int, up: bool) -> str:
    text = _decimal(max(micro, 0), _MICRO, 3, up)
    return f"{text} core" if text == "1" else f"{text} cores"


def _size(n: int, up: bool) -> str:
    n = max(n, 0)
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{_decimal(n, scale, 1, up)} {unit}"
    return f"{n} B"
