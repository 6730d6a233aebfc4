"""Test helper: whole Colony nodes on hosts in network namespaces, to cut apart and heal.

Each host (`colony.harness.netns`) runs a node as `colony up` runs one: its
supervisor (`python -m colony.bootstrapper --node-dir DIR`), which starts the
node's nats-server (routed to every other host's) and every service the node
runs — membership, consensus (a voter on the hosts listed as voters, standing
by on the others), the curator and the node agent with its instances. Every
request is made inside a host, through that host's own server: the real CLI
(`colony ... --server URL`) and `colony.harness.jobs` for reads of the management
database. Nothing talks to the hosts' addresses from the root namespace (that
traffic would leave the machine). Needs root.

    net = netns.SplitNetwork(["h1", "h2", "h3"], ["h4"]).create()
    nodes = NetnsNodes(net, workdir, voters=["h1", "h2", "h3"])
    nodes.start()
    nodes.colony("h1", "job", "run", "web.yaml", "--detach")
    nodes.instances("h1", "web")
    net.partition()
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from colony.harness import jobs, netns
from colony.shared import natsd
from colony.shared.config import Config, ConsensusSettings, NatsSettings, NodeSettings, dumps
from colony.shared.messages import InstanceRecord, NodeRecord
from colony.shared.statedir import NodeDir

_script = Path(sys.executable).with_name("colony")
COLONY = [str(_script)] if _script.exists() else [sys.executable, "-m", "colony.cli"]
PORTS = natsd.ServerPorts(client=4222, cluster=6222, http=8222)
"""The same on every host: each has its own network namespace."""
ROUTE_PING = 1.0
"""Seconds between route pings: a cut route is closed within ~3 s (nats' default: ~4 min),
and re-dialled until the cable is back."""
SECRET = "a-cluster-secret-for-the-partition-test"
CAPACITY = (1.0, 2**30)
"""Cores and bytes each host declares: the same everywhere, whatever this machine has."""


class NetnsNodes(netns.HostProcesses):
    """A Colony node (supervisor, nats-server, services, agent) on every host.

    `processes`: (host, "supervisor") -> the supervisor; its children log to the
    node's folder, ``workdir/<host>/node/logs``.
    """

    def __init__(self, net: netns.SplitNetwork, workdir: Path, voters: list[str]) -> None:
        super().__init__(net, workdir, PORTS)
        self.voters = voters

    def node_dir(self, host: str) -> NodeDir:
        return NodeDir(self.workdir / host / "node")

    def start(self, timeout: float = 30) -> None:
        secret = self.workdir / "cluster.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        cpu, memory = CAPACITY
        for host in self.net.hosts:
            node = self.node_dir(host)
            node.create()
            node.nats_conf.write_text(self.server(host, node.nats_store, ROUTE_PING).render())
            config = Config(
                node=NodeSettings(
                    id=host,
                    name=host,
                    dir=str(node.path),
                    capacity_cpu=cpu,
                    capacity_memory=memory,
                ),
                nats=NatsSettings(servers=[self.url(host)], connect_timeout=1.0, ping_interval=1.0),
                consensus=ConsensusSettings(voters=self.voters, secret_file=str(secret)),
            )
            node.config_file.write_text(dumps(config))
            argv = [sys.executable, "-m", "colony.bootstrapper", "--node-dir", str(node.path)]
            self.spawn(host, argv, "supervisor")
        self.await_servers(timeout)

    # --- asking from inside a host ---------------------------------------------------

    def colony(self, host: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        """`colony ARGS` run inside `host`, through its own server; whatever it exits with."""
        argv = [*COLONY, *args, "--server", self.url(host), "--timeout", f"{timeout:g}"]
        return self.net.run(host, argv, timeout=timeout + 30)

    def read(self, host: str, kind: str, **where: str) -> list[dict] | None:
        """Every object of `kind` (with these field values) as `host` reads it from the
        voters; None while it gets no answer (cut off from a majority, say)."""
        argv = [*jobs.ARGV, self.url(host), ",".join(self.voters), kind]
        argv += [f"--where={field}={value}" for field, value in where.items()]
        done = self.net.run(host, argv, timeout=40)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def instances(self, host: str, job: str) -> list[InstanceRecord] | None:
        found = self.read(host, "instances", job=job)
        return None if found is None else jobs.records(found, InstanceRecord)

    def nodes(self, host: str) -> dict[str, NodeRecord] | None:
        found = self.read(host, "nodes")
        return None if found is None else {n.node: n for n in jobs.records(found, NodeRecord)}
