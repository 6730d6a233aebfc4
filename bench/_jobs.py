"""What bench/schedule and bench/coldstart share: real voters, node services, membership played.

`site()` starts a 3-server NATS cluster (`NatsCluster`, JetStream on) and three
`python -m colony.consensus` voters (`VoterProcesses`), and waits for a manager.
On it, `Site.start` runs any node service (`python -m colony.curator`, the node
agent) as its supervisor would: its own config file, its node's server, the
voters and the cluster secret. `Members` answers for membership, which these
benches do not run: the view a curator asks for, and the change events it
listens to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil

from bench.consensus import stop_process
from colony.harness.processes import NatsCluster, NatsServer, VoterProcesses
from colony.shared import subjects
from colony.shared.bus import Bus, connect
from colony.shared.cluster import Cluster, Manager
from colony.shared.config import NatsSettings, validate
from colony.shared.config import dumps as config_dumps
from colony.shared.management import Management
from colony.shared.messages import (
    MemberChanged,
    MembersReply,
    MemberStatus,
    MemberView,
    NodeMeta,
    encode,
)
from colony.shared.signing import read_secret

ROOT = Path(__file__).parent.parent
LOGS = os.environ.get("COLONY_BENCH_LOGS", "")
"""A folder: the logs of the servers, voters and services are copied there at the end."""
PROFILE = os.environ.get("COLONY_BENCH_PROFILE", "")
"""A folder: the services started here run under cProfile and leave their profiles there."""


@dataclass
class Site:
    """Three voters on a NATS cluster, the services started on them, and a client."""

    workdir: Path
    cluster: NatsCluster
    voters: VoterProcesses
    bus: Bus
    management: Management
    secret: bytes
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """Started with `start`, by `<module> on <node>`."""

    def server(self, node: str) -> NatsServer:
        """The voter's own server; any other node's is the first one."""
        return self.voters.server_of.get(node, self.cluster.servers[0])

    def start(
        self, module: str, node: str, sections: dict[str, dict[str, Any]] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run `python -m <module>` as node `node`'s service; `sections` add config keys
        (validated: a key the config does not know is an error, named)."""
        config = msgspec.to_builtins(self.server(node).node_config(node))
        config["node"]["dir"] = str(self.workdir / "nodes" / node)
        config["consensus"] = {"voters": self.voters.ids, "secret_file": str(self.voters.secret)}
        config["log"] = {"level": "warning", "format": "json"}
        for section, keys in (sections or {}).items():
            config.setdefault(section, {}).update(keys)
        name = f"{module.rsplit('.', 1)[-1]}-{node}"
        path = self.workdir / f"{name}.toml"
        path.write_text(config_dumps(validate(config)))
        profile = []
        if PROFILE:  # where the time goes: read with `python -m pstats <file>`
            Path(PROFILE).mkdir(parents=True, exist_ok=True)
            profile = ["-m", "cProfile", "-o", str(Path(PROFILE) / f"{name}.prof")]
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, *profile, "-m", module, "--config", str(path)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        self.services[f"{module} on {node}"] = process
        return process

    def log_tail(self, module: str, node: str, lines: int = 5) -> str:
        path = self.workdir / f"{module.rsplit('.', 1)[-1]}-{node}.log"
        with contextlib.suppress(OSError):
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        return ""

    def check_running(self) -> None:
        """Raise, with its log's end, if a started service has exited."""
        for name, process in self.services.items():
            if process.poll() is not None:
                module, _, node = name.partition(" on ")
                raise RuntimeError(
                    f"{name} exited {process.returncode}: {self.log_tail(module, node)}"
                )

    async def manager(self, timeout: float = 60) -> Manager:
        return await Cluster(self.bus, self.voters.ids).wait_manager(timeout)

    def pids(self) -> dict[str, list[int]]:
        """The processes of the voters, of the servers and of the started services."""
        return {
            "voters": [p.pid for p in self.voters.processes.values()],
            "nats-servers": [s.process.pid for s in self.cluster.servers if s.process],
            "services": [p.pid for p in self.services.values()],
        }

    def stop(self) -> None:
        for process in self.services.values():
            stop_process(process)
        for node in list(self.voters.processes):
            stop_process(self.voters.processes.pop(node))


@contextlib.asynccontextmanager
async def site(prefix: str) -> AsyncIterator[Site]:
    """A NATS cluster and three voters in a temp dir, a manager acting; all stopped after."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        cluster = NatsCluster(workdir / "nats").start()
        voters = VoterProcesses(cluster, workdir / "voters")
        bus = None
        made = None
        try:
            for node in voters.ids:
                voters.start(node)
            bus = await connect(NatsSettings(servers=cluster.urls), "bench-jobs")
            made = Site(
                workdir,
                cluster,
                voters,
                bus,
                Management(bus, voters.ids, timeout=30),
                read_secret(voters.secret),
            )
            await made.manager()
            yield made
        finally:
            if bus is not None:
                await bus.close()
            if made is not None:
                made.stop()
            else:
                voters.kill_all()
            cluster.stop()
            if LOGS:
                keep_logs(workdir, Path(LOGS) / workdir.name)


def keep_logs(workdir: Path, kept: Path) -> None:
    for log in workdir.rglob("*.log"):
        (kept / log.relative_to(workdir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, kept / log.relative_to(workdir))


class Members:
    """Membership, played: each observer's view of the group (`subjects.members`), and a
    `MemberChanged` from each observer when a node joins or changes status. The observers
    are members from the start; other nodes once they `join`."""

    def __init__(self, bus: Bus, observers: Iterable[str]) -> None:
        self.bus = bus
        self.observers = list(observers)
        self.status: dict[str, MemberStatus] = dict.fromkeys(self.observers, "alive")
        self.since: dict[str, float] = dict.fromkeys(self.status, time.monotonic())
        self.incarnation = 1
        self._subscriptions: list[Any] = []

    async def start(self) -> Members:
        for observer in self.observers:
            subject = subjects.members(observer).name
            self._subscriptions.append(await self.bus.nc.subscribe(subject, cb=self._answer))
        await self.bus.flush()
        return self

    def view(self, observer: str) -> MembersReply:
        now = time.monotonic()
        return MembersReply(
            observer=observer,
            members=[
                MemberView(node, status, self.incarnation, NodeMeta(), now - self.since[node])
                for node, status in self.status.items()
            ],
        )

    async def _answer(self, msg) -> None:
        observer = msg.subject.rsplit(".", 1)[-1]
        await msg.respond(encode(self.view(observer)))

    async def set(self, nodes: Iterable[str], status: MemberStatus) -> None:
        """`nodes` are now `status` in every observer's view (a node not a member yet
        joins); each observer says so on the bus."""
        for node in nodes:
            previous, self.status[node] = self.status.get(node), status
            self.since[node] = time.monotonic()
            for observer in self.observers:
                event = MemberChanged(
                    observer=observer,
                    node=node,
                    status=status,
                    incarnation=self.incarnation,
                    previous=previous,
                )
                await self.bus.publish(subjects.member_changes(node), event)
        await self.bus.flush()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()


def rss(pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss
    return 0
