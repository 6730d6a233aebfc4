"""`colony capacity` on a written state dir (no cluster needed), and the monitor's re-read
of a changed config file: good edits apply, bad ones are refused and change nothing."""

import argparse
import json
import logging

import pytest

from colony.cli.capacity import cores, memory_size
from colony.cli.local.plan import plan
from colony.cli.local.write import write_nodes
from colony.cli.main import main
from colony.monitor.service import DeclaredCapacity
from colony.shared.config import load
from colony.shared.messages import Resources
from colony.shared.statedir import StateDir


@pytest.fixture
def state(tmp_path):
    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(2, 21000))
    return state


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, " ".join(captured.err.split())


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8GiB", 8 * 2**30),
        ("512M", 512 * 2**20),
        ("2g", 2 * 2**30),
        ("1.5GB", 3 * 2**29),
        ("4096", 4096),
    ],
)
def test_memory_sizes_people_write(text, size):
    assert memory_size(text) == size


@pytest.mark.parametrize("text", ["lots", "0", "-1GiB", "8PiB", ""])
def test_a_memory_size_that_is_not_one_says_what_it_should_look_like(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not a memory size like 8GiB"):
        memory_size(text)


@pytest.mark.parametrize("text", ["0.5b", "0.1", "1025TiB", "99999999999999999999T"])
def test_a_memory_size_below_a_byte_or_beyond_any_machine_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="from 1 byte to 1024TiB, got"):
        memory_size(text)


@pytest.mark.parametrize(
    "text", ["0", "-2", "many", "nan", "inf", "-inf", "Infinity", "1e999", "1e300", "65537"]
)
def test_cores_must_be_a_finite_number_above_zero_and_in_reason(text):
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        cores(text)
    assert str(refused.value) == (
        f"must be a finite number of cores > 0 and at most 65536, got {text!r}"
    )


@pytest.mark.parametrize("text", ["0.5", "4", "65536"])
def test_cores_people_write(text):
    assert cores(text) == float(text)


def test_capacity_is_written_to_the_node_config_and_reset(state, capsys):
    args = ("--state-dir", str(state.path))
    code, out, _ = colony(capsys, "capacity", "node-2", "--cpu", "4", "--memory", "8GiB", *args)
    assert code == 0 and "node-2 now declares 4 cores and 8.0 GiB" in out
    node = load(state.node("node-2").config_file, env={}).node
    assert (node.capacity_cpu, node.capacity_memory) == (4.0, 8 * 2**30)
    code, out, _ = colony(capsys, "capacity", node.id, "--json", *args)  # by id, unchanged
    assert code == 0 and json.loads(out) == {
        "node": node.id,
        "name": "node-2",
        "declared": {"cpu": 4.0, "memory": 8 * 2**30},
        "changed": False,
    }
    code, out, _ = colony(capsys, "capacity", "node-2", "--reset", *args)
    assert code == 0 and "its share of the host's cores" in out
    assert load(state.node("node-2").config_file, env={}).node.capacity_cpu is None


def test_capacity_refuses_an_unknown_node_or_a_bad_size_and_writes_nothing(state, capsys):
    args = ("--state-dir", str(state.path))
    before = state.node("node-1").config_file.read_text()
    code, _, err = colony(capsys, "capacity", "node-9", "--cpu", "2", *args)
    assert code == 1 and f"no node 'node-9' in {state.path}/ (its nodes: node-1, node-2)" in err
    code, _, err = colony(capsys, "capacity", "node-1", "--memory", "lots", *args)
    assert code == 2 and "'lots' is not a memory size like 8GiB" in err
    assert state.node("node-1").config_file.read_text() == before


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--cpu", "inf"),
        ("--cpu", "nan"),
        ("--cpu", "-1"),
        ("--cpu", "1e300"),
        ("--memory", "99999T"),
    ],
)
def test_capacity_refuses_what_no_machine_has_and_writes_nothing(state, capsys, flag, value):
    before = state.node("node-1").config_file.read_text()
    code, _, err = colony(capsys, "capacity", "node-1", flag, value, "--state-dir", str(state.path))
    assert code == 2 and f"argument {flag}: must be a" in err and repr(value) in err
    assert state.node("node-1").config_file.read_text() == before
    assert sorted(p.name for p in state.node("node-1").path.iterdir()) == [
        "logs",
        "nats",
        "nats.conf",
        "node-id",
        "node.toml",
        "run",
    ]


def test_the_monitor_rereads_a_changed_capacity_and_keeps_it_through_a_bad_edit(state, caplog):
    node_dir = state.node("node-1")
    capacity = DeclaredCapacity(
        node_dir.config_file, Resources(cpu=1.0, memory=2**30), logging.getLogger("test")
    )
    assert capacity.read() == Resources(cpu=1.0, memory=2**30)  # unchanged file: as it was
    text = node_dir.config_file.read_text()
    node_dir.config_file.write_text(
        text.replace("[node]\n", "[node]\ncapacity_cpu = 6.0\ncapacity_memory = 1024\n", 1)
    )
    assert capacity.read() == Resources(cpu=6.0, memory=1024)
    node_dir.config_file.write_text(text + "\nnot toml at all [\n")
    with caplog.at_level(logging.WARNING):
        assert capacity.read() == Resources(cpu=6.0, memory=1024)
    assert "config not reloaded; capacity unchanged" in caplog.text
