"""Memory and cpu limits for a process instance: cgroups where the agent may make them,
else rlimits.

- cgroup v1 (a mount per controller, e.g. /sys/fs/cgroup/memory): the instance gets
  ``<root>/memory/colony/<id>`` (memory.limit_in_bytes) and ``<root>/cpu/colony/<id>``
  (cpu.cfs_quota_us over cpu.cfs_period_us).
- cgroup v2 (one unified tree, <root>/cgroup.controllers): ``<root>/colony/<id>`` with
  memory.max and cpu.max, the controllers enabled on the way down.
- neither (no cgroupfs, or not allowed to make a cgroup): memory through RLIMIT_AS
  (address space, which counts more than resident memory), cpu not enforced.

`plan` decides and makes the cgroups; the wrapper that starts the workload joins them
(writes its pid to each cgroup.procs) before the workload runs, so no allocation
escapes the limit. What was applied is said in plain words (`Limits.summary`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000
"""The kernel refuses a cfs quota under 1 ms."""


class LimitError(Exception):
    """A limit the host cannot honour: the message says which and why."""


@dataclass(frozen=True)
class Limits:
    """What applies to one instance."""

    join: tuple[str, ...] = ()
    """cgroup.procs files the wrapper writes its pid to."""
    cgroups: tuple[str, ...] = ()
    """cgroup folders made (removed when the instance is gone)."""
    address_space: int = 0
    """RLIMIT_AS in bytes (0: none)."""
    said: tuple[str, ...] = field(default=())

    @property
    def summary(self) -> str:
        return "; ".join(self.said)


def mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


def cgroup_version(root: Path) -> int:
    """1 or 2: how the host mounts cgroups at `root`; 0: not at all."""
    if (root / "memory").is_dir() or (root / "cpu").is_dir():
        return 1  # v1, or hybrid (v1 controllers beside an empty unified tree)
    if (root / "cgroup.controllers").is_file():
        return 2
    return 0


def folders(root: Path, parent: str, instance: str) -> list[Path]:
    """Every cgroup folder an instance may have (v1's memory and cpu, v2's one)."""
    return [root / c / parent / instance for c in ("memory", "cpu")] + [root / parent / instance]


def plan(root: Path, parent: str, instance: str, cpu: float, memory: int) -> Limits:
    """Make the instance's cgroups and set its limits; raise LimitError if a limit the
    host offers cannot be set. Without usable cgroups: rlimits."""
    version = cgroup_version(root)
    made = folders(root, parent, instance)
    try:
        if version == 1:
            limits = _v1(root, parent, instance, cpu, memory)
        elif version == 2:
            limits = _v2(root, parent, instance, cpu, memory)
        else:
            limits = None
    except LimitError:
        remove([str(folder) for folder in made])
        raise
    if limits is not None:
        return limits
    said = []
    if memory:
        said.append(f"memory limit {mib(memory)} via RLIMIT_AS (no usable cgroup)")
    if cpu:
        said.append(f"cpu {cpu:g} cores not enforced (no usable cgroup)")
    return Limits(address_space=memory, said=tuple(said))


def _make(folder: Path) -> bool:
    """Make a cgroup (and its parents); False if this host does not let us."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (PermissionError, FileNotFoundError, NotADirectoryError, OSError):
        return False
    return True


def _write(path: Path, value: str, what: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        why = e.strerror or str(e)
        raise LimitError(f"{what} cannot be set: writing {value!r} to {path}: {why}") from None


def _v1(root: Path, parent: str, instance: str, cpu: float, memory: int) -> Limits | None:
    folders = {c: root / c / parent / instance for c in ("memory", "cpu")}
    wanted = [c for c, amount in (("memory", memory), ("cpu", cpu)) if amount]
    if not wanted or not all(_make(folders[c]) for c in wanted):
        remove([str(folders[c]) for c in wanted])
        return None
    said = []
    if memory:
        what = f"memory limit {mib(memory)} via cgroup v1"
        _write(folders["memory"] / "memory.limit_in_bytes", str(memory), what)
        said.append(what)
    if cpu:
        what = f"cpu limit {cpu:g} cores via cgroup v1"
        quota = max(int(cpu * CFS_PERIOD_US), MIN_QUOTA_US)
        _write(folders["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US), what)
        _write(folders["cpu"] / "cpu.cfs_quota_us", str(quota), what)
        said.append(what)
    made = tuple(str(folders[c]) for c in wanted)
    return Limits(join=tuple(f"{f}/cgroup.procs" for f in made), cgroups=made, said=tuple(said))


def _v2(root: Path, parent: str, instance: str, cpu: float, memory: int) -> Limits | None:
    if not memory and not cpu:
        return None
    folder = root / parent / instance
    if not _make(folder):
        return None
    controllers = " ".join(f"+{c}" for c, amount in (("memory", memory), ("cpu", cpu)) if amount)
    # a child cgroup gets a controller only if every ancestor enables it for its children
    for above in (root, root / parent):
        _write(above / "cgroup.subtree_control", controllers, f"enabling {controllers}")
    said = []
    if memory:
        what = f"memory limit {mib(memory)} via cgroup v2"
        _write(folder / "memory.max", str(memory), what)
        said.append(what)
    if cpu:
        what = f"cpu limit {cpu:g} cores via cgroup v2"
        quota = max(int(cpu * CFS_PERIOD_US), MIN_QUOTA_US)
        _write(folder / "cpu.max", f"{quota} {CFS_PERIOD_US}", what)
        said.append(what)
    return Limits(join=(f"{folder}/cgroup.procs",), cgroups=(str(folder),), said=tuple(said))


def members(cgroups: list[str] | tuple[str, ...]) -> set[int]:
    """Every process in the instance's cgroups (even one that left its process group)."""
    pids: set[int] = set()
    for folder in cgroups:
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
    return pids


def out_of_memory(cgroups: list[str] | tuple[str, ...]) -> bool:
    """True if the kernel killed a process of these cgroups for going over the limit."""
    for folder in cgroups:
        for name in ("memory.oom_control", "memory.events"):  # v1, v2
            with contextlib.suppress(OSError):
                for line in Path(folder, name).read_text().splitlines():
                    key, _, count = line.partition(" ")
                    if key == "oom_kill" and count.strip() not in ("", "0"):
                        return True
    return False


def remove(cgroups: list[str] | tuple[str, ...]) -> None:
    """Remove the instance's cgroups (empty ones only: the kernel refuses a busy one)."""
    for folder in cgroups:
        with contextlib.suppress(OSError):  # gone already, or a killed process not reaped yet
            os.rmdir(folder)
