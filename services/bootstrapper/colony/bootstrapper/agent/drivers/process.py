"""The process driver: an instance is a command run in its own session.

How an instance is run, and why:

- A tiny `sh` wrapper (the session and process group leader) joins the instance's
  cgroups, sets its rlimit and working directory, then runs the workload in the
  foreground and writes the workload's exit status to ``<dir>/exit`` when it ends.
  Only a process's parent learns its exit status, and the agent is not the parent
  for long: after an agent restart (even kill -9) the workload runs on, its wrapper
  keeps waiting for it, and the new agent reads the status file. A shell costs about
  a millisecond to start (a Python wrapper costs 15), which matters for cold starts.
- The workload's pid reaches the agent through a pipe (fd 3, closed before the
  workload runs), so the pid it reports is the workload's own.
- The exit is noticed at once, with no polling: the agent watches the wrapper through
  a pidfd (Linux 5.3+), which works the same for a child and for a process adopted
  after a restart.
- Stop: SIGTERM to the process group (and to anything in the instance's cgroups,
  which catches a process that left the group with setsid), SIGKILL after the grace
  period. When the wrapper ends, whatever is left of the group is killed: an instance
  leaves nothing behind, even if it forked children that ignore SIGTERM.
- The wrapper records a workload killed by signal N as 128+N (the shell's way); it is
  reported as -N, "killed by SIGNAME". A workload that itself exits with 129-192 is
  therefore reported as killed by a signal.
- A workload that exits with a non-zero code is reported with the last line it wrote
  in that run (stderr, else stdout), e.g. "exited with code 1: OSError: [Errno 98]
  Address already in use": the reason says why without a trip to the logs.

- An agent killed after it spawned a wrapper but before it saved the handle leaves
  that copy running with nothing pointing at it but ``<dir>/process.json``:
  `end_leftovers` (the new agent calls it for an instance it finds `starting`)
  kills what that record (or the instance's cgroups) still holds, so an instance
  never runs twice.

The workload's stdout and stderr go straight to files in its folder (`LogFiles`),
rotated by size by the driver every `rotate_every` seconds. ``<dir>/process.json`` is
a `ProcessRecord` of the wrapper: `colony down` kills what it finds there even when
no agent is left to do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil

from colony.bootstrapper.agent.drivers import limits
from colony.bootstrapper.agent.drivers.base import (
    Capabilities,
    Exit,
    Handle,
    Inspection,
    InstanceSpec,
    LogChunk,
    StartFailed,
    Stats,
    Stream,
)
from colony.bootstrapper.agent.drivers.logfiles import LogFiles
from colony.bootstrapper.state import describe_exit
from colony.shared.statedir import INSTANCE_PROCESS, ProcessRecord

SHELL = "/bin/sh"
EXIT_FILE = "exit"
SETUP_FAILED = 125
"""The wrapper's exit code when it could not join the cgroups, set the rlimit or
enter the working directory (its stderr, in the instance's stderr log, says which)."""

WRAPPER = r"""
f=$1; v=$2; d=$3; n=$4; shift 4
while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 125; shift; n=$((n - 1)); done
if [ -n "$v" ]; then ulimit -v "$v" || exit 125; fi
cd -- "$d" || exit 125
trap : TERM INT HUP
sh -c 'echo $$ >&3; exec "$@" 3>&-' colony-workload "$@"
c=$?
echo "$c" >"$f"
exit "$c"
"""
"""$1 the exit status file, $2 RLIMIT_AS in KiB ('' : none), $3 the working directory,
$4 how many cgroup.procs files follow, then those files, then the command and its args.
The trap keeps the wrapper alive through the SIGTERM sent to the group (a trap that
runs a command is reset to the default in the workload, unlike an ignored signal)."""

LEFTOVER_LOOKS = 200
"""Looks, 10 ms apart, `end_leftovers` takes for what it killed to be gone (SIGKILL:
milliseconds)."""

RESET_SIGNALS = {
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGHUP,
}
"""Dispositions the agent may have changed (Python ignores SIGPIPE) that a workload
must get back at their defaults."""


@dataclass
class _Watch:
    """One instance the driver is watching."""

    handle: Handle
    exited: asyncio.Future[Exit]
    pidfd: int = -1
    killed: bool = False
    """It was sent SIGKILL by `stop` (so a wrapper that left no status was killed so)."""
    logs: list[LogFiles] = field(default_factory=list)


class ProcessDriver:
    def __init__(
        self,
        *,
        cgroup_root: Path | str = "/sys/fs/cgroup",
        cgroup_parent: str = "colony",
        log_max_bytes: int = 16 * 2**20,
        log_keep: int = 2,
        rotate_every: float = 1.0,
    ) -> None:
        self.cgroup_root = Path(cgroup_root)
        self.cgroup_parent = cgroup_parent
        self.log_max_bytes = log_max_bytes
        self.log_keep = log_keep
        self.rotate_every = rotate_every
        version = limits.cgroup_version(self.cgroup_root)
        self.capabilities = Capabilities(
            name="process",
            isolation="its own session and process group; no filesystem or network isolation",
            limits=("memory", "cpu") if version else ("memory",),
        )
        self._watches: dict[str, _Watch] = {}
        self._rotator: asyncio.Task[None] | None = None

    # --- starting -------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> Handle:
        handle, pid_reader = self._spawn(spec)
        watch = self._watch(handle)
        pid = await _read_pid(pid_reader, watch.exited)
        if pid is None:  # the wrapper ended before the command ran
            ended = await watch.exited
            self.forget(handle)
            if ended.code == SETUP_FAILED:
                raise StartFailed(f"could not set it up: {self._said_last(handle) or '?'}")
            raise StartFailed(f"it ended before its command ran: {ended.reason}")
        watch.handle = msgspec.structs.replace(handle, pid=pid)
        return watch.handle

    async def end_leftovers(self, id: str, dir: str) -> bool:
        """What `<dir>/process.json` names, or the instance's cgroups hold, from a start
        whose handle was never saved: killed (SIGKILL: nothing of it is wanted), and
        waited for, so that its ports are free again when this returns."""
        folder = Path(dir)
        record = _read_record(folder / INSTANCE_PROCESS)
        cgroups = [str(f) for f in limits.folders(self.cgroup_root, self.cgroup_parent, id)]
        if not _remains(record, cgroups):
            return False
        left = Handle(
            driver="process",
            id=id,
            dir=dir,
            pgid=record.pgid if record else 0,
            wrapper=record.pid if record else 0,
            wrapper_started=record.started if record else 0.0,
            cgroups=cgroups,
        )
        _signal_all(left, signal.SIGKILL)
        # no pidfd to wait on (not this driver's child, maybe not one process): look
        for _ in range(LEFTOVER_LOOKS):
            if not _remains(record, cgroups):
                break
            await asyncio.sleep(0.01)
        (folder / INSTANCE_PROCESS).unlink(missing_ok=True)
        return True

    def _spawn(self, spec: InstanceSpec) -> tuple[Handle, int]:
        """Check what it needs, set its limits, start its wrapper; the handle (without
        the workload's pid yet) and the pipe the pid comes through. All of it is quick
        local work (no waiting on anything), so it runs on the loop."""
        folder = Path(spec.dir)
        folder.mkdir(parents=True, exist_ok=True)
        workdir = _workdir(spec)
        command = _command(spec, workdir)
        (folder / EXIT_FILE).unlink(missing_ok=True)
        try:
            applied = limits.plan(
                self.cgroup_root, self.cgroup_parent, spec.id, spec.cpu, spec.memory
            )
        except limits.LimitError as e:
            raise StartFailed(str(e)) from None
        argv = [
            SHELL,
            "-c",
            WRAPPER,
            "colony-instance",
            str(folder / EXIT_FILE),
            str(applied.address_space // 1024) if applied.address_space else "",
            str(workdir),
            str(len(applied.join)),
            *applied.join,
            command,
            *spec.args,
        ]
        logs = {s: self._logs(folder, s) for s in ("stdout", "stderr")}
        # where this run's output starts: what it says last is told apart from what an
        # earlier run of the instance (same folder, same files) said
        written_from = {f"{s}_from": str(log.end()) for s, log in logs.items()}
        out, err = (log.open_for_writer() for log in logs.values())
        pid_reader, pid_writer = os.pipe()
        try:
            wrapper = os.posix_spawn(
                SHELL,
                argv,
                spec.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                    (os.POSIX_SPAWN_DUP2, pid_writer, 3),
                ],
                setsid=True,
                setsigdef=RESET_SIGNALS,
                setsigmask=(),
            )
        except OSError as e:
            os.close(pid_reader)
            limits.remove(applied.cgroups)
            raise StartFailed(f"could not start {SHELL} to run it: {e.strerror or e}") from None
        finally:
            for fd in (out, err, pid_writer):
                os.close(fd)
        record = ProcessRecord.of(f"instance {spec.id}", wrapper, [command, *spec.args])
        if record is not None:  # None: it ended already (`wait` says how)
            _write_atomically(folder / INSTANCE_PROCESS, msgspec.json.encode(record))
        handle = Handle(
            driver="process",
            id=spec.id,
            dir=str(folder),
            pgid=wrapper,
            wrapper=wrapper,
            wrapper_started=record.started if record else 0.0,
            started_at=time.time(),
            limits=applied.summary,
            cgroups=list(applied.cgroups),
            extra=written_from,
        )
        return handle, pid_reader

    def _logs(self, folder: Path, stream: Stream) -> LogFiles:
        return LogFiles(folder, stream, self.log_max_bytes, self.log_keep)

    def _said_last(self, handle: Handle) -> str:
        """The last line this run wrote to stderr, else to stdout ('' : nothing)."""
        for stream in ("stderr", "stdout"):
            since = int(handle.extra.get(f"{stream}_from", 0))  # 0: a handle from before
            said = self._logs(Path(handle.dir), stream).last_line(since)
            if said:
                return said
        return ""

    # --- watching ---------------------------------------------------------------

    def _watch(self, handle: Handle) -> _Watch:
        loop = asyncio.get_running_loop()
        watch = _Watch(handle, loop.create_future())
        watch.logs = [self._logs(Path(handle.dir), s) for s in ("stdout", "stderr")]
        self._watches[handle.id] = watch
        try:
            watch.pidfd = os.pidfd_open(handle.wrapper)
        except ProcessLookupError:  # ended (and was reaped) already
            self._ended(watch)
            return watch
        loop.add_reader(watch.pidfd, self._ended, watch)
        if self._rotator is None or self._rotator.done():
            self._rotator = loop.create_task(self._rotate_logs())
        return watch

    def _ended(self, watch: _Watch) -> None:
        """The wrapper ended: reap it, read how the workload ended, kill what is left."""
        if watch.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(watch.pidfd)
            os.close(watch.pidfd)
            watch.pidfd = -1
        wrapper_code = None
        # reap it if this process started it (an adopted wrapper is init's to reap)
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(watch.handle.wrapper, os.WNOHANG)
            if pid:
                wrapper_code = os.waitstatus_to_exitcode(status)
        code = _recorded_exit(Path(watch.handle.dir))
        if code is None:
            code = -signal.SIGKILL if watch.killed else wrapper_code
        _signal_all(watch.handle, signal.SIGKILL)  # forked children left behind
        why = describe_exit(code) if code is not None else "its exit status was not recorded"
        if code is not None and code > 0:  # it failed: what it said last tells why
            said = self._said_last(watch.handle)
            why = f"{why}: {said}" if said else why
        for log in watch.logs:
            with contextlib.suppress(OSError):
                log.rotate_if_large()
        if code == -signal.SIGKILL and limits.out_of_memory(watch.handle.cgroups):
            why = f"{why}: out of memory ({watch.handle.limits})"
        if not watch.exited.done():
            watch.exited.set_result(Exit(code, why, time.time()))

    async def wait(self, handle: Handle) -> Exit:
        watch = self._watches.get(handle.id)
        if watch is None:
            self.adopt(handle)
            watch = self._watches[handle.id]
        return await asyncio.shield(watch.exited)

    def adopt(self, handle: Handle) -> bool:
        if handle.id in self._watches:
            return not self._watches[handle.id].exited.done()
        if _alive(handle):
            watch = self._watch(handle)
            if _alive(handle):  # the pidfd is of that very process, not a later one
                return not watch.exited.done()
            self._unwatch(watch)
        # it ended while no agent watched it
        loop = asyncio.get_running_loop()
        watch = _Watch(handle, loop.create_future())
        self._watches[handle.id] = watch
        self._ended(watch)
        return False

    def _unwatch(self, watch: _Watch) -> None:
        if watch.pidfd >= 0:
            asyncio.get_running_loop().remove_reader(watch.pidfd)
            os.close(watch.pidfd)
            watch.pidfd = -1
        self._watches.pop(watch.handle.id, None)

    # --- stopping -----------------------------------------------------------------

    async def stop(self, handle: Handle, grace: float) -> Exit:
        watch = self._watches.get(handle.id)
        if watch is None:
            self.adopt(handle)
            watch = self._watches[handle.id]
        if watch.exited.done():
            return watch.exited.result()
        _signal_all(handle, signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(watch.exited), timeout=grace)
        except TimeoutError:
            watch.killed = True
            _signal_all(handle, signal.SIGKILL)
            return await asyncio.shield(watch.exited)

    def forget(self, handle: Handle) -> None:
        watch = self._watches.get(handle.id)
        if watch is not None:
            self._unwatch(watch)
        limits.remove(handle.cgroups)
        Path(handle.dir, INSTANCE_PROCESS).unlink(missing_ok=True)

    async def close(self) -> None:
        for watch in list(self._watches.values()):
            self._unwatch(watch)
        if self._rotator is not None:
            self._rotator.cancel()
            await asyncio.gather(self._rotator, return_exceptions=True)

    # --- looking ------------------------------------------------------------------

    def inspect(self, handle: Handle) -> Inspection:
        watch = self._watches.get(handle.id)
        if watch is not None and watch.exited.done():
            ended = watch.exited.result()
            return Inspection("exited", ended.reason, ended)
        if watch is not None or _alive(handle):
            return Inspection("running", handle.limits or "no limits")
        return Inspection("exited", "not running (not watched by this agent)")

    def logs(self, handle: Handle, stream: Stream, offset: int, max_bytes: int) -> LogChunk:
        return self._logs(Path(handle.dir), stream).read(offset, max_bytes)

    def stats(self, handle: Handle) -> Stats:
        pids = limits.members(handle.cgroups)
        if not pids and handle.pid:
            with contextlib.suppress(psutil.Error):
                top = psutil.Process(handle.pid)
                pids = {handle.pid, *(c.pid for c in top.children(recursive=True))}
        cpu, rss, count = 0.0, 0, 0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(pid)
                with process.oneshot():
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    rss += process.memory_info().rss
                    count += 1
        return Stats(cpu_seconds=cpu, rss=rss, processes=count)

    async def _rotate_logs(self) -> None:
        while True:
            await asyncio.sleep(self.rotate_every)
            for watch in list(self._watches.values()):
                for log in watch.logs:
                    with contextlib.suppress(OSError):
                        log.rotate_if_large()


def _workdir(spec: InstanceSpec) -> Path:
    workdir = Path(spec.dir, spec.workdir) if spec.workdir else Path(spec.dir)
    if not workdir.exists():
        raise StartFailed(f"working directory {workdir} does not exist")
    if not workdir.is_dir():
        raise StartFailed(f"working directory {workdir} is not a directory")
    return workdir


def _command(spec: InstanceSpec, workdir: Path) -> str:
    """The command's path: as given if it has a '/', else looked up on its PATH."""
    if "/" in spec.command:
        path = workdir / spec.command
        if not path.exists():
            raise StartFailed(f"command not found: {spec.command} (no such file)")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise StartFailed(f"command {spec.command} is not an executable file")
        return str(path)
    found = shutil.which(spec.command, path=spec.env.get("PATH", os.defpath))
    if found is None:
        raise StartFailed(f"command not found: {spec.command}")
    return found


async def _read_pid(reader: int, exited: asyncio.Future[Exit]) -> int | None:
    """The workload's pid, as its wrapper writes it (None if it ended first)."""
    loop = asyncio.get_running_loop()
    os.set_blocking(reader, False)
    got: asyncio.Future[bytes] = loop.create_future()
    data = bytearray()

    def readable() -> None:
        try:
            chunk = os.read(reader, 64)
        except BlockingIOError:
            return
        data.extend(chunk)
        if (not chunk or b"\n" in data) and not got.done():
            got.set_result(bytes(data))

    loop.add_reader(reader, readable)
    try:
        await asyncio.wait({got, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(reader)
        os.close(reader)
    line = bytes(data).split(b"\n", 1)[0] if b"\n" in data else b""
    return int(line) if line.strip().isdigit() else None


def _recorded_exit(folder: Path) -> int | None:
    """The workload's exit status as its wrapper wrote it (a signal as -N)."""
    try:
        code = int((folder / EXIT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    if 128 < code <= 128 + 64:
        return -(code - 128)
    return code


def _alive(handle: Handle) -> bool:
    """True while the wrapper (that very process, not a later one with its pid) runs."""
    try:
        process = psutil.Process(handle.wrapper)
        return process.create_time() == handle.wrapper_started and process.status() != "zombie"
    except psutil.Error:
        return False


def _read_record(path: Path) -> ProcessRecord | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ProcessRecord)
    except (OSError, msgspec.DecodeError):  # none (the usual case), or a crash's half
        return None


def _remains(record: ProcessRecord | None, cgroups: list[str]) -> bool:
    """Something a start left still runs: its wrapper's process group, or a process in
    the instance's cgroups (one that left the group), zombies aside."""
    if record is not None and _group_runs(record):
        return True
    for pid in limits.members(cgroups):
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _group_runs(record: ProcessRecord) -> bool:
    """A process of the recorded wrapper's group runs (zombies aside: a killed wrapper
    stays one until its parent reaps it). Looks at every process: for leftovers only."""
    with contextlib.suppress(psutil.NoSuchProcess):
        try:
            if psutil.Process(record.pid).create_time() != record.started:
                return False  # the pid is another process's now: so is any group of it
        except psutil.Error:
            return False
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == record.pgid and process.info["status"] != "zombie":
                return True
    return False


def _group_is_ours(handle: Handle) -> bool:
    """True unless the wrapper's pid (its group's id) now belongs to another process.

    Linux never hands out a pid still in use as a group id, so once the wrapper is gone
    the group is either still the instance's or empty."""
    try:
        return psutil.Process(handle.wrapper).create_time() == handle.wrapper_started
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _signal_all(handle: Handle, sig: signal.Signals) -> None:
    """Signal the instance's process group and everything in its cgroups."""
    if handle.pgid and _group_is_ours(handle):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pgid, sig)
    for pid in limits.members(handle.cgroups):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
