"""Starting and stopping a local cluster's node supervisors.

Each node's supervisor is the bootstrapper's program, run as
`python -m colony.bootstrapper --node-dir DIR` with this interpreter: the CLI
starts it, it does not import it. It records itself in the node's `run/`
folder at once, and so does every process it starts, which is how `stop`
finds them all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time

import psutil

from colony.cli.local.plan import ClusterError
from colony.shared.statedir import SUPERVISOR, NodeDir, ProcessRecord, StateDir

SUPERVISOR_MODULE = "colony.bootstrapper"


def check_installed() -> None:
    """Fail before anything is written if this interpreter cannot run the supervisor."""
    # find_spec locates the package without importing (running) it
    if importlib.util.find_spec(SUPERVISOR_MODULE) is None:
        raise ClusterError(
            f"`colony up` runs each node's supervisor as `{sys.executable} -m "
            f"{SUPERVISOR_MODULE}`, but {SUPERVISOR_MODULE} is not installed there "
            "(install colony-bootstrapper, e.g. `pip install 'colony-cli[local]'`)"
        )


def start_supervisor(node_dir: NodeDir) -> ProcessRecord:
    """Start the node's supervisor, detached from this terminal and process group."""
    argv = [sys.executable, "-m", SUPERVISOR_MODULE, "--node-dir", str(node_dir.path)]
    with open(node_dir.log(SUPERVISOR), "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = ProcessRecord.of(SUPERVISOR, process.pid, argv)
    if record is None:
        raise ClusterError(f"{node_dir.name}'s supervisor exited at once; see {out.name}")
    node_dir.write_record(record)  # at once, so `colony down` finds it even mid-start
    return record


def running(state: StateDir) -> list[NodeDir]:
    """Nodes of the state dir whose supervisor is alive."""
    return [n for n in state.nodes() if (r := n.record(SUPERVISOR)) is not None and r.alive()]


def leftovers(state: StateDir, instances: bool = True) -> list[ProcessRecord]:
    """Recorded processes of any node still running (and its instances, with `instances`:
    an instance that outlived its node is adopted by the node's next agent, so only
    `colony down` needs to see it)."""
    return [
        r
        for n in state.nodes()
        for r in [*n.records(), *(n.instance_records() if instances else ())]
        if r.group_alive()
    ]


def stop(
    state: StateDir, timeout: float = 10.0, nodes: list[NodeDir] | None = None
) -> list[ProcessRecord]:
    """Stop every recorded process of every node (or of `nodes`); return those that were running.

    Supervisors get SIGTERM and stop their children in order (the agent stops its
    instances); whatever is still recorded and alive after that (a supervisor or an
    agent killed with -9 leaves its children behind) is killed by process group.
    """
    nodes = state.nodes() if nodes is None else nodes
    was_running = [r for n in nodes for r in n.records() if r.group_alive()]
    supervisors = [r for r in was_running if r.name == SUPERVISOR and r.alive()]
    for record in supervisors:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(r.alive() for r in supervisors) and time.monotonic() < deadline:
        time.sleep(0.05)
    for node_dir in nodes:
        for record in node_dir.records():
            if record.group_alive():
                _kill_group(record)
            node_dir.remove_record(record.name)
        # instances an agent could not stop (it was killed): their records stay, for
        # the agent that adopts what still runs
        for record in node_dir.instance_records():
            if record.group_alive():
                _kill_group(record)
    return was_running


def _kill_group(record: ProcessRecord) -> None:
    try:
        os.killpg(record.pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    with contextlib.suppress(psutil.Error, psutil.TimeoutExpired):
        psutil.Process(record.pid).wait(timeout=2)
