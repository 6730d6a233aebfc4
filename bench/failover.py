"""Failover: the manager lease after kill -9 and after a partition, voter replacement,
lease renewals under a busy core, and write outages while whole nodes die and come back.

1. Kill: a real `colony up --nodes 5` cluster (3 voters, 2 standing by). Each
   trial waits until it is settled (a manager acting at the Raft leader,
   three connected voters, the other nodes standing by), kills -9 every
   process of the manager's node (`NodeDir.crash`: its nats-server, its
   services, its supervisor), and times from the kill:
   - the new manager acting: its `manager.acting` event at a higher epoch,
     heard through a survivor's server. It is published once the new
     manager's `LeaseGrant` (its first committed write, fenced by the new
     epoch) is applied on its node;
   - the lost voter replaced: the new leader lists three connected voters,
     the killed node not among them (membership declared it dead, the
     leader removed it and promoted a standby node, which caught up).
   Then `colony up` restarts the killed node, which comes back standing by.
2. Partition: three hosts in network namespaces (`colony.harness.netns_voters`),
   each with its own nats-server and a voter; needs root. Each trial moves
   the manager's host alone onto the second switch and pulls the cable
   between the switches; the `manager.acting` events heard inside each host
   give, from the cut, when the cut-off manager stopped acting and when the
   majority's new manager started (one kernel clock: the wall times compare).
   Then the cable goes back and the three agree on the manager again.
3. Busy core: a `colony up --nodes 3` cluster and one process spinning on a
   core for SOAK seconds; every `manager.acting` event is kept: a stop, or a
   new epoch, is a lease lost without a fault.
4. Restarts: a `colony up --nodes 5 --voters 5` cluster for RESTARTS minutes,
   whole nodes killed -9 at random (any of them, the leader's too; never more
   than two down at once) and brought back by `colony up`, which restarts the
   nodes that are down; meanwhile writers commit without pause. The longest
   gap between two consecutive acknowledged writes is the longest write
   outage; the leader's count of voters is sampled throughout.

    COLONY_BENCH_TRIALS=20 COLONY_BENCH_SOAK=60 COLONY_BENCH_RESTARTS=5 python -m bench failover
    python -m bench.failover --minutes 1     # the restarts alone, printed, nothing written
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._cluster import Cluster, colony, local_cluster
from bench._report import quantile, say, table, verdict
from colony.harness import netns
from colony.harness.netns_voters import HOSTS, NetnsVoters, arrange
from colony.harness.processes import poll, wait_for
from colony.shared import subjects
from colony.shared.bus import Bus, connect
from colony.shared.cluster import Cluster as ClusterClient
from colony.shared.cluster import Manager, Statuses
from colony.shared.config import ConsensusSettings, NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    KvPut,
    ManagerActing,
)

TITLE = "Failover"
TRIALS = int(os.environ.get("COLONY_BENCH_TRIALS", "12"))
SOAK = float(os.environ.get("COLONY_BENCH_SOAK", "300"))
"""Seconds the busy-core run lasts."""
RESTARTS = float(os.environ.get("COLONY_BENCH_RESTARTS", "5"))
"""Minutes the kill-and-restart run lasts."""
BAR_OUTAGE = 2.0
"""Seconds: the longest write outage allowed while whole nodes die and come back."""
WRITERS = 4
"""Writers committing at once, each on its own connection: one whose request went to a
node just killed waits out its attempt, the others go on."""
BAR_FAILOVER = 1.5
"""Seconds, p95, from the fault to the new manager's first committed write (the brief)."""
LEASE = ConsensusSettings()
"""The lease timers every run here uses: the defaults."""


# --- listening to managers ------------------------------------------------------------


@dataclass
class Heard:
    """`manager.acting` events, each with the monotonic time it arrived."""

    events: list[tuple[float, ManagerActing]] = field(default_factory=list)

    def started(self, above: int) -> tuple[float, ManagerActing] | None:
        """The first start of acting at an epoch above `above`."""
        return next(((t, e) for t, e in self.events if e.acting and e.epoch > above), None)


