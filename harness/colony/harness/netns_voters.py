"""Test helper: three Raft voters on hosts in network namespaces, to cut apart and heal.

Each host (`colony.harness.netns`) runs its own nats-server, routed to the
others, and one `python -m colony.consensus` voter connected to it. Every
request is made inside a host, through that host's own server: by
`colony kv`, and by `colony.harness.probe` processes for a voter's Raft
status, database digest, a proposal sent on a signal, or the `manager.acting`
events its server carries. Nothing talks to the hosts' addresses from the root
namespace (that traffic would leave the machine). Used by the partition
tests and bench/failover; needs root.

    net = netns.SplitNetwork(HOSTS, []).create()
    voters = NetnsVoters(net, workdir)
    voters.start()
    lone, leader, term = arrange(net, voters, "leader")  # the leader alone on switch b
    net.partition()
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import msgspec

from colony.harness import netns, probe
from colony.harness.processes import wait_for
from colony.shared import natsd, subjects
from colony.shared.cluster import Statuses
from colony.shared.config import Config, ConsensusSettings, NatsSettings, NodeSettings, dumps
from colony.shared.messages import ConsensusStatus

T, R = TypeVar("T"), TypeVar("R")

_script = Path(sys.executable).with_name("colony")
COLONY = [str(_script)] if _script.exists() else [sys.executable, "-m", "colony.cli"]
HOSTS = ["h1", "h2", "h3"]
"""Host names, and the ids of the voters on them."""
PORTS = natsd.ServerPorts(client=4222, cluster=6222, http=8222)
"""The same on every host: each has its own network namespace."""
ROUTE_PING = 1.0
"""Seconds between route pings: a cut route is closed within ~3 s (nats' default: ~4 min)."""
SECRET = "a-cluster-secret-for-the-partition-test"
REFUSAL = 3
"""`--timeout` of a request that must be refused: seconds the CLI keeps retrying."""


class NetnsVoters(netns.HostProcesses):
    """One nats-server and one consensus voter on every host.

    `processes`: (host, what) -> the process: nats, consensus.
    """

    def __init__(self, net: netns.SplitNetwork, workdir: Path) -> None:
        super().__init__(net, workdir, PORTS)

    def start(self) -> None:
        secret = self.workdir / "cluster.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        self.start_nats(ROUTE_PING)
        for host in HOSTS:
            config = Config(
                node=NodeSettings(id=host, name=host, dir=str(self.workdir / host / "node")),
                nats=NatsSettings(servers=[self.url(host)], connect_timeout=1.0, ping_interval=1.0),
                consensus=ConsensusSettings(voters=HOSTS, secret_file=str(secret)),
            )
            (self.workdir / host / "node.toml").write_text(dumps(config))
            argv = [sys.executable, "-m", "colony.consensus", "--config"]
            self.spawn(host, [*argv, str(self.workdir / host / "node.toml")], "consensus")

    # --- asking a host's own voter, from inside the host -----------------------------

    def _probe(self, host: str, what: str) -> dict | None:
        argv = [*probe.ARGV, what, self.url(host), host]
        done = self.net.run(host, argv, timeout=30)
        return json.loads(done.stdout) if done.returncode == 0 else None  # None: silent

    def status(self, host: str) -> dict | None:
        """`host`'s voter's Raft view (role, leader, term, has_quorum...), None if silent."""
        return self._probe(host, "status")

    def statuses(self, hosts: list[str]) -> dict[str, dict | None]:
        return dict(zip(hosts, parallel(self.status, hosts), strict=True))

    def digests(self) -> dict[str, tuple[int, str] | None]:
        """Each voter's (applied index, sha256 of its database's SQL dump)."""
        found = dict(zip(HOSTS, parallel(lambda h: self._probe(h, "digest"), HOSTS), strict=True))
        return {h: d and (d["applied_index"], d["sha256"]) for h, d in found.items()}

    def proposer(self, host: str, key: str, value: str, epoch: int = 0) -> Callable[[], dict]:
        """A proposal of key=value, to `host`'s voter, ready to go: call it to send it at once.

        The call returns the voter's answer (a "reply", or an "error" with its "code") and
        the "seconds" it took.
        """
        log = self.log(host, f"proposer-{key}")
        argv = [*probe.ARGV, "propose", self.url(host), host, key, value, "--epoch", str(epoch)]
        process = self.net.popen(host, argv, log)  # not in `processes`: it exits when done
        lines = lambda: log.read_text().split("\n")[:-1]  # noqa: E731 (complete lines only)
        wait_for(lambda: lines() == ["ready"] or process.poll() is not None, 20, "the proposer")
        assert process.poll() is None, log.read_text()

        def send() -> dict:
            process.send_signal(signal.SIGUSR1)
            wait_for(lambda: len(lines()) == 2, 30, f"{host} to answer the proposal of {key}")
            return json.loads(lines()[1])

        return send

    def watch_manager(self, host: str) -> Callable[[], list[dict]]:
        """Start hearing `manager.acting` through `host`'s server; the call returns what
        was heard so far."""
        log = self.log(host, "manager-events")
        watch = [*probe.ARGV, "watch", self.url(host), subjects.manager_acting().name]
        self.spawn(host, watch, "manager-events")
        lines = lambda: log.read_text().split("\n")[:-1]  # noqa: E731 (complete lines only)
        wait_for(lambda: log.exists() and lines()[:1] == ["ready"], 20, f"a watcher on {host}")
        return lambda: [json.loads(line) for line in lines()[1:]]

    def looked(self, hosts: list[str]) -> Statuses:
        """The voters' statuses, typed, to read as the cluster client does (None: silent)."""
        found = self.statuses(hosts).items()
        return Statuses({h: v and msgspec.convert(v, ConsensusStatus) for h, v in found})

    def manager(self, hosts: list[str]) -> tuple[str, int] | None:
        """(holder, epoch) once every one of `hosts` answers, exactly one acts, and all of
        them agree on the lease."""
        looked = self.looked(hosts)
        chief = None if looked.unreachable else looked.manager()
        return (chief.node, chief.epoch) if chief else None

    def routes(self, host: str) -> int | None:
        argv = [*probe.ARGV, "routes", f"http://{self.net.hosts[host].address}:{PORTS.http}"]
        done = self.net.run(host, argv, timeout=30)
        return int(done.stdout) if done.returncode == 0 else None

    def await_leader(self, hosts: list[str], timeout: float, what: str) -> tuple[str, int]:
        """Poll until every voter in `hosts` answers following the same leader, in its term.

        Returns the leader and its term.
        """
        seen = Statuses({})

        def agreed() -> tuple[str, int] | None:
            nonlocal seen
            self.check_running()
            seen = self.looked(hosts)
            top = None if seen.unreachable else seen.leader()
            return (top.node, top.term) if top else None

        try:
            return wait_for(agreed, timeout, what, every=0.2)
        except TimeoutError as e:
            raise AssertionError(
                f"{e}; last views: {seen.describe()}; logs in {self.workdir}"
            ) from None

    # --- the key-value table, through `colony kv` inside a host ----------------------

    def kv(self, host: str, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """`colony kv ARGS` run inside `host`, through its own server."""
        argv = [*COLONY, "kv", *args, "--server", self.url(host), "--json"]
        return self.net.run(host, [*argv, "--timeout", f"{timeout:g}"], timeout=timeout + 30)

    def put(self, host: str, key: str, value: str) -> dict:
        done = self.kv(host, "put", key, value)
        assert done.returncode == 0, f"put {key} through {host}: {done.stderr}"
        reply = json.loads(done.stdout)
        assert [o["ok"] for o in reply["outcomes"]] == [True], reply
        return reply

    def get(self, host: str, key: str, stale: bool = False) -> str | None:
        done = self.kv(host, "get", key, *(["--stale"] if stale else []))
        assert done.returncode == 0, f"get {key} through {host}: {done.stderr}"
        return json.loads(done.stdout)["value"]

    def refused(self, host: str, *args: str) -> str:
        """`colony kv ARGS` through `host`, which must fail; its error, on one line."""
        done = self.kv(host, *args, timeout=REFUSAL)
        assert done.returncode != 0, f"{args} through {host} answered: {done.stdout}"
        return " ".join(done.stderr.split())  # the console wraps long lines


def parallel(call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`call` on every item at once (each is a process in a namespace); the results in order."""
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def arrange(
    net: netns.SplitNetwork, voters: NetnsVoters, cut_off: str, form: float = 30, elect: float = 15
) -> tuple[str, str, int]:
    """Put the leader (cut_off "leader") or a follower alone on switch b.

    Returns that host, and the leader and its term (the same after the move as before).
    """
    for _ in range(3):
        leader, term = voters.await_leader(HOSTS, form, "all three voters to agree on a leader")
        lone = leader if cut_off == "leader" else next(h for h in HOSTS if h != leader)
        for host in HOSTS:
            side = "b" if host == lone else "a"
            if net.hosts[host].side != side:
                net.move(host, side)
        # Re-plugging takes the switches a moment to learn: it must not have cost the lead.
        if voters.await_leader(HOSTS, elect, "the voters to agree after the move") == (
            leader,
            term,
        ):
            return lone, leader, term
    raise AssertionError(f"the leader kept changing while {cut_off} was being moved to switch b")
