"""The state directory: stable node ids, process records, node order and lookup."""

import os

import pytest

from colony.shared import subjects
from colony.shared.statedir import NodeDir, ProcessRecord, StateDir, StateDirError, natural_key

IMPOSSIBLE_PID = 2**22 + 1
"""Above Linux's PID_MAX_LIMIT: no process can have it."""


@pytest.fixture
def node(tmp_path) -> NodeDir:
    node_dir = NodeDir(tmp_path / "node-1")
    node_dir.create()
    return node_dir


def record(name: str, pid: int = 1234) -> ProcessRecord:
    return ProcessRecord(name, pid, pid, 1_700_000_000.25, ["prog", name])


def test_create_makes_the_folders(node):
    for folder in (node.path, node.nats_store, node.run, node.logs):
        assert folder.is_dir()
    assert node.name == "node-1"
    assert node.config_file.name == "node.toml"
    assert node.log("monitor") == node.logs / "monitor.log"


def test_node_id_is_made_once_and_stable(tmp_path):
    first = NodeDir(tmp_path / "node-3")
    node_id = first.node_id  # made on first use, folder included
    assert node_id.startswith("node-3-")
    assert subjects.token(node_id) == node_id
    assert first.node_id == node_id
    assert NodeDir(tmp_path / "node-3").node_id == node_id
    assert (tmp_path / "node-3" / "node-id").read_text().strip() == node_id


def test_node_ids_differ_between_nodes(tmp_path):
    assert NodeDir(tmp_path / "a" / "node-1").node_id != NodeDir(tmp_path / "b" / "node-1").node_id


def test_records_round_trip(node):
    nats, supervisor = record("nats"), record("supervisor", 99)
    node.write_record(supervisor)
    node.write_record(nats)
    assert node.records() == [nats, supervisor]  # by file name
    assert node.record("supervisor") == supervisor
    assert node.record("monitor") is None
    node.remove_record("nats")
    assert node.records() == [supervisor]
    node.remove_record("nats")  # already gone: no error
    assert not list(node.run.glob("*.tmp"))


def test_write_record_replaces_the_previous_one(node):
    node.write_record(record("nats", 1))
    node.write_record(record("nats", 2))
    assert node.records() == [record("nats", 2)]


def test_records_of_a_node_without_a_run_folder(tmp_path):
    assert NodeDir(tmp_path / "never-created").records() == []


def test_corrupt_record_files_are_skipped(node):
    good = record("nats")
    node.write_record(good)
    (node.run / "half.json").write_text('{"name": "half", "pid"')
    (node.run / "wrong.json").write_text('{"name": 1}')
    assert node.records() == [good]


def test_current_process_is_alive():
    me = ProcessRecord.of("x", os.getpid(), ["python"])
    assert me.pid == os.getpid()
    assert me.pgid == os.getpgid(0)
    assert me.alive()
    assert me.group_alive()


def test_a_reused_pid_is_not_alive():
    me = ProcessRecord.of("x", os.getpid(), ["python"])
    someone_else = ProcessRecord(me.name, me.pid, me.pgid, me.started - 1.0, me.argv)
    assert not someone_else.alive()
    assert not someone_else.group_alive()  # and its group is not ours either


def test_a_pid_that_does_not_exist_is_not_alive():
    assert not record("ghost", IMPOSSIBLE_PID).alive()


def test_alive_survives_a_round_trip_through_the_record_file(node):
    node.write_record(ProcessRecord.of("me", os.getpid(), ["python"]))
    assert node.record("me").alive()


def test_nodes_in_natural_order(tmp_path):
    state = StateDir(tmp_path)
    for name in ("node-10", "node-2", "node-1"):
        state.node(name).create()
    (state.nodes_dir / "stray-file").write_text("not a node")
    assert [n.name for n in state.nodes()] == ["node-1", "node-2", "node-10"]


def test_no_nodes_without_a_nodes_folder(tmp_path):
    assert StateDir(tmp_path / "empty").nodes() == []


def test_find_by_name_or_id(tmp_path):
    state = StateDir(tmp_path)
    for name in ("node-1", "node-2"):
        state.node(name).create()
    node_id = state.node("node-2").node_id
    assert state.find("node-2").path == state.node("node-2").path
    assert state.find(node_id).name == "node-2"
    assert state.find("node-3") is None


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("node-2", ("node", 2)),
        ("node-10", ("node", 10)),
        ("edge", ("edge", 0)),
        ("a-b", ("a-b", 0)),
    ],
)
def test_natural_key(name, key):
    assert natural_key(name) == key


def modes(path) -> dict[str, int]:
    """Every path under `path` (itself included) -> its permission bits."""
    found = {".": path.stat().st_mode & 0o7777}
    for p in path.rglob("*"):
        found[str(p.relative_to(path))] = p.lstat().st_mode & 0o7777
    return found


def test_create_makes_a_state_dir_its_owners_only(tmp_path):
    old = os.umask(0o022)  # a usual umask: the folders are private all the same
    try:
        state = StateDir(tmp_path / "new" / "state")
        state.create()
        state.node("node-1").create()
    finally:
        os.umask(old)
    assert set(modes(state.path).values()) == {0o700}
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755  # a parent is the user's to set


def test_create_tightens_a_state_dir_made_before_files_were_private(tmp_path):
    state = StateDir(tmp_path / "state")
    node = state.node("node-1")
    node.create()
    for path in (state.path, state.nodes_dir, node.path, node.logs):
        path.chmod(0o755)
    (node.logs / "monitor.log").write_text("x")
    (node.logs / "monitor.log").chmod(0o644)
    (node.path / "run.sh").write_text("#!/bin/sh\n")
    (node.path / "run.sh").chmod(0o755)
    state.cluster_file.write_text("nodes = 1\n")
    state.cluster_file.chmod(0o644)
    (node.path / "elsewhere").symlink_to(tmp_path)  # never followed
    tmp_path.chmod(0o755)
    state.create()
    assert modes(state.path) == {
        ".": 0o700,
        "cluster.toml": 0o600,
        "nodes": 0o700,
        "nodes/node-1": 0o700,
        "nodes/node-1/elsewhere": 0o777,
        "nodes/node-1/logs": 0o700,
        "nodes/node-1/logs/monitor.log": 0o600,
        "nodes/node-1/nats": 0o700,
        "nodes/node-1/run": 0o700,
        "nodes/node-1/run.sh": 0o700,
    }
    assert tmp_path.stat().st_mode & 0o777 == 0o755


def test_create_leaves_a_shared_folder_open_but_makes_colonys_part_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "someone-elses.txt").write_text("x")  # `--state-dir .` in a project, say
    state = StateDir(shared)
    state.create()
    state.cluster_file.write_text("nodes = 1\n")
    state.cluster_file.chmod(0o644)
    state.create()
    assert shared.stat().st_mode & 0o777 == 0o755
    assert state.nodes_dir.stat().st_mode & 0o777 == 0o700
    assert state.cluster_file.stat().st_mode & 0o777 == 0o600


def test_a_state_dir_that_cannot_be_used_says_why(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StateDirError, match=f"^state dir {afile} is a file, not a directory$"):
        StateDir(afile).nodes()
    under = afile / "state"
    with pytest.raises(StateDirError, match=f"^cannot read state dir {under}: not a directory$"):
        StateDir(under).nodes()
    with pytest.raises(StateDirError, match=f"^cannot create folder {afile}: a file is in the way"):
        StateDir(afile).create()
    with pytest.raises(StateDirError, match=f"^cannot create folder {under}: not a directory$"):
        StateDir(under).create()
    assert StateDir(tmp_path / "missing").nodes() == []
