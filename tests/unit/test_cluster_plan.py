"""`colony up`'s pure parts: the port layout, taken ports, and the node files it writes."""

import socket
import tomllib
from pathlib import Path

import pytest

from colony.cli.local import start
from colony.cli.local.plan import ClusterError, NodePlan, Shape, choose, plan, span
from colony.cli.local.ports import ephemeral_ports, free_base_port, ports_taken
from colony.cli.local.write import write_nodes
from colony.cli.main import main
from colony.shared import natsd
from colony.shared.config import load
from colony.shared.statedir import StateDir

BASE = 20000


def test_port_layout():
    nodes = plan(3, BASE)
    assert [n.name for n in nodes] == ["node-1", "node-2", "node-3"]
    assert nodes[1].ports == {
        "client": 20001,
        "routes": 22001,
        "nats-http": 24001,
        "metrics": 25001,
    }
    assert nodes[1].server == natsd.ServerPorts(20001, 22001, 24001)
    assert nodes[1].instances == range(26100, 26200)
    every_port = [port for n in nodes for port in [*n.ports.values(), *n.instances]]
    assert len(set(every_port)) == len(every_port)
    assert max(every_port) == BASE + span(3) - 1


def test_instance_ports_come_from_the_cluster_s_base_port():
    # Two clusters on one host (one on the default ports, one moved with --base-port)
    # once gave their instances the same ports (20000, ...): every instance of the
    # second exited at once, and its ports answered from the first.
    default, moved = plan(3), plan(5, 15222)
    assert default[0].instances == range(10222, 10322)
    assert moved[0].instances == range(21222, 21322)
    ports = [{p for n in c for p in [*n.ports.values(), *n.instances]} for c in (default, moved)]
    assert not ports[0] & ports[1]


def test_default_base_port():
    [node] = plan(1)
    assert node.ports["client"] == 4222
    assert node.ports["metrics"] == 9222


def test_port_range_edges_are_allowed():
    assert plan(1, 1024)[0].ports["client"] == 1024
    assert plan(1, 59436)[0].instances[-1] == 65535
    assert plan(100, 1024)[-1].instances[-1] == 1024 + 16000 - 1


@pytest.mark.parametrize("nodes", [0, -1, 101])
def test_bad_node_count(nodes):
    with pytest.raises(ClusterError) as err:
        plan(nodes, BASE)
    assert str(err.value) == f"--nodes must be between 1 and 100, not {nodes}"


@pytest.mark.parametrize(
    ("nodes", "base", "top"), [(1, 1023, 7122), (1, 59437, 65536), (2, 59337, 65536)]
)
def test_bad_base_port(nodes, base, top):
    with pytest.raises(ClusterError) as err:
        plan(nodes, base)
    assert str(err.value) == (
        f"--base-port {base} puts ports outside 1024-65535 (the highest would be {top})"
    )


def test_ports_taken_names_a_port_in_use():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        nodes = [NodePlan("node-1", {"client": port})]
        assert ports_taken(nodes) == [f"127.0.0.1:{port} (node-1 client)"]


def test_ports_taken_names_an_instance_port_in_use_when_asked():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # (its range is the held port alone: any neighbour may be some other program's)
        nodes = [NodePlan("node-1", {}, instances=range(port, port + 1))]
        assert ports_taken(nodes) == []  # a node's own ports only, by default
        assert ports_taken(nodes, instances=True) == [f"127.0.0.1:{port} (node-1 instances)"]


def test_a_free_layout_stays_out_of_the_ephemeral_range():
    # An outgoing connection may take any ephemeral port at any moment (a test's layout
    # once lost its metrics port that way).
    first_ephemeral, _ = ephemeral_ports()
    for _ in range(20):
        nodes = plan(5, free_base_port(5))
        ports = [p for node in nodes for p in [*node.ports.values(), *node.instances]]
        assert max(ports) < first_ephemeral


def test_write_nodes_writes_each_nodes_files(tmp_path):
    state = StateDir(tmp_path / "state")
    node_dirs = write_nodes(state, plan(2, BASE))
    assert [n.name for n in node_dirs] == ["node-1", "node-2"]
    assert tomllib.loads(state.cluster_file.read_text()) == {
        "nodes": 2,
        "base_port": BASE,
        "voters": 1,
    }

    second = node_dirs[1]
    config = load(second.config_file, env={})
    assert config.node.id == second.node_id
    assert config.node.name == "node-2"
    assert config.node.local_nodes == 2
    assert config.node.dir == str(second.path.resolve())
    assert config.nats.servers == ["nats://127.0.0.1:20001"]
    assert config.monitor.http_port == 25001
    assert (config.agent.port_lo, config.agent.port_hi) == (26100, 26199)
    first = load(node_dirs[0].config_file, env={})
    assert config.consensus.voters == first.consensus.voters == [node_dirs[0].node_id]
    assert first.node.roles == ["voter"] and config.node.roles == []
    secret = Path(config.consensus.secret_file)
    assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) == 64

    conf = second.nats_conf.read_text()
    assert f'server_name: "{second.node_id}"' in conf
    assert "listen: 127.0.0.1:20001" in conf
    assert "http: 127.0.0.1:24001" in conf
    assert "routes: [nats://127.0.0.1:22000, nats://127.0.0.1:22001]" in conf


