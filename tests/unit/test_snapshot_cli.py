"""`colony snapshot inspect` and `restore`, and `colony up`'s cluster id and restore
checks: real snapshot files of a real SQLite database, a real state dir, no cluster.
Bad snapshots are refused with one clear line and nothing changed."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from colony.cli import snapshot as cli_snapshot
from colony.cli.local.plan import plan
from colony.cli.local.write import cluster_id, write_nodes
from colony.cli.main import main
from colony.shared import snapshot
from colony.shared.config import load
from colony.shared.signing import read_secret
from colony.shared.statedir import (
    RESTORE_PENDING,
    RESTORE_SNAPSHOT,
    SUPERVISOR,
    ProcessRecord,
    StateDir,
)

OTHER = "fedcba987654321"


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def database(path: Path, cluster: str, index: int = 42, term: int = 3, schema: int = 0) -> Path:
    """A small management database: its meta rows and a few objects."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER)")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE kv (id TEXT PRIMARY KEY, value TEXT)")
    db.executemany("INSERT INTO jobs VALUES (?)", [("web",), ("db",)])
    db.execute("INSERT INTO kv VALUES ('colour', 'blue')")
    meta = {snapshot.APPLIED: index, snapshot.APPLIED_TERM: term}
    meta[snapshot.CLUSTER] = snapshot.cluster_number(cluster)
    db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    db.execute(f"PRAGMA user_version = {schema or snapshot.SCHEMA}")
    db.close()
    return path


def snapshot_file(tmp_path: Path, cluster: str, name: str = "s.snapshot", **facts) -> Path:
    out = tmp_path / name
    snapshot.make_from_file(
        database(tmp_path / f"{name}.db", cluster, **facts), out, made_by="node-1", origin="save"
    )
    return out


@pytest.fixture
def state(tmp_path) -> StateDir:
    """A stopped 3-node cluster's state dir, as `colony up` writes it."""
    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(3, 20000))
    return state


def restore_files(state: StateDir) -> list[Path]:
    return sorted(state.path.glob(f"nodes/*/consensus/{RESTORE_SNAPSHOT}"))


# --- the cluster id in every node.toml ----------------------------------------------------


def test_colony_up_names_the_cluster_id_the_secret_gives_in_every_config(state):
    expected = snapshot.cluster_id_of(read_secret(state.path / "cluster.secret"))
    ids = {load(n.config_file, env={}).consensus.cluster_id for n in state.nodes()}
    assert ids == {expected}
    assert cluster_id(state) == expected
    write_nodes(state, plan(3, 20000))  # written again: the same id
    assert {load(n.config_file, env={}).consensus.cluster_id for n in state.nodes()} == ids


def test_a_cluster_restored_into_a_new_state_dir_keeps_the_snapshot_s_id(tmp_path):
    state = StateDir(tmp_path / "new")
    write_nodes(state, plan(3, 20000), OTHER)
    assert {load(n.config_file, env={}).consensus.cluster_id for n in state.nodes()} == {OTHER}
    write_nodes(state, plan(3, 20000))  # and keeps it at every later `colony up`
    assert cluster_id(state) == OTHER


def test_a_new_state_dir_has_no_cluster_id_yet(tmp_path):
    assert cluster_id(StateDir(tmp_path / "none")) == ""


# --- inspect ------------------------------------------------------------------------------


def test_inspect_shows_the_header_and_objects_per_kind(capsys, tmp_path):
    path = snapshot_file(tmp_path, OTHER, index=1234, term=7)
    code, out, err = colony(capsys, "snapshot", "inspect", str(path))
    assert (code, err) == (0, "")
    assert "checksum verified" in out
    assert OTHER in out and "1234 (term 7)" in out and "by node-1, origin save" in out
    assert [line.split() for line in out.splitlines() if line.startswith(("jobs", "kv"))] == [
        ["jobs", "2"],
        ["kv", "1"],
    ]
    code, out, _ = colony(capsys, "snapshot", "inspect", str(path), "--json")
    shown = json.loads(out)
    assert shown["checksum"] == "ok" and shown["index"] == 1234 and shown["term"] == 7
    assert shown["counts"] == {"jobs": 2, "kv": 1} and shown["cluster"] == OTHER


