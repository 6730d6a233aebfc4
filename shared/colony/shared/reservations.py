"""What instances hold on their nodes: the one rule the scheduler places by and
`colony status` shows (cpu and memory reserved per node)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import overload

from colony.shared.messages import InstanceRecord, Resources

TERMINAL = frozenset({"exited", "failed", "lost"})
"""Instance states in which an instance runs nothing (it still holds its node's resources
while it is desired `run`: its node may restart it)."""

MICRO = 1_000_000
"""Cpu is summed in micro-cores (integers), so a sum does not depend on the order of the
instances (float sums do, by a few ulps, which could flip a scheduler's tie)."""


def micro(cores: float) -> int:
    return round(cores * MICRO)


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
            cpu[i.node] += micro(i.cpu)
            memory[i.node] += i.memory
    if node is not None:
        return Resources(cpu=cpu[node] / MICRO, memory=memory[node])
    return {n: Resources(cpu=cpu[n] / MICRO, memory=memory[n]) for n in cpu}