def test_write_nodes_keeps_node_ids(tmp_path):
    state = StateDir(tmp_path)
    ids = [n.node_id for n in write_nodes(state, plan(2, BASE))]
    again = write_nodes(state, plan(2, BASE))
    assert [n.node_id for n in again] == ids
    assert [load(n.config_file, env={}).node.id for n in again] == ids


def test_write_nodes_keeps_a_hand_edited_capacity(tmp_path):
    state = StateDir(tmp_path)
    [node_dir, _] = write_nodes(state, plan(2, BASE))
    text = node_dir.config_file.read_text()
    assert "capacity_cpu" not in text
    node_dir.config_file.write_text(text.replace("[node]\n", "[node]\ncapacity_cpu = 1.5\n", 1))
    write_nodes(state, plan(2, BASE + 100))  # re-planned ports are rewritten, the edit kept
    config = load(node_dir.config_file, env={})
    assert config.node.capacity_cpu == 1.5
    assert config.nats.servers == [f"nats://127.0.0.1:{BASE + 100}"]


def test_write_nodes_gives_an_existing_node_the_instance_ports_of_its_layout(tmp_path):
    # a state dir written when every cluster's instances started at 20000
    state = StateDir(tmp_path)
    [node_dir, _] = write_nodes(state, plan(2, 15222))
    text = node_dir.config_file.read_text()
    old = text.replace("port_lo = 21222", "port_lo = 20000").replace("21321", "20999")
    assert "port_lo = 20000" in old and "port_hi = 20999" in old
    node_dir.config_file.write_text(old)
    write_nodes(state, plan(2, 15222))
    config = load(node_dir.config_file, env={})
    assert (config.agent.port_lo, config.agent.port_hi) == (21222, 21321)


def test_an_invalid_hand_edited_config_names_the_file(tmp_path):
    state = StateDir(tmp_path)
    [node_dir] = write_nodes(state, plan(1, BASE))
    node_dir.config_file.write_text("[node]\ncapacity_cpu = -1\n")
    with pytest.raises(ClusterError) as err:
        write_nodes(state, plan(1, BASE))
    message = str(err.value)
    assert message.startswith("invalid config node.capacity_cpu = -1")
    assert f"(in {node_dir.config_file})" in message
    assert message.endswith("(fix it, or delete the file to start over)")


def test_voters_are_the_first_nodes_and_an_odd_count_of_at_most_the_nodes():
    assert [p.voter for p in plan(5, BASE)] == [True, True, True, False, False]
    assert [p.voter for p in plan(2, BASE)] == [True, False]
    assert all(p.voter for p in plan(5, BASE, voters=5))
    for nodes, voters in ((5, 2), (3, 5), (5, 4), (5, 0)):
        with pytest.raises(ClusterError, match="--voters must be 1, 3 or 5"):
            plan(nodes, BASE, voters)


def shape(plans: list[NodePlan]) -> tuple[int, int, int]:
    return len(plans), plans[0].ports["client"], sum(p.voter for p in plans)


def test_up_plans_as_asked_else_as_last_time_else_the_defaults():
    assert shape(choose(None, None, None, previous=None)) == (3, 4222, 3)
    assert shape(choose(None, None, None, previous=None, existing=4)) == (4, 4222, 3)
    last = Shape(nodes=5, base_port=BASE, voters=5)
    assert shape(choose(None, None, None, last)) == (5, BASE, 5)
    assert shape(choose(None, BASE + 7, 3, last)) == (5, BASE + 7, 3)
    # last time's 5 voters do not fit 3 nodes: the default for 3 nodes then
    assert shape(choose(3, None, None, last)) == (3, BASE, 3)
    # a cluster.toml from before voters existed
    assert shape(choose(None, None, None, Shape(nodes=2, base_port=BASE))) == (2, BASE, 1)
    with pytest.raises(ClusterError, match="--voters must be 1, 3 or 5"):
        choose(None, None, 4, last)


def test_up_without_the_bootstrapper_says_so_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(start, "SUPERVISOR_MODULE", "colony.no_such_service")
    with pytest.raises(SystemExit) as exited:
        main(["up", "--state-dir", str(tmp_path / "state")])
    assert exited.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "-m colony.no_such_service`, but colony.no_such_service is not installed" in err
    assert not (tmp_path / "state").exists()
