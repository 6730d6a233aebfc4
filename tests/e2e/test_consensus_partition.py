"""End to end: a real network partition cuts one Raft voter off from the other two, then heals.

Three hosts, each a Linux network namespace with its own nats-server (routed
to the other two) and one consensus voter, hang off a switch
(`colony.shared.netns`). Once they agree on a leader, one host is re-plugged
alone into the second switch and the cable between the switches is pulled:
the cut-off voter is either the leader (it must step down, and the two
others elect a new leader) or a follower (the leader carries on). Either way
the lone voter must refuse writes clearly and still answer stale reads, while
the majority keeps taking writes. With the cable back it must catch up by
itself, with no restart, to the very same database.

Every request is made inside a host, through that host's own server: by
`colony kv`, and by a small probe for a voter's Raft status and database
digest (`colony status` lists only the nodes of a state dir or of the metrics
stream, neither of which exists here). Nothing here talks to the hosts'
addresses from the root namespace (that traffic would leave the machine).
Needs root; skipped otherwise.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from colony.shared import natsd, netns
from colony.shared.config import Config, ConsensusSettings, NatsSettings, NodeSettings, dumps
from colony.shared.testing import wait_for

pytestmark = pytest.mark.e2e
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

FORM, STEP_DOWN, ELECT, CATCH_UP = 30, 10, 15, 30
"""Seconds allowed to elect a first leader, for a cut-off leader to step down, for the
majority to have a leader after the cut, for the healed voter to catch up."""
REFUSAL = 3
"""`--timeout` of a request that must be refused: seconds the CLI keeps retrying."""
NO_QUORUM = re.compile(r"no quorum|no leader")
LOST = re.compile(r"no quorum|no leader|the leader changed")
"""A proposal caught by the cut may also learn that the leader it was handed to is gone."""

PROBE = """
import asyncio, json, sys
from colony.shared import subjects
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.messages import ConsensusStatusRequest, DigestRequest, to_builtins

async def main(url, voter, what):
    bus = await connect(NatsSettings(servers=[url], connect_timeout=1.0), "probe", reconnect=False)
    try:
        if what == "status":
            reply = await bus.request(subjects.consensus_status(voter), ConsensusStatusRequest(), 1)
        else:
            reply = await bus.request(subjects.consensus_digest(voter), DigestRequest(), 5)
        print(json.dumps(to_builtins(reply)))
    finally:
        await bus.close()

asyncio.run(main(*sys.argv[1:]))
"""
"""Prints one voter's Raft status or database digest as JSON; exits non-zero if it is silent."""

PROPOSE_ON_SIGNAL = """
import asyncio, json, signal, sys, time
from colony.shared import subjects
from colony.shared.bus import BusError, RemoteError, connect
from colony.shared.config import NatsSettings
from colony.shared.messages import KvPut, Proposal, ProposeRequest, new_id, to_builtins

async def main(url, voter, key, value, epoch):
    bus = await connect(NatsSettings(servers=[url], connect_timeout=1.0), "proposer")
    go = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
    print("ready", flush=True)
    await go.wait()
    sent = time.monotonic()
    request = ProposeRequest(proposals=[Proposal(new_id(), KvPut(key, value), int(epoch))])
    try:
        answer = {"reply": to_builtins(await bus.request(subjects.propose(voter), request, 15))}
    except RemoteError as e:
        answer = {"code": e.code, "error": e.description}
    except BusError as e:
        answer = {"error": str(e)}
    print(json.dumps({**answer, "seconds": time.monotonic() - sent}), flush=True)
    await bus.close()

asyncio.run(main(*sys.argv[1:]))
"""
"""Proposes KEY=VALUE (on behalf of the manager at EPOCH, 0: not) to one voter the moment it
gets SIGUSR1 (no start-up in the way), then prints the answer as JSON and exits; prints
'ready' once connected."""