@contextlib.asynccontextmanager
async def listening(url: str):
    """Hear every `manager.acting` event through the server at `url`."""
    bus = await connect(NatsSettings(servers=[url]), "bench-failover")
    heard = Heard()

    async def keep() -> None:
        async for event in await bus.subscribe(subjects.manager_acting()):
            heard.events.append((time.monotonic(), event))

    keeping = asyncio.create_task(keep())
    try:
        await bus.nc.flush()  # subscribed before anything happens
        yield bus, heard
    finally:
        keeping.cancel()
        await bus.close()


def settled(statuses: Statuses, voters: int) -> Manager | None:
    """The manager, once it acts at the leader of `voters` connected voters, none behind,
    every other voter follows it and every other node answers standing by."""
    top, chief = statuses.settled(voters), statuses.manager()
    if not top or not chief or chief.node != top.node or statuses.unreachable:
        return None
    others = [v for n, v in statuses.answered.items() if n not in top.voters]
    return chief if all(v.role == "standby" for v in others) else None


async def settle(bus: Bus, nodes: list[str], voters: int) -> Manager:
    return await ClusterClient(bus, nodes).until(
        lambda s: settled(s, voters), 120, f"settled group of {voters} voters"
    )


# --- 1. kill -9 of the manager's node ---------------------------------------------------


@dataclass
class Kill:
    elected: float
    """From the kill to a survivor leading at a higher term (it says so when asked)."""
    manager: float
    """From the kill to the new manager's acting event, at a higher epoch."""
    replaced: float
    """From the kill to three connected voters again, without the killed node."""
    epochs: tuple[int, int]


async def kill_trial(cluster: Cluster, trial: int) -> Kill:
    nodes = {n.read_id(): n for n in cluster.state.nodes()}
    ids = list(nodes)
    urls = [n.nats_url() for n in nodes.values()]
    async with contextlib.AsyncExitStack() as stack:
        control = await connect(NatsSettings(servers=urls), "bench-failover-control")
        stack.push_async_callback(control.close)
        before = await settle(control, ids, 3)
        victim, epoch = before.node, before.epoch
        survivor = next(n for i, n in nodes.items() if i != victim)
        bus, heard = await stack.enter_async_context(listening(survivor.nats_url()))

        survivors = ClusterClient(bus, [i for i in ids if i != victim])

        def elected(statuses: Statuses) -> bool:
            term = before.status.term
            return any(v.role == "leader" and v.term > term for v in statuses.answered.values())

        killed = time.monotonic()
        nodes[victim].crash()
        await survivors.until(elected, 30, "survivor leading at a higher term", every=0.01)
        leader = time.monotonic() - killed
        arrived, event = await poll(lambda: heard.started(epoch), 30, "a new manager")
        manager = arrived - killed

        def replaced(statuses: Statuses) -> bool:
            view = statuses.of[event.node]
            if view is None:
                return False
            connected = {v.node for v in view.voters if v.connected}
            return len(view.voters) == 3 and len(connected) == 3 and victim not in connected

        what = f"group with {victim} replaced"
        await survivors.until(replaced, 120, what, among=[event.node], every=0.05)
        replacement = time.monotonic() - killed
    colony("up", cluster.state, "--detach")  # the killed node comes back, standing by
    say(
        f"kill {trial + 1}/{TRIALS}: {nodes[victim].name} (epoch {epoch}) -> "
        f"{nodes[event.node].name} leading after {leader:.3f} s, acting at epoch {event.epoch} "
        f"after {manager:.3f} s; "
        f"voter replaced after {replacement:.2f} s"
    )
    return Kill(leader, manager, replacement, (epoch, event.epoch))


async def kill_trials() -> list[Kill]:
    with local_cluster(nodes=5) as cluster:
        say(f"colony up --nodes 5: {cluster.up_seconds:.1f} s")
        return [await kill_trial(cluster, trial) for trial in range(TRIALS)]


