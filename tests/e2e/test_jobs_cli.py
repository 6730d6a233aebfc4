"""The job verbs as a user runs them, on a real 3-node `colony up` cluster: plan, run
(until every instance answers over HTTP), status, list, scale, logs, events (replayed
and followed), reserved resources in `colony status`, stop; a job that does not fit, a
job whose every instance fails, a job forgotten at once."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _cli import colony, on_cluster

from colony.harness.jobs import LocalJobs
from colony.harness.processes import wait_for

pytestmark = pytest.mark.e2e

WEB = Path(__file__).parents[2] / "examples" / "web.yaml"
FORM = 90
"""Seconds for a fresh cluster to appoint a manager and register every node."""
SETTLE = 60
"""Seconds for a job's instances to be placed and running (or stopped)."""


def job_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n{text}")
    return path


def status_of(state: Path, job: str, *extra: str) -> dict:
    return json.loads(colony("job", "status", job, "--json", *extra, state=state).stdout)


def running(shown: dict) -> list[dict]:
    return [i for i in shown["instances"] if i["desired"] == "run" and i["state"] == "running"]


def answer(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as reply:
        return reply.read().decode()


def answer_soon(address: str, timeout: float = 20) -> str:
    """Its answer, once it listens (`running` means its process started: Python takes a
    moment more to open the port)."""

    def asked() -> str | None:
        try:
            return answer(address)
        except OSError:
            return None

    return wait_for(asked, timeout, f"an answer at {address}", every=0.2)


def lines_until(process: subprocess.Popen, wanted: str, timeout: float) -> str:
    """What `process` prints until a line contains `wanted` (AssertionError after `timeout`).
    Read from the pipe itself: a buffered reader could hold lines that select never shows."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break  # it ended
            seen += chunk
            if any(wanted in line for line in seen.decode(errors="replace").splitlines()):
                return seen.decode(errors="replace")
    said = seen.decode(errors="replace")
    raise AssertionError(f"no line with {wanted!r} within {timeout:g} s; saw:\n{said}")


def follow(state: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "colony.cli", *args, "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )


def interrupt(process: subprocess.Popen) -> str:
    """Ctrl-C it; its stderr, once it has ended."""
    process.send_signal(signal.SIGINT)
    _, said = process.communicate(timeout=10)
    err = said.decode(errors="replace")
    assert process.returncode == 130, err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def ready(cluster):
    """The cluster once a manager acts and every node's agent has registered it alive."""
    state, _ = cluster
    on_cluster(state, lambda c: c.wait_manager(FORM))
    jobs = LocalJobs(state)
    wait_for(
        lambda: (
            len(nodes := jobs.nodes()) == 3
            and all(n.status == "alive" and n.registered for n in nodes.values())
        ),
        FORM,
        "3 nodes registered and alive",
        every=0.5,
    )
    return state


def test_run_status_scale_logs_events_stop(ready):
    state = ready
    plan = colony("job", "plan", str(WEB), state=state)
    lines = plan.stdout.splitlines()
    assert lines[0] == "web: new job" and lines[1].split() == ["SLOT", "NODE", "PORTS"]
    assert len(lines) == 5 and all("http=" in line for line in lines[2:]), plan.stdout

    run = colony("job", "run", str(WEB), "--timeout", str(SETTLE), state=state)
    assert "✓ web: 3 running" in run.stdout, run.stdout + run.stderr
    shown = status_of(state, "web")
    assert shown["job"]["version"] == 1 and len(running(shown)) == 3
    for instance in running(shown):
        assert instance["address"] in run.stdout
        # each instance answers where `job run` said, with its own id
        assert answer_soon(instance["address"]).startswith(instance["id"])

    table = colony("job", "status", "web", state=state).stdout.splitlines()
    assert table[0] == "job web: version 1, running, 3 desired, 3 running"
    assert table[1].startswith("rollout: version 1: succeeded"), table[1]
    assert table[2].split() == [
        "ID", "NODE", "STATE", "HEALTH", "ADDRESS", "RESTARTS", "AGE", "LAST", "CHECK", "LAST",
        "REASON",
    ]  # fmt: skip
    assert sum(" running " in line and " healthy (" in line for line in table[3:]) == 3
    # the monitors say their last check: web's is an http GET that answered 200
    assert all("200" in i["last_check"] for i in running(status_of(state, "web")))

    # where the healthy instances answer, and who made the version
    found = colony("job", "endpoints", "web", state=state).stdout.splitlines()
    assert sorted(line.split()[:2] for line in found) == sorted(
        [i["address"], i["id"]] for i in running(shown)
    ), found
    [first_version] = json.loads(colony("job", "history", "web", "--json", state=state).stdout)
    assert first_version["version"] == 1 and first_version["current"]
    assert first_version["cause"].endswith(f": colony job run {WEB}"), first_version
    [listed] = [j for j in json.loads(colony("job", "list", "--json", state=state).stdout)
                if j["name"] == "web"]  # fmt: skip
    assert (listed["version"], listed["replicas"], listed["running"]) == (1, 3, 3)

    # the same file again changes nothing
    again = colony("job", "run", str(WEB), state=state)
    assert "web: unchanged (version 1)" in again.stdout

    # the instance's output, from the node that runs it: the server logs each GET to stderr
    first = running(shown)[0]
    answer(first["address"])
    logs = colony("logs", first["id"], "--stderr", state=state)
    assert '"GET / HTTP/1.1" 200' in logs.stdout, logs.stdout
    followed = follow(state, "logs", first["id"], "--stderr", "-f", "--tail", "1")
    try:
        # once it printed its tail (the last byte: a newline) it follows: a GET after this
        # shows up as it is written (one before would be behind the tail)
        lines_until(followed, "", 30)
        answer(first["address"])
        answer(first["address"])
        lines_until(followed, '"GET / HTTP/1.1" 200', 20)
    finally:
        interrupt(followed)

    # scale up; events followed live say so, naming the nodes as people know them (read
    # at the start: the changes after --since tell none of their names)
    last = json.loads(colony("events", "--json", state=state).stdout.splitlines()[-1])["index"]
    events = follow(state, "events", "-f", "--kind", "job")
    placed = follow(state, "events", "-f", "--kind", "instance", "--since", str(last))
    try:
        colony("job", "scale", "web", "5", state=state)
        lines_until(events, "job web v1 scaled to 5", 20)
        said = lines_until(placed, "placed on", 20)
        assert re.search(r"placed on node-\d \(slot [34]", said), said
    finally:
        interrupt(events)
        interrupt(placed)
    wait_for(lambda: len(running(status_of(state, "web"))) == 5, SETTLE, "5 instances running")

    # reserved beside measured: five instances of 0.1 cpu and 64 MiB
    nodes = json.loads(colony("status", "--json", state=state).stdout)["nodes"]
    reserved = [n["reserved"] for n in nodes]
    assert all(r is not None for r in reserved), nodes
    assert round(sum(r["cpu"] for r in reserved), 3) == 0.5
    assert sum(r["memory"] for r in reserved) == 5 * 64 * 2**20
    assert "RESERVED CPU" in colony("status", state=state).stdout

    stopped = colony("job", "stop", "web", state=state)
    assert stopped.stdout.startswith("web: stopped")

    def all_ended() -> bool:
        shown = status_of(state, "web", "--all")
        return shown["job"]["status"] == "stopped" and not any(
            i["desired"] == "run" or i["state"] in ("pending", "starting", "running")
            for i in shown["instances"]
        )

    wait_for(all_ended, SETTLE, "every instance of web stopped", every=0.5)
    again = colony("job", "plan", str(WEB), state=state)
    assert again.stdout.startswith("web: stopped, runs again (version 1)"), again.stdout

    # the replay tells the whole story, in order, and stops at the stream's end
    replay = colony("events", state=state).stdout
    for said in (
        "job web v1: running, 3 replicas",
        "placed on",
        "running on",
        "job web v1 scaled to 5",
        "job web v1 stopped",
        "to stop: ",
    ):
        assert said in replay, f"{said!r} not in:\n{replay}"
    assert replay.index("scaled to 5") < replay.index("job web v1 stopped")
    printed = colony("events", "--kind", "instance", "--json", state=state).stdout
    changes = [json.loads(line) for line in printed.splitlines()]
    assert changes and {c["kind"] for c in changes} == {"instance"}
    indexes = [c["index"] for c in changes]
    assert indexes == sorted(indexes)
    since = colony("events", "--since", str(indexes[-1]), "--kind", "instance", state=state)
    assert since.stdout == ""

    colony("job", "stop", "web", "--purge", state=state)
    wait_for(lambda: "web" not in LocalJobs(state).jobs(), SETTLE, "web forgotten", every=0.5)


def test_unknown_jobs_and_instances_are_said_clearly(ready):
    state = ready
    for args, says in (
        (["job", "status", "nosuch"], "no job 'nosuch'"),
        (["job", "scale", "nosuch", "2"], "job 'nosuch' not changed"),
        (["logs", "nosuch-0-abcd"], "no instance 'nosuch-0-abcd'"),
    ):
        result = colony(*args, state=state, check=False)
        assert result.returncode == 1 and says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_job_that_does_not_fit_is_refused_in_json_too(ready, tmp_path):
    state = ready
    big = job_file(tmp_path, "big", "task: {command: sleep, args: ['60']}\n"
                   "resources: {memory: 512 GiB}\n")  # fmt: skip
    for verb in ("plan", "run"):
        result = colony("job", verb, str(big), "--json", state=state, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        said = json.loads(result.stdout)
        assert said["fits"] is False and said["unplaced"] == 1 and said["no_fit"], said
    assert json.loads(result.stdout)["stored"] is False
    assert "big" not in LocalJobs(state).jobs()


def test_run_says_each_failure_and_gives_up_once_every_instance_keeps_failing(ready, tmp_path):
    state = ready
    # it never starts (a process that starts, then exits, runs for a moment: done)
    crash = job_file(
        tmp_path, "crash", "replicas: 2\ntask: {command: no-such-cmd}\nrestart: {attempts: 0}\n"
    )
    started = time.monotonic()
    run = colony("job", "run", str(crash), "--timeout", "110", state=state, check=False)
    took = time.monotonic() - started
    try:
        assert run.returncode == 1, run.stdout + run.stderr
        # long before the timeout: both slots failed, and the manager rescheduled them
        assert took < 60, f"took {took:.0f} s:\n{run.stderr}"
        # whichever it sees first: every slot failed, or the manager failed the rollout
        assert re.search(
            r"crash: (every instance keeps failing|the rollout of version 1 failed: instance "
            r"crash-\d-\w+ failed on node node-\d: command not found)",
            run.stderr,
        ), run.stderr
        failed = [line for line in run.stderr.splitlines() if line.startswith("✗ crash-")]
        assert {line.split("-")[1] for line in failed} == {"0", "1"}, run.stderr
        assert all(" is failed: command not found: no-such-cmd" in line for line in failed), failed
        assert "Traceback" not in run.stderr
    finally:
        colony("job", "stop", "crash", "--purge", state=state)
    wait_for(lambda: "crash" not in LocalJobs(state).jobs(), SETTLE, "crash forgotten", every=0.5)


def test_a_job_with_no_instance_is_forgotten_at_once(ready, tmp_path):
    state = ready
    idle = job_file(tmp_path, "idle", "replicas: 0\ntask: {command: sleep, args: ['60']}\n")
    colony("job", "run", str(idle), state=state)
    stopped = colony("job", "stop", "idle", "--purge", state=state)
    assert stopped.stdout.startswith("idle: forgotten (it had no instances left)"), stopped.stdout
    assert "idle" not in LocalJobs(state).jobs()
