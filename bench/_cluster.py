"""A throwaway local cluster for benchmarks: the real `colony` CLI, a temp state dir, free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from colony.cli.local.ports import free_base_port
from colony.shared.statedir import ProcessRecord, StateDir

_script = Path(sys.executable).with_name("colony")
COLONY = [str(_script)] if _script.exists() else [sys.executable, "-m", "colony.cli"]


def colony(verb: str, state: StateDir, *args: str) -> None:
    """Run `colony <verb>` on the state dir; raise with its output if it fails."""
    argv = [*COLONY, verb, "--state-dir", str(state.path), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if done.returncode:
        output = (done.stderr or done.stdout).strip()
        raise RuntimeError(f"`colony {verb}` exited {done.returncode}: {output}")


@dataclass
class Cluster:
    state: StateDir
    base_port: int
    up_seconds: float = 0.0
    left_running: list[str] = field(default_factory=list)
    """Processes still alive after `colony down` (then killed here), described."""

    def records(self) -> list[ProcessRecord]:
        return [r for node in self.state.nodes() for r in node.records()]

    def restart(self) -> float:
        """`colony down`, then `colony up` again on the same state; return the up's seconds."""
        colony("down", self.state)
        started = time.monotonic()
        colony("up", self.state, "--detach")
        return time.monotonic() - started


@contextlib.contextmanager
def local_cluster(nodes: int = 3, voters: int | None = None) -> Iterator[Cluster]:
    """`colony up --detach` a cluster, timed; always `colony down` it and check nothing is left.

    `voters` None: `colony up`'s default. After the block, `left_running` names what
    `colony down` missed.
    """
    with tempfile.TemporaryDirectory(prefix="colony-bench-") as tmp:
        running = Cluster(StateDir(Path(tmp) / "state"), free_base_port(nodes))
        try:
            started = time.monotonic()
            shape = ["--nodes", str(nodes), "--base-port", str(running.base_port)]
            if voters is not None:
                shape += ["--voters", str(voters)]
            colony("up", running.state, "--detach", *shape)
            running.up_seconds = time.monotonic() - started
            yield running
        finally:
            seen = running.records()
            try:
                colony("down", running.state)
            finally:
                running.left_running = stragglers(seen, tmp)


def stragglers(records: list[ProcessRecord], marker: str) -> list[str]:
    """Kill and describe what is still running: the recorded processes (by process
    group) and any other process whose command line names `marker` (the state dir)."""
    recorded = [r for r in records if r.group_alive()]
    left = [f"{r.name} (pid {r.pid})" for r in recorded]
    for process in psutil.process_iter(["cmdline", "status"]):
        argv = process.info["cmdline"] or []
        stray = process.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in argv)
        if stray and process.pid not in {r.pid for r in recorded}:
            left.append(f"{' '.join(argv)} (pid {process.pid}, not recorded)")
            with contextlib.suppress(psutil.Error):
                process.kill()
    for record in recorded:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pgid, signal.SIGKILL)
    return left