def test_inspect_of_a_newer_colony_s_snapshot_shows_it_with_a_warning(capsys, tmp_path):
    path = snapshot_file(tmp_path, OTHER, index=5, schema=snapshot.SCHEMA + 1)
    code, out, err = colony(capsys, "snapshot", "inspect", str(path))
    assert (code, err) == (0, "")
    assert "checksum verified" in out and "5 (term 3)" in out
    (warning,) = [line for line in out.splitlines() if line.startswith("warning:")]
    assert "made by a newer version of Colony" in warning and "upgrade Colony" in warning
    code, out, _ = colony(capsys, "snapshot", "inspect", str(path), "--json")
    shown = json.loads(out)
    assert "newer version" in shown["warning"] and shown["schema"] == snapshot.SCHEMA + 1
    fits = snapshot_file(tmp_path, OTHER, name="fits.snapshot")
    code, out, _ = colony(capsys, "snapshot", "inspect", str(fits))
    assert "warning" not in out


def damaged(path: Path, how: str) -> Path:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "corrupted":
        data[-10] ^= 0xFF
    elif how == "not a snapshot":
        data = bytearray(b"hello, world\n" * 10)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("how", "said"),
    [
        ("truncated", "is truncated or damaged"),
        ("corrupted", "is corrupted: its database's checksum"),
        ("not a snapshot", "is not a Colony snapshot"),
    ],
)
def test_inspect_refuses_a_bad_file_with_one_clear_line(capsys, tmp_path, how, said):
    path = damaged(snapshot_file(tmp_path, OTHER), how)
    code, out, err = colony(capsys, "snapshot", "inspect", str(path))
    assert code == 1 and out == ""
    assert err.startswith(f"error: {path} {said}") and "hint:" in err


def test_inspect_of_a_missing_file_says_so(capsys, tmp_path):
    code, _, err = colony(capsys, "snapshot", "inspect", str(tmp_path / "nope.snapshot"))
    assert code == 1 and "nope.snapshot: cannot read it" in err


# --- restore ------------------------------------------------------------------------------


def test_restore_delivers_the_file_to_every_node_of_a_stopped_cluster(capsys, state, tmp_path):
    path = snapshot_file(tmp_path, cluster_id(state), index=99)
    code, out, err = colony(
        capsys, "snapshot", "restore", str(path), "--state-dir", str(state.path)
    )
    assert (code, err) == (0, "")
    delivered = restore_files(state)
    assert [p.parent.parent.name for p in delivered] == ["node-1", "node-2", "node-3"]
    assert all(p.read_bytes() == path.read_bytes() for p in delivered)
    assert "index 99" in out and "delivered to 3 nodes" in out and "next `colony up" in out
    assert "each voter replaces its database" in out and "standing by deletes it" in out
    assert not list(state.path.glob("nodes/*/consensus/.restore-*"))  # no leftovers


@pytest.mark.parametrize(
    ("facts", "said"),
    [
        ({"cluster": OTHER}, "is from another cluster"),
        ({"schema": snapshot.SCHEMA + 1}, "was made by a newer version of Colony"),
    ],
)
def test_restore_refuses_a_snapshot_that_does_not_fit_and_changes_nothing(
    capsys, state, tmp_path, facts, said
):
    facts = {"cluster": cluster_id(state), **facts}
    path = snapshot_file(tmp_path, **facts)
    code, _, err = colony(capsys, "snapshot", "restore", str(path), "--state-dir", str(state.path))
    assert code == 1 and said in err and "nothing was changed" in err
    assert restore_files(state) == []


def test_restore_into_configs_naming_no_cluster_id_checks_the_one_the_secret_gives(
    capsys, state, tmp_path
):
    """A state dir written before node.toml named cluster_id: its secret tells."""
    own = cluster_id(state)
    for node_dir in state.nodes():
        text = node_dir.config_file.read_text()
        node_dir.config_file.write_text(re.sub(r"(?m)^cluster_id = .*\n", "", text))
        assert load(node_dir.config_file, env={}).consensus.cluster_id == ""
    assert own == snapshot.cluster_id_of(read_secret(state.path / "cluster.secret"))
    path = snapshot_file(tmp_path, OTHER, name="other.snapshot")
    code, _, err = colony(capsys, "snapshot", "restore", str(path), "--state-dir", str(state.path))
    assert code == 1 and f"is from another cluster ({OTHER}; this one is {own})" in err
    assert restore_files(state) == []
    path = snapshot_file(tmp_path, own, name="own.snapshot")
    code, _, err = colony(capsys, "snapshot", "restore", str(path), "--state-dir", str(state.path))
    assert (code, err) == (0, "") and len(restore_files(state)) == 3