# --- 2. a partition cuts the manager off ------------------------------------------------


@dataclass
class Cut:
    stopped: float
    """From the cut to the cut-off manager's stop event (its own clock ran its lease out)."""
    started: float
    """From the cut to the majority's new manager's start event (its grant committed)."""


def partition_trial(net: netns.SplitNetwork, voters: NetnsVoters, heard: dict, trial: int) -> Cut:
    wait_for(lambda: voters.manager(HOSTS), 60, "one acting manager")
    lone, _leader, _term = arrange(net, voters, "leader")  # the manager is the Raft leader
    holder, epoch = wait_for(lambda: voters.manager(HOSTS), 30, "the manager after the move")
    if holder != lone:
        raise RuntimeError(f"the manager {holder} is not the Raft leader {lone}")
    majority = [h for h in HOSTS if h != lone]
    cut = time.time()
    net.partition()

    def event(host: str, acting: bool) -> dict | None:
        """The first event heard on `host`, since the cut, of the old manager stopping or a
        new one starting (re-plugging a host may have made it stop, then renew, before)."""
        wanted = (lambda e: e > epoch) if acting else (lambda e: e == epoch)
        found = (
            e
            for e in heard[host]()
            if e["ts"] >= cut and e["acting"] == acting and wanted(e["epoch"])
        )
        return next(found, None)

    stopped = wait_for(lambda: event(lone, False), 30, f"{lone} to stop acting")
    started = wait_for(lambda: event(majority[0], True), 30, "a new manager on the majority side")
    chief, new_epoch = started["node"], started["epoch"]
    net.heal()
    wait_for(lambda: voters.manager(HOSTS), 60, "the three to agree on the manager again")
    result = Cut(stopped["ts"] - cut, started["ts"] - cut)
    say(
        f"cut {trial + 1}/{TRIALS}: {lone} (epoch {epoch}) stopped acting {result.stopped:.3f} s "
        f"after the cut; {chief} acting at epoch {new_epoch} after {result.started:.3f} s"
    )
    return result


def partition_trials() -> list[Cut] | str:
    """The trials, or why they cannot run here."""
    if reason := netns.unavailable():
        return reason
    with tempfile.TemporaryDirectory(prefix="colony-bench-") as tmp:
        net = netns.SplitNetwork(HOSTS, []).create()
        try:
            voters = NetnsVoters(net, Path(tmp))
            voters.start()
            voters.await_leader(HOSTS, 30, "a first leader")
            heard = {h: voters.watch_manager(h) for h in HOSTS}
            return [partition_trial(net, voters, heard, trial) for trial in range(TRIALS)]
        finally:
            net.destroy()


# --- 3. lease renewals under a busy core ------------------------------------------------


@dataclass
class Soak:
    seconds: float
    heard: list[ManagerActing]

    @property
    def lost(self) -> int:
        """Stops, and grants after the first: each is a lease lost."""
        stops = sum(not e.acting for e in self.heard)
        return stops + len({e.epoch for e in self.heard if e.acting}) - 1

    @property
    def headroom(self) -> float:
        """The least time left on the lease in any acting event (renewals keep it near ttl)."""
        return min((e.valid_for for e in self.heard if e.acting), default=0.0)


async def soak() -> Soak:
    with local_cluster(nodes=3) as cluster:
        ids = [n.read_id() for n in cluster.state.nodes()]
        url = cluster.state.nodes()[0].nats_url()
        async with listening(url) as (bus, heard):
            await settle(bus, ids, 3)
            heard.events.clear()
            spinning = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "colony.harness.busy"
            )
            started = time.monotonic()
            try:
                while (elapsed := time.monotonic() - started) < SOAK:
                    await asyncio.sleep(min(30.0, SOAK - elapsed))
                    say(f"busy core: {elapsed:.0f} s, {len(heard.events)} manager events")
            finally:
                spinning.kill()
                await spinning.wait()
            return Soak(time.monotonic() - started, [e for _, e in heard.events])