WATCH_MANAGER = """
import asyncio, json, sys
from colony.shared import subjects
from colony.shared.bus import connect
from colony.shared.config import NatsSettings
from colony.shared.messages import to_builtins

async def main(url):
    bus = await connect(NatsSettings(servers=[url], connect_timeout=1.0), "watcher")
    events = await bus.subscribe(subjects.manager_acting())
    print("ready", flush=True)
    async for event in events:
        print(json.dumps(to_builtins(event)), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""
"""Prints every `manager.acting` event its host's server carries, one JSON line each."""

ROUTES = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/routez", timeout=1) as reply:
    print(json.load(reply)["num_routes"])
"""
"""Prints how many routes a nats-server has open (its monitoring port)."""


class Voters(netns.HostProcesses):
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
        argv = [sys.executable, "-c", PROBE, self.url(host), host, what]
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
        argv = [sys.executable, "-c", PROPOSE_ON_SIGNAL, self.url(host), host, key, value]
        argv.append(str(epoch))
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
        self.spawn(host, [sys.executable, "-c", WATCH_MANAGER, self.url(host)], "manager-events")
        lines = lambda: log.read_text().split("\n")[:-1]  # noqa: E731 (complete lines only)
        wait_for(lambda: log.exists() and lines()[:1] == ["ready"], 20, f"a watcher on {host}")
        return lambda: [json.loads(line) for line in lines()[1:]]

    def manager(self, hosts: list[str]) -> tuple[str, int] | None:
        """(holder, epoch) once exactly one of `hosts` acts and all of them agree on the lease."""
        views = [v for v in self.statuses(hosts).values() if v]
        acting = [v["node"] for v in views if v["acting"]]
        leases = {(v["manager"]["holder"], v["manager"]["epoch"]) for v in views if v["manager"]}
        if len(views) == len(hosts) and len(acting) == 1 and len(leases) == 1:
            [(holder, epoch)] = leases
            return (holder, epoch) if holder == acting[0] else None
        return None

    def routes(self, host: str) -> int | None:
        argv = [sys.executable, "-c", ROUTES, f"http://{self.net.hosts[host].address}:{PORTS.http}"]
        done = self.net.run(host, argv, timeout=30)
        return int(done.stdout) if done.returncode == 0 else None

    def await_leader(self, hosts: list[str], timeout: float, what: str) -> tuple[str, int]:
        """Poll until every voter in `hosts` names the same leader, one of them that says so.

        Returns the leader and its term.
        """
        seen: dict[str, dict | None] = {}

        def agreed() -> tuple[str, int] | None:
            nonlocal seen
            self.check_running()
            seen = self.statuses(hosts)
            named = {view["leader"] if view else None for view in seen.values()}
            if len(named) != 1:
                return None
            [leader] = named
            view = seen.get(leader) if leader else None
            return (leader, view["term"]) if view and view["role"] == "leader" else None

        try:
            return wait_for(agreed, timeout, what, every=0.2)
        except TimeoutError as e:
            shown = {h: v and (v["role"], v["leader"], v["term"]) for h, v in seen.items()}
            raise AssertionError(f"{e}; last views: {shown}; logs in {self.workdir}") from None

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


@pytest.fixture
def network():
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"the partition test needs network namespaces: {reason}")
    # All on switch a to start with; the one to be cut off is moved to b once a leader is known.
    net = netns.SplitNetwork(HOSTS, []).create()  # undoes itself if it fails
    try:
        yield net
    finally:
        net.destroy()  # every process in the namespaces, then the namespaces


@pytest.fixture
def voters(network, tmp_path):
    group = Voters(network, tmp_path)
    group.start()  # whatever happens, `network` kills what it started
    return group


def parallel(call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`call` on every item at once (each is a process in a namespace); the results in order."""
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def arrange(net: netns.SplitNetwork, voters: Voters, cut_off: str) -> tuple[str, str, int]:
    """Put the leader (cut_off "leader") or a follower alone on switch b.

    Returns that host, and the leader and its term (the same after the move as before).
    """
    for _ in range(3):
        leader, term = voters.await_leader(HOSTS, FORM, "all three voters to agree on a leader")
        lone = leader if cut_off == "leader" else next(h for h in HOSTS if h != leader)
        for host in HOSTS:
            side = "b" if host == lone else "a"
            if net.hosts[host].side != side:
                net.move(host, side)
        # Re-plugging takes the switches a moment to learn: it must not have cost the lead.
        if voters.await_leader(HOSTS, ELECT, "the voters to agree after the move") == (
            leader,
            term,
        ):
            return lone, leader, term
    raise AssertionError(f"the leader kept changing while {cut_off} was being moved to switch b")


