"""End to end: a real 1-node cluster's files are its owner's only, and the CLI meets
hostile input with a one-line error (never a traceback) and writes nothing.

A state dir the CLI may not read or write is made by taking the permission
away (chmod) and running the CLI without the capabilities that let root
ignore permissions (setpriv), so the error is the kernel's own, as a user
who does not own the state dir would get it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _cli import colony, down, status, up

from colony.cli.local.plan import plan
from colony.cli.local.ports import free_base_port
from colony.cli.local.write import write_nodes
from colony.shared.statedir import StateDir

pytestmark = pytest.mark.e2e

ROOT = os.geteuid() == 0
BOUND_BY_PERMISSIONS = (
    ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"] if ROOT else []
)
"""A prefix running a command without root's power to ignore file permissions."""
VERBS = [
    ["up", "--detach"],
    ["down"],
    ["status"],
    ["members"],
    ["kv", "get", "k"],
    ["kv", "put", "k", "v"],
    ["capacity", "node-1", "--cpu", "2"],
    ["logs"],
]


@pytest.fixture(scope="module")
def cluster():
    """A running 1-node cluster shared by the module's tests; stopped whatever happens."""
    home = Path(tempfile.mkdtemp(prefix="colony-hostile-"))
    home.chmod(0o755)  # others may pass through, as through a home directory: not into state/
    state = home / "state"
    try:
        up(state, free_base_port(1), nodes=1)
        yield state
    finally:
        down(state)
        shutil.rmtree(home, ignore_errors=True)


def run(*args: str | bytes, state: Path, bound: bool = False):
    """The CLI, with arguments that may be raw bytes; `bound` by file permissions, even as root."""
    argv = [sys.executable, "-m", "colony.cli", *args, "--state-dir", str(state)]
    return subprocess.run(
        [*(BOUND_BY_PERMISSIONS if bound else []), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, result
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def test_every_file_of_the_cluster_is_its_owners_only(cluster):
    colony("kv", "put", "colour", "blue", state=cluster)  # the database and journal have rows
    assert stat.S_IMODE(cluster.stat().st_mode) == 0o700
    shared = []
    for folder, dirs, files in os.walk(cluster):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            mode = os.lstat(name).st_mode
            if stat.S_IMODE(mode) & 0o077 and not stat.S_ISLNK(mode):
                shared.append(f"{oct(stat.S_IMODE(mode))} {name}")
    assert shared == []
    made = {p.name for p in cluster.rglob("*")}
    for expected in ("management.db", "raft.journal", "node.toml", "monitor.log", "nats.conf"):
        assert expected in made  # the files the rule is for were there to check


@pytest.fixture
def unreadable(tmp_path):
    """A state dir holding a cluster's files that this user may not read."""
    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(1, 21000))
    state.path.chmod(0)
    yield state.path
    state.path.chmod(0o700)


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v[:2]))
def test_a_state_dir_that_cannot_be_read_is_named_with_why(unreadable, verb):
    error = one_line_error(run(*verb, state=unreadable, bound=True))
    assert error == f"cannot read state dir {unreadable}: permission denied"
    unreadable.chmod(0o700)
    assert sorted(p.name for p in unreadable.iterdir()) == [
        "cluster.secret",
        "cluster.toml",
        "nodes",
    ]


def test_up_where_it_may_not_write_says_so_and_writes_nothing(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        error = one_line_error(run("up", "--nodes", "1", "--detach", state=locked, bound=True))
        assert error == f"cannot write to state dir {locked}: permission denied"
        below = locked / "state"
        error = one_line_error(run("up", "--nodes", "1", "--detach", state=below, bound=True))
        assert error == f"cannot create folder {below}: permission denied"
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_kv_put_of_a_value_that_is_not_utf8_is_refused_and_writes_nothing(cluster):
    error = one_line_error(run("kv", "put", "latin1", b"caf\xe9", state=cluster))
    assert error == "value is not valid UTF-8 (byte 0xe9 at character 3); keys and values are text"
    assert one_line_error(run("kv", "get", "latin1", state=cluster)) == "'latin1' is not set"


def test_kv_keys_and_values_that_look_like_markup_are_kept_as_they_are(cluster):
    assert one_line_error(run("kv", "get", "[/]", state=cluster)) == (
        "key '[/]' is not valid: keys must match ^[A-Za-z0-9_-]{1,64}$"
    )
    assert one_line_error(run("kv", "get", "unset", state=cluster)) == "'unset' is not set"
    value = "[/][bold]:smile: " + "x" * 300
    put = colony("kv", "put", "markup", value, state=cluster)
    assert put.stdout.startswith("markup: version 1 (log index ")
    got = colony("kv", "get", "markup", state=cluster)
    assert got.stdout == value + "\n"  # as it was, on one line however long


def test_a_capacity_no_machine_has_is_refused_and_the_node_stays_up(cluster):
    config = StateDir(cluster).node("node-1").config_file
    before = config.read_text()
    for value in ("inf", "nan", "1e300"):
        refused = run("capacity", "node-1", "--cpu", value, state=cluster)
        assert refused.returncode == 2
        assert f"must be a finite number of cores > 0 and at most 65536, got '{value}'" in (
            refused.stderr
        )
    assert config.read_text() == before
    assert status(cluster)["node-1"]["state"] == "up"


def test_status_and_members_for_people_run_through_the_text_paths(cluster):
    shown = colony("status", state=cluster).stdout
    assert "raft: leader node-1" in shown and "manager: node-1" in shown
    assert "membership as seen by node-1" in colony("members", state=cluster).stdout