# --- 4. whole nodes killed and restarted, writers committing -------------------------


@dataclass
class Restarts:
    seconds: float
    acked: list[float]
    """When each write was acknowledged (monotonic), in order."""
    failed: int
    """Writes refused or not answered within the client's deadline (retried as new ones)."""
    voters: list[tuple[float, int, int]]
    """(when, voters in the leader's group, of them connected) sampled while there was a leader."""
    events: list[tuple[float, str]]
    """(when, what): kills and restarts."""

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.acked, self.acked[1:], strict=False)]

    def longest(self, count: int = 1) -> list[tuple[float, float]]:
        """The `count` longest gaps between acknowledged writes, and when each began."""
        gaps = self.gaps
        order = sorted(range(len(gaps)), key=gaps.__getitem__, reverse=True)
        return [(gaps[i], self.acked[i]) for i in order[:count]]

    def before(self, when: float) -> str:
        """The last fault or restart before `when`, and how long before."""
        past = [(t, what) for t, what in self.events if t <= when]
        if not past:
            return "none before it"
        t, what = past[-1]
        return f"{when - t:.1f} s after {what}"


async def write_on(urls: list[str], voters: list[str], acked: list[float], until: float) -> int:
    """Commit one write after another until `until`; each acknowledgement's time goes to
    `acked`. Returns how many failed."""
    bus = await connect(NatsSettings(servers=urls), "bench-writer")
    management = Management(bus, voters, timeout=10)
    failed, n = 0, 0
    try:
        while time.monotonic() < until:
            n += 1
            # Each write to a voter chosen at random (then the next ones, on a refusal): a
            # writer that kept to one voter would wait out its attempt (2 s) whenever that
            # voter is killed mid-request, and writers that fail over together converge.
            management._next = random.randrange(len(voters))
            try:
                await management.propose(KvPut(f"writer-{id(management)}", str(n)))
                acked.append(time.monotonic())
            except ManagementError:
                failed += 1
    finally:
        await bus.close()
    return failed


async def sample_voters(urls: list[str], nodes: list[str], until: float) -> list:
    """The leader's group, twice a second: (when, voters, of them connected)."""
    bus = await connect(NatsSettings(servers=urls), "bench-voters")
    voters = ClusterClient(bus, nodes)
    seen = []
    try:
        while time.monotonic() < until:
            looked = (await voters.statuses()).answered.values()
            leaders = [v for v in looked if v.role == "leader"]
            if len(leaders) == 1:
                group = leaders[0].voters
                connected = sum(v.connected for v in group)
                seen.append((time.monotonic(), len(group), connected))
            await asyncio.sleep(0.5)
    finally:
        await bus.close()
    return seen


async def kill_and_restart(
    cluster: Cluster, bus: Bus, until: float, events: list, rng: random.Random
) -> None:
    """Kill -9 a random node (at most two down), or restart the down ones with `colony up`,
    every few seconds, until `until`; then restart what is down."""
    nodes = {n.read_id(): n for n in cluster.state.nodes()}
    down: list[str] = []
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(4, 12))  # a while for the cluster to settle
        if len(down) < 2 and (not down or rng.random() < 0.5):
            victim = rng.choice([i for i in nodes if i not in down])
            looked = (await ClusterClient(bus, list(nodes)).statuses()).answered.values()
            lead = next((v.node for v in looked if v.role == "leader"), None)
            nodes[victim].crash()
            down.append(victim)
            what = f"kill -9 of {nodes[victim].name}" + (" (the leader)" if victim == lead else "")
        else:
            events.append((time.monotonic(), f"colony up of {len(down)} down node(s)"))
            await asyncio.to_thread(colony, "up", cluster.state, "--detach")
            what = f"{', '.join(nodes[i].name for i in down)} back (colony up returned)"
            down = []
        events.append((time.monotonic(), what))
        say(f"restarts: {what}")
    if down:
        await asyncio.to_thread(colony, "up", cluster.state, "--detach")