@pytest.mark.parametrize("cut_off", ["leader", "follower"])
def test_a_cut_off_voter_refuses_writes_serves_stale_reads_and_catches_up_on_healing(
    network, voters, cut_off
):
    timeline: dict[str, float] = {}
    started = time.monotonic()
    voters.await_leader(HOSTS, FORM, "all three voters to agree on a first leader")
    timeline["formed"] = time.monotonic() - started

    # Written before the cut, and applied everywhere (the lone voter must hold it).
    voters.put(HOSTS[0], "before", "the cut")
    wait_for(
        lambda: parallel(lambda h: voters.get(h, "before", stale=True), HOSTS) == ["the cut"] * 3,
        10,
        "every voter to hold what was written before the cut",
    )

    lone, leader, term = arrange(network, voters, cut_off)
    majority = [h for h in HOSTS if h != lone]
    assert network.side("b") == [lone] and network.side("a") == majority

    # Proposed the instant the cable is pulled, while the lone voter still takes itself for
    # the leader (or a follower of one): the entry may be appended, it must not commit.
    propose_at_the_cut = voters.proposer(lone, "at-the-cut", "refused")
    with ThreadPoolExecutor(1) as pool:
        cut = time.monotonic()
        network.partition()
        at_the_cut = pool.submit(propose_at_the_cut)
        if lone == leader:
            wait_for(
                lambda: (v := voters.status(lone)) and v["role"] != "leader",
                STEP_DOWN,
                f"the cut-off leader {lone} to step down",
                every=0.1,
            )
            timeline["stepped down"] = time.monotonic() - cut
        chief, chief_term = voters.await_leader(majority, ELECT, f"{majority} to agree on a leader")
        timeline["majority led"] = time.monotonic() - cut
        if lone != leader:  # its campaigns reach no one: the leader carries on, in its term
            assert (chief, chief_term) == (leader, term), "the cut-off follower disturbed the lead"
        else:
            assert chief_term > term
        wait_for(lambda: voters.routes(lone) == 0, 15, f"{lone}'s nats-server to close its routes")
        timeline["routes closed"] = time.monotonic() - cut
        answer = at_the_cut.result()
    assert answer.get("code") == 503 and LOST.search(answer["error"]), answer
    timeline["refused at the cut"] = answer["seconds"]

    # The lone voter, settled: writes and linearizable reads refused, saying why; stale
    # reads answer.
    asked = time.monotonic()
    errors = parallel(
        lambda args: voters.refused(lone, *args), [("put", "during", "refused"), ("get", "before")]
    )
    timeline["refused"] = time.monotonic() - asked
    for error in errors:
        assert NO_QUORUM.search(error), error
    assert voters.get(lone, "before", stale=True) == "the cut"

    # The majority: writes through either of its servers, read back through both.
    written = {f"after-{i}": f"value {i}" for i in range(4)}
    for i, (key, value) in enumerate(written.items()):
        voters.put(majority[i % 2], key, value)
    for key in [*written, "during", "at-the-cut"]:
        expected = written.get(key)  # and none of what the lone voter refused
        assert parallel(lambda h, k=key: voters.get(h, k), majority) == [expected] * 2, key
    assert voters.get(lone, "after-0", stale=True) is None  # it really is cut off
    view = voters.status(lone)
    assert view is not None and view["role"] != "leader" and not view["has_quorum"], view

    healed = time.monotonic()
    network.heal()
    wait_for(
        lambda: voters.get(lone, "after-3", stale=True) == "value 3",
        CATCH_UP,
        f"{lone} to catch up with the majority's writes",
        every=0.1,
    )
    timeline["caught up"] = time.monotonic() - healed
    after, after_term = voters.await_leader(HOSTS, ELECT, "all three voters to agree again")
    timeline["all led"] = time.monotonic() - healed
    keys = [*written, "during", "at-the-cut"]
    held = dict(zip(keys, parallel(lambda k: voters.get(lone, k, stale=True), keys), strict=True))
    assert held == {**written, "during": None, "at-the-cut": None}  # not what it refused
    assert voters.get(lone, "after-0") == "value 0"  # linearizable through it again

    def identical() -> dict | None:
        found = voters.digests()
        same = None not in found.values() and len({sha for _, sha in found.values()}) == 1
        return found if same else None

    wait_for(identical, CATCH_UP, "the three databases to be identical", every=0.2)
    voters.check_running()  # healed by Raft alone: every process is the one started
    timings = {k: round(v, 2) for k, v in timeline.items()}
    print(
        f"\n{cut_off} {lone} cut off; leaders (terms) {leader} ({term}) -> {chief} ({chief_term})"
        f" -> {after} ({after_term}); {lone}'s term while cut off {view['term']}; "
        f"seconds: {timings}; refused at the cut: {answer['error']}"
    )


