"""The process driver with real child processes: start, exit codes, stop (forking
workloads that ignore SIGTERM included), bad commands and folders, limits, log
rotation, and adoption by a new driver (as after an agent restart)."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from colony.bootstrapper.agent.drivers.base import InstanceSpec, StartFailed
from colony.bootstrapper.agent.drivers.limits import cgroup_version
from colony.bootstrapper.agent.drivers.process import ProcessDriver
from colony.bootstrapper.agent.drivers.sim import SimDriver
from colony.harness.processes import poll
from colony.shared.statedir import INSTANCE_PROCESS, ProcessRecord

CGROUPS = Path("/sys/fs/cgroup")
PATH = os.environ.get("PATH", os.defpath)


def spec(tmp_path: Path, command: str, *args: str, **fields) -> InstanceSpec:
    fields.setdefault("env", {"PATH": PATH})
    return InstanceSpec(
        id=f"t-0-{secrets.token_hex(2)}",
        command=command,
        args=list(args),
        dir=str(tmp_path / "instance"),
        **fields,
    )


def _limits(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/limits").read_text().splitlines()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
async def driver(tmp_path):
    # a cgroup parent of its own, so tests running at once never share one
    made = ProcessDriver(cgroup_parent=f"colony-test-{secrets.token_hex(3)}", rotate_every=0.05)
    yield made
    for watch in list(made._watches.values()):
        await made.stop(watch.handle, grace=0.1)
        made.forget(watch.handle)
    await made.close()
    for controller in ("memory", "cpu", ""):
        folder = CGROUPS / controller / made.cgroup_parent
        if folder.is_dir():
            os.rmdir(folder)


async def test_runs_the_command_with_its_env_args_and_folder_and_reports_its_exit(driver, tmp_path):
    handle = await driver.start(
        spec(
            tmp_path,
            *("sh", "-c", 'echo "$GREETING $1 from $(pwd)"; exit 3', "sh", "world"),
            env={"PATH": PATH, "GREETING": "hello"},
        )
    )
    assert handle.pid > 0 and handle.pgid == handle.wrapper
    ended = await asyncio.wait_for(driver.wait(handle), 5)
    folder = tmp_path / "instance"
    # what it said last (stdout: its stderr is empty) says why it exited
    assert (ended.code, ended.reason) == (3, f"exited with code 3: hello world from {folder}")
    out = driver.logs(handle, "stdout", 0, 1000)
    assert out.data.decode() == f"hello world from {folder}\n"
    assert out.next == len(out.data)
    assert driver.inspect(handle).state == "exited"


async def test_a_failed_exit_says_the_last_line_the_workload_wrote_to_stderr(driver, tmp_path):
    script = """
import sys
print("serving on port 20000", flush=True)
print("Traceback (most recent call last):", file=sys.stderr)
print('  File "web.py", line 3, in <module>', file=sys.stderr)
print("OSError: [Errno 98] Address already in use", file=sys.stderr)
print("   ", file=sys.stderr)
sys.exit(1)
"""
    handle = await driver.start(spec(tmp_path, sys.executable, "-c", script))
    ended = await asyncio.wait_for(driver.wait(handle), 10)
    assert (ended.code, ended.reason) == (
        1, "exited with code 1: OSError: [Errno 98] Address already in use"
    )  # fmt: skip


async def test_a_failed_exit_says_only_what_this_run_wrote_trimmed(driver, tmp_path):
    first = spec(tmp_path, "sh", "-c", f"echo {'x' * 300} >&2; exit 2")
    ended = await asyncio.wait_for(driver.wait(await driver.start(first)), 5)
    assert ended.reason == f"exited with code 2: {'x' * 199}…"
    # the same instance run again (a restart: same folder, same log files) says nothing
    again = msgspec.structs.replace(first, args=["-c", "exit 4"])
    ended = await asyncio.wait_for(driver.wait(await driver.start(again)), 5)
    assert ended.reason == "exited with code 4"


async def test_stop_sends_sigterm_and_the_exit_is_known(driver, tmp_path):
    handle = await driver.start(spec(tmp_path, "sleep", "300"))
    # the pid is the workload's own (once its wrapper's shell has exec'd it)
    await poll(lambda: psutil.Process(handle.pid).name() == "sleep", 5, "sleep to run")
    record = ProcessRecord.of("x", handle.wrapper, [])
    assert record is not None and (tmp_path / "instance" / INSTANCE_PROCESS).exists()
    assert driver.inspect(handle).state == "running"
    ended = await asyncio.wait_for(driver.stop(handle, grace=5), 5)
    assert (ended.code, ended.reason) == (-signal.SIGTERM, "killed by SIGTERM")
    assert gone(handle.pid) and gone(handle.wrapper)


async def test_a_workload_that_forks_and_ignores_sigterm_leaves_nothing_behind(driver, tmp_path):
    pids = tmp_path / "pids"
    script = f"""
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(1)
    kids.append(pid)