async def restarts(minutes: float = RESTARTS, seed: int | None = None) -> Restarts:
    rng = random.Random(seed)
    with local_cluster(nodes=5, voters=5) as cluster:
        nodes = [n.read_id() for n in cluster.state.nodes()]
        urls = [n.nats_url() for n in cluster.state.nodes()]
        control = await connect(NatsSettings(servers=urls), "bench-failover-control")
        try:
            await settle(control, nodes, 5)
            return await churn(cluster, control, minutes, rng)
        finally:
            await control.close()


async def churn(cluster: Cluster, control: Bus, minutes: float, rng: random.Random) -> Restarts:
    nodes = [n.read_id() for n in cluster.state.nodes()]
    urls = [n.nats_url() for n in cluster.state.nodes()]
    started = time.monotonic()
    until = started + minutes * 60
    acked: list[float] = []
    events: list[tuple[float, str]] = []
    writers = [write_on(urls, nodes, acked, until) for _ in range(WRITERS)]
    failed, voters, _ = await asyncio.gather(
        asyncio.gather(*writers),
        sample_voters(urls, nodes, until),
        kill_and_restart(cluster, control, until, events, rng),
    )
    return Restarts(time.monotonic() - started, acked, sum(failed), voters, events)


def restarts_report(run: Restarts) -> str:
    [(longest, _), *_] = worst = run.longest(3)
    gaps = run.gaps
    kills = [what for _, what in run.events if what.startswith("kill")]
    leaders = sum(what.endswith("(the leader)") for what in kills)
    ups = sum(what.startswith("colony up") for _, what in run.events)
    group = min(n for _, n, _ in run.voters)
    connected = min(c for _, _, c in run.voters)
    rows = [
        ["longest gap between acknowledged writes", f"{longest:.3f} s"],
        ["p99 gap", f"{quantile(gaps, 0.99) * 1000:.1f} ms"],
        ["gaps over 1 s", f"{sum(g > 1 for g in gaps)}"],
        ["p50 gap", f"{quantile(gaps, 0.5) * 1000:.1f} ms"],
        ["writes acknowledged", f"{len(run.acked)}"],
        ["writes failed (client deadline 10 s)", f"{run.failed}"],
        ["voters in the leader's group, min", f"{group}"],
        ["of them connected, min", f"{connected}"],
    ]
    minutes = run.seconds / 60
    return f"""A `colony up --nodes 5 --voters 5` cluster for {minutes:.1f} minutes: every few
seconds (4-12, at random) either every process of a random node is killed with -9
(any node, the leader's too; never more than two down at once) or `colony up`
restarts the nodes that are down, as an operator would; {len(kills)} kills
({leaders} of the leader's node), {ups} restarts. Meanwhile {WRITERS} writers, each on
its own connection to the cluster's servers, commit `kv.put`s one after another
through `Management`, each to a voter chosen at random (the next one on a refusal;
a request caught by a kill waits out its 2 s attempt while the other writers go
on). Gaps are between consecutive acknowledgements from any writer; the leader's
group is sampled twice a second while there is a leader.

{table(["", ""], rows)}

The three longest began: {"; ".join(f"{g:.3f} s, {run.before(t)}" for g, t in worst)}.

Bar: longest write outage under {BAR_OUTAGE:g} s: {longest:.3f} s, {verdict(longest < BAR_OUTAGE)}.
"""


# --- the report -----------------------------------------------------------------------


def spread(values: list[float]) -> list[str]:
    return [f"{x:.3f}" for x in (quantile(values, 0.5), quantile(values, 0.95), max(values))]


