"""The real CLI, run as a user would (a subprocess, no standard input), for the e2e tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from colony.shared.bus import connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.statedir import StateDir

T = TypeVar("T")


def colony(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "colony.cli", *args, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"colony {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def status(state: Path) -> dict[str, dict]:
    """Node name -> its entry in `colony status --json`."""
    nodes = json.loads(colony("status", "--json", state=state).stdout)["nodes"]
    return {node["name"]: node for node in nodes}


def up(state: Path, base_port: int, nodes: int = 3) -> None:
    colony("up", "--nodes", str(nodes), "--detach", "--base-port", str(base_port), state=state)


def down(state: Path) -> None:
    """`colony down`, then kill whatever it left running (a test must never leak a cluster)."""
    colony("down", state=state, check=False)
    for node in StateDir(state).nodes():
        for record in node.records():
            if record.group_alive():
                os.killpg(record.pgid, signal.SIGKILL)


def on_cluster(state: Path, ask: Callable[[Cluster], Awaitable[T]]) -> T:
    """Run `ask` with a cluster client connected to the servers of the cluster in `state`
    (its voters found by discovery), e.g. ``on_cluster(state, lambda c: c.wait_leader(30))``."""

    async def run() -> T:
        urls = [url for node in StateDir(state).nodes() if (url := node.nats_url())]
        bus = await connect(NatsSettings(servers=urls), "test-cluster")
        try:
            return await ask(Cluster(bus))
        finally:
            await bus.close()

    return asyncio.run(run())