open({str(pids)!r}, "w").write(" ".join(map(str, kids)))
while True:
    time.sleep(1)
"""
    handle = await driver.start(spec(tmp_path, sys.executable, "-c", script))
    await poll(lambda: pids.exists() and pids.read_text(), 10, "the workload's children")
    children = [int(p) for p in pids.read_text().split()]
    assert all(not gone(p) for p in children)
    started = time.monotonic()
    ended = await asyncio.wait_for(driver.stop(handle, grace=0.3), 5)
    assert time.monotonic() - started >= 0.3  # it had its grace period
    assert (ended.code, ended.reason) == (-signal.SIGKILL, "killed by SIGKILL")
    await poll(lambda: all(gone(p) for p in [handle.pid, handle.wrapper, *children]), 5,
               "every process of the instance to be gone")  # fmt: skip


async def test_children_left_behind_by_a_workload_that_exits_are_killed(driver, tmp_path):
    pids = tmp_path / "pids"
    handle = await driver.start(spec(tmp_path, "sh", "-c", f"sleep 300 & echo $! > {pids}; exit 0"))
    ended = await asyncio.wait_for(driver.wait(handle), 5)
    assert ended.code == 0
    orphan = int(pids.read_text())
    await poll(lambda: gone(orphan), 5, "the orphaned child to be killed")


async def test_a_missing_command_fails_with_a_plain_reason(driver, tmp_path):
    with pytest.raises(StartFailed, match=r"^command not found: no-such-command-here$"):
        await driver.start(spec(tmp_path, "no-such-command-here"))
    with pytest.raises(StartFailed, match=r"command not found: \./nope"):
        await driver.start(spec(tmp_path, "./nope"))


async def test_a_missing_working_directory_fails_with_a_plain_reason(driver, tmp_path):
    with pytest.raises(StartFailed, match=r"working directory .*/instance/missing does not exist"):
        await driver.start(spec(tmp_path, "true", workdir="missing"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(StartFailed, match="is not a directory"):
        await driver.start(spec(tmp_path, "true", workdir=str(tmp_path / "afile")))


@pytest.mark.skipif(
    cgroup_version(CGROUPS) != 1 or os.geteuid() != 0, reason="needs root and cgroup v1"
)
async def test_cgroup_v1_limits_are_applied_and_said(driver, tmp_path):
    handle = await driver.start(spec(tmp_path, "sleep", "300", memory=64 * 2**20, cpu=0.5))
    said = "memory limit 64 MiB via cgroup v1; cpu limit 0.5 cores via cgroup v1"
    assert handle.limits == said
    assert driver.inspect(handle).reason == said
    memory = CGROUPS / "memory" / driver.cgroup_parent / handle.id
    cpu = CGROUPS / "cpu" / driver.cgroup_parent / handle.id
    assert int((memory / "memory.limit_in_bytes").read_text()) == 64 * 2**20
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50_000
    assert handle.pid in {int(p) for p in (memory / "cgroup.procs").read_text().split()}
    assert driver.stats(handle).rss > 0
    await driver.stop(handle, grace=1)
    driver.forget(handle)
    assert not memory.exists() and not cpu.exists()


@pytest.mark.skipif(
    cgroup_version(CGROUPS) != 1 or os.geteuid() != 0, reason="needs root and cgroup v1"
)
async def test_a_workload_over_its_memory_limit_is_killed(driver, tmp_path):
    grab = "b = bytearray(256 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    handle = await driver.start(spec(tmp_path, sys.executable, "-c", grab, memory=64 * 2**20))
    ended = await asyncio.wait_for(driver.wait(handle), 20)
    assert ended.code == -signal.SIGKILL
    assert ended.reason == "killed by SIGKILL: out of memory (memory limit 64 MiB via cgroup v1)"


async def test_without_cgroups_memory_is_limited_by_rlimit_and_said(tmp_path):
    driver = ProcessDriver(cgroup_root=tmp_path / "no-cgroups")
    assert driver.capabilities.limits == ("memory",)
    handle = await driver.start(spec(tmp_path, "sleep", "300", memory=64 * 2**20, cpu=0.5))
    try:
        assert handle.limits == (
            "memory limit 64 MiB via RLIMIT_AS (no usable cgroup); "
            "cpu 0.5 cores not enforced (no usable cgroup)"
        )
        line = next(x for x in _limits(handle.pid) if x.startswith("Max address space"))
        assert line.split()[3:5] == [str(64 * 2**20)] * 2
    finally:
        await driver.stop(handle, grace=1)
        await driver.close()


async def test_a_limit_the_host_cannot_set_fails_with_a_plain_reason(tmp_path):
    root = tmp_path / "cgroups"
    instance = spec(tmp_path, "sleep", "300", memory=64 * 2**20)
    # a memory controller whose limit file cannot be written
    (root / "memory" / "colony" / instance.id / "memory.limit_in_bytes").mkdir(parents=True)
    driver = ProcessDriver(cgroup_root=root)
    with pytest.raises(StartFailed, match=r"^memory limit 64 MiB via cgroup v1 cannot be set: "):
        await driver.start(instance)
    await driver.close()


async def test_output_is_rotated_by_size_and_read_by_offset(tmp_path):
    driver = ProcessDriver(log_max_bytes=1000, log_keep=2, rotate_every=0.02)
    line = "x" * 99  # 100 bytes with its newline
    script = f"for i in $(seq 1 15); do echo {line}; done; sleep 300"
    handle = await driver.start(spec(tmp_path, "sh", "-c", script))
    folder = tmp_path / "instance"
    try:
        await poll(lambda: (folder / "stdout.log.1").exists(), 5, "the output to be rotated")
        assert (folder / "stdout.log.1").stat().st_size == 1500
        assert (folder / "stdout.log").stat().st_size == 0
        last = driver.logs(handle, "stdout", -1, 250)
        assert (last.offset, last.next, last.data) == (1250, 1500, (line + "\n").encode()[-50:]
                                                       + f"{line}\n{line}\n".encode())  # fmt: skip
        whole = driver.logs(handle, "stdout", 0, 10_000)
        assert (whole.offset, whole.next) == (0, 1500)
    finally:
        await driver.stop(handle, grace=1)
        await driver.close()


async def test_a_new_driver_adopts_a_running_instance_and_learns_its_exit_code(tmp_path):
    first = ProcessDriver()
    ready = tmp_path / "ready"
    script = f'trap "exit 7" USR1; touch {ready}; while :; do sleep 0.02; done'
    handle = await first.start(spec(tmp_path, "sh", "-c", script))
    await poll(ready.exists, 5, "the workload to handle SIGUSR1")
    await first.close()  # the agent is gone; the instance runs on
    assert not gone(handle.pid)

    second = ProcessDriver()
    try:
        assert second.adopt(handle) is True
        assert second.inspect(handle).state == "running"
        os.kill(handle.pid, signal.SIGUSR1)
        ended = await asyncio.wait_for(second.wait(handle), 5)
        assert (ended.code, ended.reason) == (7, "exited with code 7")
    finally:
        await second.close()


async def test_a_start_whose_handle_was_lost_is_ended_before_the_instance_starts_again(tmp_path):
    """An agent killed while it started an instance never saved the handle: the next
    start of that instance (by a new agent's driver) first ends the copy left running,
    a child that left its process group included, so that it never runs twice."""
    parent = f"colony-test-{secrets.token_hex(3)}"
    first = ProcessDriver(cgroup_parent=parent)
    what = spec(tmp_path, "sh", "-c", "setsid sleep 300 & exec sleep 300", cpu=0.5, memory=2**26)
    lost = await first.start(what)
    await first.close()  # the agent is gone, and the handle with it
    second = ProcessDriver(cgroup_parent=parent)
    try:
        escaped = await poll(
            lambda: next((c.pid for c in psutil.Process(lost.pid).children()), None),
            5,
            "the child that left the group",
        )
        if cgroup_version(CGROUPS) is None:  # no cgroups: only the group can be found
            os.kill(escaped, signal.SIGKILL)
        assert await second.end_leftovers(what.id, what.dir) is True
        assert gone(lost.pid) and gone(escaped)
        assert not (tmp_path / "instance" / INSTANCE_PROCESS).exists()
        again = await second.start(what)
        assert again.pid != lost.pid and not gone(again.pid)
        assert await second.end_leftovers("t-0-none", str(tmp_path / "none")) is False
        await second.stop(again, grace=1)
        second.forget(again)
    finally:
        await second.close()


async def test_an_instance_that_ended_while_no_agent_watched_is_adopted_as_ended(tmp_path):
    first = ProcessDriver()
    handle = await first.start(spec(tmp_path, "sh", "-c", "read x; exit 5"))  # stdin: /dev/null
    await first.close()
    await poll(lambda: (tmp_path / "instance" / "exit").exists(), 5, "the instance to end")
    second = ProcessDriver()
    try:
        assert second.adopt(handle) is False
        ended = await asyncio.wait_for(second.wait(handle), 5)
        assert ended.code == 5
    finally:
        await second.close()


async def test_the_sim_driver_runs_nothing_until_stopped(tmp_path):
    driver = SimDriver()
    handle = await driver.start(spec(tmp_path, "anything"))
    assert handle.pid == 0 and driver.inspect(handle).state == "running"
    assert driver.adopt(handle) is True
    ended = await driver.stop(handle, grace=1)
    assert ended.code == 0 and driver.inspect(handle).state == "exited"
    assert (await driver.wait(handle)) == ended