def run() -> str:
    kills = asyncio.run(kill_trials())
    cuts = partition_trials()
    busy = asyncio.run(soak())
    churn = asyncio.run(restarts())
    rows = [
        ["kill -9 of the manager's node → a new Raft leader", *spread([k.elected for k in kills])],
        ["kill -9 of the manager's node → new manager acting", *spread([k.manager for k in kills])],
        ["kill -9 of the manager's node → voter replaced", *spread([k.replaced for k in kills])],
    ]
    if isinstance(cuts, list):
        rows += [
            ["partition → cut-off manager stops acting", *spread([c.stopped for c in cuts])],
            ["partition → majority's manager acting", *spread([c.started for c in cuts])],
        ]
        gaps = [c.started - c.stopped for c in cuts]
        overlap = (
            f"In every trial the cut-off manager stopped before the new one started: the "
            f"gap was {min(gaps):.3f}-{max(gaps):.3f} s."
            if min(gaps) > 0
            else f"**Two managers acted at once in {sum(g <= 0 for g in gaps)} trial(s).**"
        )
        cut95 = quantile([c.started for c in cuts], 0.95)
        cut_bar = f"partition p95 {cut95:.3f} s, {verdict(cut95 <= BAR_FAILOVER)}"
    else:
        overlap, cut_bar = f"The partition trials did not run: {cuts}.", "partition not run"
    kill95 = quantile([k.manager for k in kills], 0.95)
    return f"""Everything on loopback on this one machine ({os.cpu_count()} cores shared by all of
it), {TRIALS} trials each. Lease timers: ttl {LEASE.lease_ttl:g} s, renewed every
{LEASE.lease_renew:g} s, drift margin {LEASE.lease_margin:g} s; Raft elections after 0.3-0.6 s.
A holder acts only until ttl after it *asked* for its last renewal; a new
leader grants itself the lease only ttl + margin after the last renewal
reached it (for a renewal of an earlier term, which it may apply only after
its election, when the old leader's frames last arrived). So a failover costs
about ttl + margin after the last renewal (an election runs meanwhile), and
the old manager has always stopped first.

Kill: a real `colony up --nodes 5` (3 voters, 2 standing by); every process
of the manager's node killed with -9; the new manager's `manager.acting`
event (sent once its fenced `LeaseGrant`, its first committed write, is
applied) heard through a survivor's server. Voter replaced: the new leader
lists three connected voters without the killed node (membership declares it
dead, about 3 s; after a 3 s grace the leader adds the standby node with the
most free resources, which catches up, then removes the lost one). Partition: three hosts in network
namespaces, each with its own nats-server and voter; the manager's host is cut
off by pulling the cable between two switches; times are from the cut to the
events' own timestamps.

{table(["from the fault to", "p50 s", "p95 s", "max s"], rows)}

{overlap}

Bar (the brief): manager failover p95 ≤ {BAR_FAILOVER:g} s: kill p95 {kill95:.3f} s,
{verdict(kill95 <= BAR_FAILOVER)}; {cut_bar}. Anchors: etcd ≈ one election timeout
(1 s); Kubernetes leader leases 15 s.

### Lease renewals under a busy core

A `colony up --nodes 3` cluster (every service on every node) with one more
process spinning on a core for {busy.seconds:.0f} s: {len(busy.heard)} `manager.acting`
events heard; leases lost (a stop, or a new epoch): **{busy.lost}**
({verdict(busy.lost == 0)}: the bar is zero). The least lease time left in any
acting event: {busy.headroom:.3f} s of {LEASE.lease_ttl:g} s.

### Whole nodes killed and restarted, writers committing

{restarts_report(churn)}"""


def main(argv: list[str] | None = None) -> int:
    """The kill-and-restart run alone, its section printed (bench/results untouched)."""
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=main.__doc__)
    parser.add_argument("--minutes", type=float, default=RESTARTS, help="how long (default 5)")
    parser.add_argument("--seed", type=int, help="of the random kills and restarts")
    args = parser.parse_args(argv)
    print(restarts_report(asyncio.run(restarts(args.minutes, args.seed))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
