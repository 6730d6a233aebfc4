"""The scheduler: which nodes a job's instances go to. Pure: no I/O, no clock.

Work in progress: the API is final, the placement logic is being built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import overload

from colony.shared.jobspec import JobSpec
from colony.shared.messages import InstanceRecord, NodeRecord, Resources

TERMINAL = frozenset({"exited", "failed", "lost"})
"""Instance states that hold nothing any more (unless the instance is still desired run)."""


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it: its record and its labels (the `labels` kind)."""

    record: NodeRecord
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ask:
    """Place these slots of one job version."""

    spec: JobSpec
    version: int
    slots: tuple[int, ...]
    avoid: dict[int, frozenset[str]] = field(default_factory=dict)
    """Per slot: nodes not to use (where it failed)."""


@dataclass(frozen=True)
class Decision:
    placements: tuple[tuple[int, str, dict[str, int]], ...]
    """(slot, node, ports) for every slot placed, in the ask's slot order."""
    unplaced: tuple[int, ...]
    no_fit: tuple[str, ...]
    """Why the unplaced slots fit nowhere, most frequent reason first."""


def holds(instance: InstanceRecord) -> bool:
    """Whether the instance holds its cpu, memory and ports on its node."""
    return instance.desired == "run" or instance.state not in TERMINAL


@overload
def reserved(instances: Iterable[InstanceRecord]) -> dict[str, Resources]: ...
@overload
def reserved(instances: Iterable[InstanceRecord], node: str) -> Resources: ...
def reserved(
    instances: Iterable[InstanceRecord], node: str | None = None
) -> dict[str, Resources] | Resources:
    """Cpu and memory held per node (or on `node` alone) by the instances that hold them."""
    cpu: dict[str, float] = {}
    memory: dict[str, int] = {}
    for i in instances:
        if holds(i) and (node is None or i.node == node):
            cpu[i.node] = cpu.get(i.node, 0.0) + i.cpu
            memory[i.node] = memory.get(i.node, 0) + i.memory
    if node is not None:
        return Resources(cpu=cpu.get(node, 0.0), memory=memory.get(node, 0))
    return {n: Resources(cpu=cpu[n], memory=memory[n]) for n in cpu}


def schedule(nodes: Sequence[NodeView], instances: Sequence[InstanceRecord], ask: Ask) -> Decision:
    """Place `ask.slots` on the best feasible nodes, slot by slot."""
    # Placeholder until the full scheduler lands: nothing placed.
    return Decision(placements=(), unplaced=tuple(ask.slots), no_fit=("scheduler not built yet",))
