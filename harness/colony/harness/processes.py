"""Test helpers: real nats-server processes on free ports.

``NatsServer`` is one standalone server with JetStream; ``NatsCluster`` is a
routed cluster with JetStream that is ready once it has a meta leader. Both
are configured by `colony.shared.natsd`, exactly like `colony up` configures
a node's server, and both stop their processes whatever happens.

``VoterProcesses`` runs Raft voters as `python -m colony.consensus` processes
on a ``NatsCluster``. ``wait_for`` (blocking) and ``poll`` (async) wait for a
condition with a timeout, instead of sleeping and hoping. ``example_metrics``
is a valid ``NodeMetrics`` for tests that need one.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from colony.shared import natsd
from colony.shared.config import Config, ConsensusSettings, NatsSettings, NodeSettings
from colony.shared.config import dumps as config_dumps
from colony.shared.messages import HostMetrics, NodeMetrics, Resources


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05):
    """Poll `condition` until it returns something truthy; fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


async def poll(condition: Callable[[], object], timeout: float, what: str, every: float = 0.02):
    """`wait_for` for async tests: poll without blocking the event loop.

    `condition` may be a plain function or one returning an awaitable (a query).
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)


class NatsServer:
    """One real nats-server process."""

    def __init__(self, workdir: Path, config: natsd.ServerConfig) -> None:
        self.workdir = Path(workdir)
        self.config = config
        self.conf_file = self.workdir / f"{config.name}.conf"
        self.log_file = self.workdir / f"{config.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def standalone(cls, workdir: Path, name: str = "s1") -> NatsServer:
        client, cluster, http = natsd.free_ports(3)
        ports = natsd.ServerPorts(client, cluster, http)
        return cls(workdir, natsd.ServerConfig(name, ports, Path(workdir) / name))

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_file.write_text(self.config.render())
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [natsd.binary(), "-c", str(self.conf_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._ready, timeout, f"nats-server {self.config.name} on {self.url}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"nats-server {self.config.name} exited: {' | '.join(tail)}")
        return natsd.port_open("127.0.0.1", self.config.ports.client)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.running:
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def node_config(self, node_id: str = "node-t") -> Config:
        """A node config whose services talk to this server."""
        return Config(
            node=NodeSettings(id=node_id, name=node_id, dir=str(self.workdir / node_id)),
            nats=NatsSettings(servers=[self.url], connect_timeout=1.0, ping_interval=1.0),
        )


class NatsCluster:
    """A routed cluster of real nats-servers with JetStream."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        ports = natsd.free_ports(size * 3)
        routes = [ports[size + i] for i in range(size)]
        self.servers = [
            NatsServer(
                workdir,
                natsd.ServerConfig(
                    f"s{i + 1}",
                    natsd.ServerPorts(ports[i], ports[size + i], ports[2 * size + i]),
                    Path(workdir) / f"s{i + 1}",
                    routes=routes,
                ),
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self, timeout: float = 30.0) -> NatsCluster:
        try:
            for server in self.servers:
                server.start()
            self.wait_for_leader(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_leader(self, timeout: float = 30.0) -> str:
        def leader() -> str | None:
            seen = {natsd.jetstream_leader(s.config.http_url) for s in self.servers if s.running}
            seen.discard(None)
            return seen.pop() if len(seen) == 1 else None

        return wait_for(leader, timeout, "a JetStream meta leader")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def example_metrics(node: str = "n1", seq: int = 1, **fields: object) -> NodeMetrics:
    """A valid NodeMetrics with small made-up figures, for tests."""
    zero = Resources()
    values: dict[str, object] = {
        "node": node, "name": node, "seq": seq, "interval": 1.0, "node_started": 0.0,
        "host": HostMetrics(
            cpu_count=2, cpu_percent=1.0, load=(0.0, 0.0, 0.0), memory_total=1,
            memory_available=1, disk_path="/", disk_total=1, disk_free=1, process_count=1,
        ),
        "processes": [], "capacity": zero, "used": zero, "free": zero,
    }  # fmt: skip
    return NodeMetrics(**{**values, **fields})


class VoterProcesses:
    """Raft voters as real `python -m colony.consensus` processes, one per server of a
    NatsCluster, each on a state dir of its own that survives a restart; logs in workdir."""

    def __init__(self, cluster: NatsCluster, workdir: Path, prefix: str = "voter") -> None:
        self.ids = [f"{prefix}-{i}" for i in range(1, len(cluster.servers) + 1)]
        self.server_of = dict(zip(self.ids, cluster.servers, strict=True))
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.secret = self.workdir / "cluster.secret"
        self.secret.write_text("a-cluster-secret-for-tests-only")
        self.secret.chmod(0o600)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        config = self.server_of[node].node_config(node)
        config.node.dir = str(self.workdir / node)
        config.consensus = ConsensusSettings(voters=self.ids, secret_file=str(self.secret))
        config.log.level = "warning"
        path = self.workdir / f"{node}.toml"
        path.write_text(config_dumps(config))
        argv = [sys.executable, "-m", "colony.consensus", "--config", str(path)]
        with open(self.workdir / f"{node}.log", "ab") as log:
            self.processes[node] = subprocess.Popen(argv, stdout=log, stderr=log)

    def kill(self, node: str) -> None:
        """kill -9, and reap it."""
        process = self.processes.pop(node)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def kill_all(self) -> None:
        for node in list(self.processes):
            self.kill(node)