def test_a_cut_off_manager_stops_acting_before_a_new_one_starts_and_its_epoch_is_refused(
    network, voters
):
    voters.await_leader(HOSTS, FORM, "all three voters to agree on a first leader")
    wait_for(lambda: voters.manager(HOSTS), FORM, "one acting manager")
    lone, _leader, _term = arrange(network, voters, "leader")  # the manager is the leader
    holder, epoch = wait_for(lambda: voters.manager(HOSTS), ELECT, "the manager after the move")
    assert holder == lone
    majority = [h for h in HOSTS if h != lone]
    heard_alone, heard_by_majority = voters.watch_manager(lone), voters.watch_manager(majority[0])
    stale_during = voters.proposer(lone, "stale-during", "refused", epoch)

    network.partition()
    chief, new_epoch = wait_for(lambda: voters.manager(majority), ELECT, "a majority manager")
    assert chief in majority and new_epoch > epoch
    during = stale_during()
    assert during.get("code") == 503 and LOST.search(during["error"]), during

    stopped = [e for e in heard_alone() if e["node"] == lone and not e["acting"]]
    started = [e for e in heard_by_majority() if e["node"] == chief and e["acting"]]
    assert stopped and stopped[0]["epoch"] == epoch, heard_alone()
    assert started and started[0]["epoch"] == new_epoch, heard_by_majority()
    # One kernel clock for every namespace: the wall times compare.
    gap = started[0]["ts"] - stopped[0]["ts"]
    assert gap > 0, f"{chief} acted {-gap:.3f} s before {lone} stopped"

    network.heal()
    wait_for(
        lambda: (v := voters.status(lone)) and v["role"] == "follower" and v["leader"] == chief,
        CATCH_UP,
        f"{lone} to rejoin as a follower of {chief}",
        every=0.2,
    )
    stale_after = voters.proposer(lone, "stale-after", "refused", epoch)()
    [refused] = stale_after["reply"]["outcomes"]
    assert not refused["ok"]
    assert refused["error"].startswith(f"stale epoch {epoch}: the manager lease is at epoch")
    current = voters.proposer(lone, "current", "applied", new_epoch)()
    assert current["reply"]["outcomes"][0]["ok"]  # through the old manager, at the new epoch
    for key in ("stale-during", "stale-after"):
        assert voters.get(chief, key) is None
    print(
        f"\nmanager {lone} (epoch {epoch}) cut off: it stopped acting {gap:.2f} s before "
        f"{chief} started (epoch {new_epoch})"
    )
