"""The agent's pure decisions: an instance's env and args, what to do about an instance,
and when to restart one by its job's policy; and its check of an instance's ports."""

from __future__ import annotations

import socket
import time

import msgspec
import pytest

from colony.bootstrapper.agent import state
from colony.bootstrapper.agent.service import ports_in_use
from colony.shared import natsd
from colony.shared.jobspec import HealthCheck, JobSpec, RestartPolicy, Task
from colony.shared.management import Listing
from colony.shared.messages import Change, InstanceRecord, QueryReply, Stored


def record(**fields) -> InstanceRecord:
    base = dict(id="web-0-abcd", job="web", version=1, slot=0, node="n1", cpu=0.1, memory=1)
    return InstanceRecord(**{**base, **fields})


def test_the_env_has_the_spec_s_env_its_ports_and_colony_s_names_which_win():
    spec = JobSpec(
        name="web",
        task=Task(command="x", env={"MODE": "prod", "COLONY_NODE": "spoofed"}),
        ports=["http", "admin"],
    )
    env = state.instance_env(
        record(ports={"admin": 20001, "http": 20000}), spec, "n1", "10.0.0.5", {"PATH": "/bin"}
    )
    assert env == {
        "PATH": "/bin",
        "MODE": "prod",
        "PORT": "20000",  # the spec's first port
        "PORT_HTTP": "20000",
        "PORT_ADMIN": "20001",
        "COLONY_INSTANCE": "web-0-abcd",
        "COLONY_JOB": "web",
        "COLONY_NODE": "n1",
        "COLONY_ADDRESS": "10.0.0.5",
    }


def test_args_name_env_values_and_unknown_names_stay():
    env = {"PORT": "20000", "PORT_HTTP": "20000"}
    args = ["--port=${PORT}", "${PORT_HTTP}:${PORT}", "${NOPE}", "$PORT", "plain"]
    assert state.substitute(args, env) == [
        "--port=20000", "20000:20000", "${NOPE}", "$PORT", "plain"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("placed", "wanted"),
    [
        (record(), "run"),
        (record(desired="stop"), "stop"),
        (None, "forget"),
    ],
)
def test_what_a_node_does_about_an_instance(placed, wanted):
    assert state.wanted(placed) == wanted


def page(index: int, *records: InstanceRecord) -> QueryReply:
    objects = [Stored(r.id, 1, msgspec.to_builtins(r)) for r in records]
    return QueryReply(key="", value=None, version=0, index=index, objects=objects)


def change(log_index: int, placed: InstanceRecord, version: int = 2) -> Change:
    detail = msgspec.to_builtins(placed)
    return Change(
        index=log_index, kind="instance", id=placed.id, version=version, log_index=log_index,
        detail=detail,
    )  # fmt: skip


def test_assignments_take_a_change_newer_than_the_page_its_instance_was_read_on():
    """Pages are read at different log indexes: a change to an instance of the first page
    committed before the last page was read is still news (it is not in the first)."""
    a, b = record(id="a-0-0001"), record(id="b-0-0002")
    assigned = state.Assignments("n1")
    assigned.load(Listing((page(10, a), page(20, b))))
    assert assigned.records == {"a-0-0001": a, "b-0-0002": b}
    stopping = msgspec.structs.replace(a, desired="stop")
    assert assigned.apply(change(15, stopping)) is True  # after page 1, before page 2
    assert assigned.get("a-0-0001") == stopping
    assert assigned.apply(change(18, msgspec.structs.replace(b, desired="stop"))) is False
    assert assigned.get("b-0-0002") == b  # page 2 had it already


def test_assignments_of_instances_no_page_held_and_of_other_nodes():
    assigned = state.Assignments("n1")
    assigned.load(Listing((page(10, record(id="a-0-0001")), page(20))))
    new = record(id="c-0-0003")
    assert assigned.apply(change(9, new)) is False  # before every page: it was gone
    assert assigned.apply(change(11, new)) is True  # a placement after the first page
    moved = record(id="a-0-0001", node="n2")
    assert assigned.apply(change(12, moved)) is True and assigned.get("a-0-0001") is None
    assert assigned.apply(change(13, record(id="z-0-0009", node="n2"))) is False
    assert assigned.apply(change(14, new, version=0)) is True  # removed
    assert assigned.records == {}


def test_restarts_back_off_and_run_out_within_the_interval():
    policy = RestartPolicy(attempts=3, interval=60, delay=1, backoff=2, max_delay=3)
    assert state.restart_delay(policy, [], now=100) == 1
    assert state.restart_delay(policy, [99], now=100) == 2
    assert state.restart_delay(policy, [98, 99], now=100) == 3  # 4, capped
    assert state.restart_delay(policy, [97, 98, 99], now=100) is None
    # restarts older than the interval no longer count
    assert state.restart_delay(policy, [10, 20, 99], now=100) == 2
    assert state.restart_delay(RestartPolicy(attempts=0), [], now=0) is None


def test_the_reason_of_an_instance_whose_ports_are_taken():
    assert state.ports_taken([20000]) == (
        "port 20000 is already in use on this host (another process holds it)"
    )
    assert state.ports_taken([20000, 20002]) == (
        "ports 20000, 20002 are already in use on this host (other processes hold them)"
    )


@pytest.mark.parametrize("holder", ["127.0.0.1", "0.0.0.0"])
def test_ports_in_use_finds_a_listener_on_the_address_or_on_every_address(holder):
    with socket.socket() as held:
        held.bind((holder, 0))
        held.listen()
        port = held.getsockname()[1]
        free = natsd.free_ports(1)[0]
        assert ports_in_use("127.0.0.1", [port, free]) == [port]
    started = time.perf_counter()
    for _ in range(100):
        ports_in_use("127.0.0.1", [free])
    assert (time.perf_counter() - started) / 100 < 0.001  # the cold start stays fast


def test_only_a_verdict_on_the_run_it_runs_now_restarts_an_instance():
    sick = record(health="unhealthy", health_run=100.5, health_check="http", health_output="503")
    assert state.unhealthy(sick, 100.5) == "health check http failed: 503"
    assert state.unhealthy(sick, 200.0) is None  # said of an earlier run
    assert state.unhealthy(sick, 0.0) is None  # not running
    healthy = msgspec.structs.replace(sick, health="healthy")
    assert state.unhealthy(healthy, 100.5) is None
    unnamed = msgspec.structs.replace(sick, health_check="", health_output="")
    assert state.unhealthy(unnamed, 100.5) == "health check failed"


def test_a_check_target_has_the_run_its_env_its_folder_and_the_spec_s_checks():
    check = HealthCheck(type="http", port="http", path="/up")
    spec = JobSpec(name="web", task=Task(command="x", workdir="app"), checks=[check])
    env = {"PORT": "20000", "COLONY_INSTANCE": "web-0-abcd"}
    target = state.check_target(
        record(ports={"http": 20000}), spec, 12.5, 4242, "10.0.0.5", env, "/n/web-0-abcd"
    )
    assert (target.id, target.job, target.version, target.run, target.pid) == (
        "web-0-abcd", "web", 1, 12.5, 4242
    )  # fmt: skip
    assert (target.host, target.ports, target.env) == ("10.0.0.5", {"http": 20000}, env)
    assert (target.workdir, target.checks) == ("/n/web-0-abcd/app", [check])
    plain = JobSpec(name="web", task=Task(command="x"))
    target = state.check_target(record(), plain, 1.0, 1, "h", {}, "/n/web-0-abcd")
    assert (target.workdir, target.checks) == ("/n/web-0-abcd", [])
