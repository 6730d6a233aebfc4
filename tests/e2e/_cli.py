"""The real CLI, run as a user would (a subprocess, no standard input), for the e2e tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from colony.shared.statedir import StateDir


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