def test_restore_refuses_a_damaged_snapshot_and_changes_nothing(capsys, state, tmp_path):
    path = damaged(snapshot_file(tmp_path, cluster_id(state)), "corrupted")
    code, _, err = colony(capsys, "snapshot", "restore", str(path), "--state-dir", str(state.path))
    assert code == 1 and "is corrupted" in err
    assert restore_files(state) == []


@pytest.fixture
def running(state):
    """node-2's supervisor runs (a real process, recorded as `colony up` records it)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        node = state.node("node-2")
        node.write_record(ProcessRecord.of(SUPERVISOR, process.pid, process.args))
        yield state
    finally:
        process.kill()
        process.wait()


def test_restore_into_a_running_cluster_is_refused(capsys, running, tmp_path):
    path = snapshot_file(tmp_path, cluster_id(running))
    code, _, err = colony(
        capsys, "snapshot", "restore", str(path), "--state-dir", str(running.path)
    )
    assert code == 1
    assert f"error: {cli_snapshot.REFUSED_RUNNING} (node-2 of" in err
    assert restore_files(running) == []


def test_up_restore_into_a_running_cluster_is_refused(capsys, running, tmp_path):
    path = snapshot_file(tmp_path, cluster_id(running))
    code, _, err = colony(capsys, "up", "--restore", str(path), "--state-dir", str(running.path))
    assert code == 1 and cli_snapshot.REFUSED_RUNNING in err
    assert restore_files(running) == []


def test_restore_needs_a_cluster(capsys, tmp_path):
    path = snapshot_file(tmp_path, OTHER)
    empty = tmp_path / "empty"
    code, _, err = colony(capsys, "snapshot", "restore", str(path), "--state-dir", str(empty))
    assert code == 1 and "no cluster in" in err and "colony up --restore" in err


# --- colony up --restore: what is checked before anything is written -------------------------


def test_up_restore_file_into_a_new_state_dir_adopts_the_snapshot_s_cluster(tmp_path):
    path = snapshot_file(tmp_path, OTHER, index=7)
    restore = cli_snapshot.UpRestore.checked(StateDir(tmp_path / "new"), str(path))
    assert restore.cluster == OTHER and restore.header.index == 7
    assert not (tmp_path / "new").exists()  # checking writes nothing


def test_up_restore_file_into_a_stopped_cluster_keeps_its_id_and_delivers(state, tmp_path):
    path = snapshot_file(tmp_path, cluster_id(state))
    restore = cli_snapshot.UpRestore.checked(state, str(path))
    assert restore.cluster == ""  # the state dir's own
    restore.prepare(state.nodes())
    assert len(restore_files(state)) == 3
    assert restore.once_nats(state, state.nodes()) is None  # nothing to fetch


def test_up_restore_refuses_another_cluster_s_snapshot_for_an_existing_state_dir(
    capsys, state, tmp_path
):
    path = snapshot_file(tmp_path, OTHER)
    with pytest.raises(SystemExit):
        cli_snapshot.UpRestore.checked(state, str(path))
    assert "is from another cluster" in capsys.readouterr().err


def test_up_restore_replica_marks_every_node_pending_and_abandons_cleanly(state):
    restore = cli_snapshot.UpRestore.checked(state, cli_snapshot.REPLICA)
    restore.prepare(state.nodes())
    pending = sorted(state.path.glob(f"nodes/*/consensus/{RESTORE_PENDING}"))
    assert len(pending) == 3
    assert restore.once_nats(state, state.nodes()) is not None
    restore.abandon(state.nodes())
    assert not any(p.exists() for p in pending)


def test_up_restore_replica_needs_an_existing_cluster(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli_snapshot.UpRestore.checked(StateDir(tmp_path / "new"), cli_snapshot.REPLICA)
    assert "no replicas to restore from" in capsys.readouterr().err
