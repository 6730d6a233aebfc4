"""The node supervisor: starts the node's processes, keeps them running, stops them.

Each child runs in its own process group (so a signal reaches it and any
children it has) and is recorded in the node's ``run/`` folder. The
nats-server starts first; services start once it accepts connections. A
child that dies is restarted after the `RestartPolicy` delay, with its exit
reason logged. SIGTERM stops services first, then the nats-server, each
with a grace period before SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from colony.bootstrapper import agent
from colony.bootstrapper.state import RestartPolicy, describe_exit
from colony.shared import natsd
from colony.shared.config import Config
from colony.shared.statedir import NATS, SUPERVISOR, NodeDir, ProcessRecord

log = logging.getLogger("colony.bootstrapper")

SERVICES = ["monitor", "membership", "consensus", "curator", "agent", "snapshotter"]
"""Services every node runs (consensus stands by on a node that is not a voter, ready to
be promoted; the curator stands by on a node that is not the manager; the snapshotter
runs litestream only while its node is a voter, and answers fetches everywhere)."""

PROGRAMS = {"agent": agent.__name__}
"""The module a service runs as when it is not `colony.<service>`: the node agent is
part of the bootstrapper (its package's name, not a copy of it)."""

LOG_ROTATE_BYTES = 16 * 2**20
"""A child's log is rotated when it starts with a log larger than this."""

STOP_GRACE = 4.0
"""Seconds a child gets to exit after SIGTERM before SIGKILL."""


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]


def children(node_dir: NodeDir, config: Config) -> list[Child]:
    """What a node runs, in start order."""
    services = [
        Child(
            name,
            [
                sys.executable,
                "-m",
                PROGRAMS.get(name, f"colony.{name}"),
                "--config",
                str(node_dir.config_file),
            ],
        )
        for name in SERVICES
    ]
    return [Child(NATS, [natsd.binary(), "-c", str(node_dir.nats_conf)]), *services]


class Supervisor:
    def __init__(
        self,
        node_dir: NodeDir,
        config: Config,
        policy: RestartPolicy | None = None,
        run: list[Child] | None = None,
    ):
        self.node_dir = node_dir
        self.config = config
        self.policy = policy or RestartPolicy()
        self.children = run or children(node_dir, config)
        """What it runs, in start order: the nats-server first, then the services."""
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Start everything, keep it running until `stopping` is set, then stop it all."""
        self.node_dir.create()
        me = os.getpid()
        record = ProcessRecord.of(SUPERVISOR, me, sys.argv)
        assert record is not None  # this very process is alive
        self.node_dir.write_record(record)
        log.info("supervisor started", extra={"node": self.config.node.id, "pid": me})
        nats, *services = self.children
        watchers = [asyncio.create_task(self._keep_running(nats))]
        if await self._nats_ready():
            watchers += [asyncio.create_task(self._keep_running(s)) for s in services]
        await self.stopping.wait()
        for child in [*reversed(services), nats]:
            await self._stop(child.name)
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        self.node_dir.remove_record(SUPERVISOR)
        log.info("supervisor stopped")

    async def _nats_ready(self, patience: float = 15.0) -> bool:
        """Wait until the node's nats-server accepts connections (False if stopped first)."""
        url = urlsplit(self.config.nats.servers[0])
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        loop = asyncio.get_running_loop()
        complain_at = loop.time() + patience
        while not self.stopping.is_set():
            if await _accepts(host, port):
                return True
            if loop.time() > complain_at:
                log.error(
                    "nats-server is not up yet; services wait for it", extra={"url": url.geturl()}
                )
                complain_at = float("inf")
            await asyncio.sleep(0.05)
        return False

    async def _keep_running(self, child: Child) -> None:
        """Run `child`, and again each time it dies, until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started = loop.time()
            try:
                why = await self._run_once(child)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a full disk, a missing binary: keep trying, say why
                why = f"could not start: {type(e).__name__}: {e}"
            if self.stopping.is_set():
                return
            delay = self.policy.next_delay(child.name, loop.time() - started)
            log.warning(
                "child died; restarting",
                extra={"child": child.name, "why": why, "restart_in": delay},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)

    async def _run_once(self, child: Child) -> str:
        """Start `child`, record it, wait for it to end; say why it ended."""
        log_file = self.node_dir.log(child.name)
        _rotate(log_file)
        # opening a local log file does not block the loop in any way that matters
        with open(log_file, "ab") as out:  # noqa: ASYNC230
            process = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[child.name] = process
        try:
            if self.stopping.is_set():  # a stop arrived while it was being started
                _signal_group(process.pid, signal.SIGTERM)
            record = ProcessRecord.of(child.name, process.pid, child.argv)
            if record is not None:  # None: it already exited, nothing to record
                self.node_dir.write_record(record)
            log.info("started", extra={"child": child.name, "pid": process.pid})
            return describe_exit(await process.wait())
        finally:
            if process.returncode is None:  # cancelled mid-start: never leave it behind
                _signal_group(process.pid, signal.SIGKILL)

    async def _stop(self, name: str) -> None:
        process = self.processes.get(name)
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=STOP_GRACE)
            except TimeoutError:
                log.warning("did not stop in time; killing", extra={"child": name})
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        self.node_dir.remove_record(name)


async def _accepts(host: str, port: int) -> bool:
    """True if something accepts connections on host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _rotate(log_file: Path) -> None:
    """Keep one previous log, so a crash-looping child cannot fill the disk."""
    with contextlib.suppress(FileNotFoundError):
        if log_file.stat().st_size > LOG_ROTATE_BYTES:
            log_file.replace(log_file.with_suffix(".log.1"))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
