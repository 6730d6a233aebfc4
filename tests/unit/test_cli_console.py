"""`colony console`'s own part: finding the cluster (servers, voters, secret) as the other
verbs do, and what it says when it cannot. The console itself is replaced by recorders
(tests/console and tests/e2e/test_console.py run the real one); the NATS servers are
real."""

from __future__ import annotations

import sys
import types

import pytest

from colony.cli.local.plan import plan
from colony.cli.local.ports import free_base_port
from colony.cli.local.write import voters_of, write_nodes
from colony.cli.main import main
from colony.harness.processes import NatsServer
from colony.shared import natsd
from colony.shared.signing import read_secret
from colony.shared.statedir import StateDir


class Recorded:
    """What the verb handed the console."""

    def __init__(self) -> None:
        self.feed: dict = {}
        self.management = None
        self.ran = False


@pytest.fixture
def console(monkeypatch):
    """The console's modules replaced by recorders of what the verb builds and runs."""
    seen = Recorded()

    class BusFeed:
        def __init__(self, servers, voters, secret, history=1000):
            seen.feed = {"servers": servers, "voters": voters, "secret": secret, "history": history}

    class ClusterActions:
        def __init__(self, management):
            seen.management = management

    async def run_console(feed, actions):
        assert isinstance(feed, BusFeed) and isinstance(actions, ClusterActions)
        seen.ran = True

    for name, attrs in {
        "feed": {"BusFeed": BusFeed},
        "actions": {"ClusterActions": ClusterActions},
        "app": {"run_console": run_console},
    }.items():
        module = types.ModuleType(f"colony.console.{name}")
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return seen


def colony(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.fixture
def local(tmp_path):
    """A written one-node state dir whose node's NATS server really runs (nothing else)."""
    state = StateDir(tmp_path / "state")
    base = free_base_port(1)
    write_nodes(state, plan(1, base))
    ports = natsd.ServerPorts(base, *natsd.free_ports(2))
    server = NatsServer(tmp_path / "nats", natsd.ServerConfig("s1", ports, tmp_path / "s1"))
    server.start()
    try:
        yield state, server
    finally:
        server.stop()


def test_help_teaches_with_examples_and_the_keys(capsys):
    code, out, _ = colony(capsys, "console", "--help")
    assert code == 0
    assert "colony console --server nats://" in out
    assert "? every key" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--server", "http://x:4222"], "is not a NATS URL"),
        (["--history", "-1"], "must be a number of changes"),
        (["--history", "many"], "must be a number of changes"),
        (["--timeout", "0"], "must be a finite number of seconds"),
    ],
)
def test_bad_arguments_are_refused_by_the_parser(capsys, argv, says):
    code, _, err = colony(capsys, "console", *argv)
    assert code == 2 and says in err


def test_the_local_cluster_s_servers_voters_and_secret(console, local, capsys):
    state, server = local
    code, _, err = colony(capsys, "console", "--state-dir", str(state.path), "--history", "50")
    assert code == 0, err
    assert console.ran
    assert console.feed == {
        "servers": [server.url],
        "voters": voters_of(state),
        "secret": read_secret(state.path / "cluster.secret"),
        "history": 50,
    }
    assert console.management.voters == voters_of(state)
    assert "warning" not in err


def test_through_a_server_voters_are_asked_of_the_cluster(console, nats_server, tmp_path, capsys):
    # a bare nats-server: no consensus service answers, so no voter is found
    code, _, err = colony(
        capsys, "console", "--server", nats_server.url, "--state-dir", str(tmp_path)
    )
    assert code == 1 and not console.ran
    assert "warning: changes are not verified" in err  # no secret in that state dir
    assert "error: no Raft voters found" in err


def test_no_cluster_in_the_state_dir(console, tmp_path, capsys):
    code, _, err = colony(capsys, "console", "--state-dir", str(tmp_path / "none"))
    assert code == 1 and not console.ran
    assert "error:" in err and "Traceback" not in err


def test_a_cluster_that_is_not_running(console, tmp_path, capsys):
    state = StateDir(tmp_path / "state")
    write_nodes(state, plan(1, free_base_port(1)))
    code, _, err = colony(capsys, "console", "--state-dir", str(state.path), "--timeout", "1")
    assert code == 1 and not console.ran
    assert "error: no nats server answers at nats://127.0.0.1:" in err
    assert "within 1 s" in err


def test_without_the_console_installed(monkeypatch, capsys):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    code, _, err = colony(capsys, "console")
    assert code == 1
    assert "error: the console is not installed" in err
