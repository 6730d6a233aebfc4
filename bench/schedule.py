"""Scheduling: 10,000 instances of 100 jobs placed end to end through consensus, on 1,000
simulated nodes, and 100 instances replaced after their node dies.

Real parts: a 3-server NATS cluster, three `python -m colony.consensus` voters,
and `python -m colony.curator` on each voter's node (only the manager's acts).
Played by this process (`bench._jobs.Members`, `SimNodes`):
- membership, which is not run: every node alive in each observer's view, and
  the `MemberChanged` events of a node's death;
- the agents of 1,000 simulated nodes: each registers (`NodeRegister`, 8
  cores, 16 GiB, driver `sim`, 1,000 ports; a `zone` label over 3 values);
  one follower of the change stream (`changes.follow`) reports each instance
  placed on a live node `running` at once, in `InstancesReport`s (one per
  node) batched several to a proposal. Nothing runs: driver `sim`.

Then 100 jobs of 100 replicas (0.08 cores, 128 MiB and one port each; most
bin-packed, some spread over the zones, some constrained to two zones on
distinct nodes) are submitted together, one `JobRun` per proposal, as clients
would. The curator places them; the figures come from the change stream
(each change carries its entry's time, `Change.ts`). Last, the node carrying
the most instances is declared dead (membership's event) and its instances'
replacements are timed.

    python -m bench schedule
    python -m bench.schedule --quick     # 100 nodes, 10 jobs of 50: printed, nothing written

To see where the time goes: COLONY_BENCH_LOGS=DIR keeps every process's log,
COLONY_BENCH_PROFILE=DIR runs the curators under cProfile, and
COLONY_BENCH_REPORTS, COLONY_BENCH_REPORTS_IN_FLIGHT try smaller entries of reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench._jobs import Members, Site, rss, site
from bench._report import ms, quantile, say, table, verdict
from bench.consensus import Cpu
from colony.consensus.machine import Machine, encode_batch
from colony.shared import subjects
from colony.shared.changes import follow
from colony.shared.jobspec import Constraint, JobResources, JobSpec, Task
from colony.shared.management import Management, ManagementError
from colony.shared.messages import (
    Change,
    Command,
    InstanceReport,
    InstancesPlace,
    InstancesReport,
    JobRun,
    LeaseGrant,
    NodeLabel,
    NodeRegister,
    Placement,
    Proposal,
    ServiceMetricsRequest,
    new_id,
)

TITLE = "Scheduling"
NODES = int(os.environ.get("COLONY_BENCH_NODES", "1000"))
JOBS = int(os.environ.get("COLONY_BENCH_JOBS", "100"))
REPLICAS = int(os.environ.get("COLONY_BENCH_REPLICAS", "100"))
"""Instances per job."""
ZONES = ("z0", "z1", "z2")
NODE_CPU, NODE_MEMORY = 8.0, 16 * 2**30
CPU, MEMORY = 0.08, 128 * 2**20
"""Each instance's reservation: 100 fill a node's cores."""
PORTS = (20000, 20999)
JOINING = 250
"""Nodes that join membership at once: the curator records a status for each in one
proposal, and a proposal holds at most 512 commands."""
REPORTS_PER_PROPOSAL = int(os.environ.get("COLONY_BENCH_REPORTS", "1000"))
"""Instance reports per proposal at most (one InstancesReport per node in it)."""
REPORTS_IN_FLIGHT = int(os.environ.get("COLONY_BENCH_REPORTS_IN_FLIGHT", "4"))
"""Report proposals awaiting their commit at once."""
DEADLINE = float(os.environ.get("COLONY_BENCH_DEADLINE", "900"))
"""Seconds the placement may take before the bench reports what it got."""
BAR = 2000.0
"""Placements per second, from submission to the last placement committed."""


def node_id(i: int) -> str:
    return f"sim-{i:04d}"


def job_spec(n: int) -> JobSpec:
    """Job n: bin-packed (6 in 10), spread over zones (3 in 10), or on distinct nodes
    of zones z0 and z1 (1 in 10)."""
    shape = n % 10
    return JobSpec(
        name=f"job-{n:03d}",
        driver="sim",
        task=Task(command="sim"),
        replicas=REPLICAS,
        resources=JobResources(cpu=CPU, memory=MEMORY),
        ports=["http"],
        spread="zone" if shape in (6, 7, 8) else "",
        constraints=[Constraint(label="zone", op="in", value=["z0", "z1"])] if shape == 9 else [],
        distinct_nodes=shape == 9,
        meta={"shape": ["bin-pack", "spread", "distinct"][(shape >= 6) + (shape == 9)]},
    )


@dataclass
class Seen:
    """One instance as the change stream showed it."""

    job: str
    slot: int
    node: str
    placed: float
    """Its placement's entry time (Change.ts)."""
    log_index: int
    running: float = 0.0
    """When this process saw its `running` change (wall clock; 0: not yet)."""
    desired: str = "run"


@dataclass
class SimNodes:
    """The agents of the simulated nodes, in one process: one follower of the change
    stream reports every instance placed on a live node `running` at once."""

    site: Site
    nodes: list[str]
    live: set[str] = field(default_factory=set)
    instances: dict[str, Seen] = field(default_factory=dict)
    node_status: dict[str, tuple[str, float]] = field(default_factory=dict)
    """node -> (status, Change.ts) as the manager recorded it."""
    seq: dict[str, int] = field(default_factory=dict)
    queue: list[tuple[str, InstanceReport]] = field(default_factory=list)
    reported: int = 0
    report_entries: int = 0
    errors: list[str] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def register(self) -> None:
        """Each node registers and labels itself (observed state: no epoch)."""
        commands: list[Command] = []
        for i, node in enumerate(self.nodes):
            commands.append(
                NodeRegister(
                    node=node,
                    name=node,
                    address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    cpu=NODE_CPU,
                    memory=NODE_MEMORY,
                    drivers=["sim"],
                    port_lo=PORTS[0],
                    port_hi=PORTS[1],
                )
            )
            commands.append(NodeLabel(node=node, labels={"zone": ZONES[i % len(ZONES)]}))
        for start in range(0, len(commands), 500):
            await self.site.management.propose(*commands[start : start + 500])
        self.live = set(self.nodes)

    async def follow(self) -> None:
        async for change in follow(
            self.site.bus, after=0, kinds=["instance", "node"], secret=self.site.secret
        ):
            self.seen(change)

    def seen(self, change: Change) -> None:
        detail = change.detail
        if change.kind == "node":
            self.node_status[change.id] = (detail.get("status", ""), change.ts)
            return
        if change.version == 0:  # removed
            return
        known = self.instances.get(change.id)
        if known is None:
            known = self.instances[change.id] = Seen(
                detail["job"], detail["slot"], detail["node"], change.ts, change.log_index
            )
        known.desired = detail.get("desired", "run")
        if detail.get("state") == "running" and not known.running:
            known.running = time.time()
        if known.node not in self.live:
            return  # its agent is dead: it reports nothing
        state, seq = detail.get("state"), detail.get("seq", 0)
        placed = known.desired == "run" and state == "pending" and change.id not in self.seq
        # to stop, unless its exit is reported already (its seq is then above the record's)
        stopping = known.desired == "stop" and state in ("pending", "starting", "running")
        if placed:
            self.report(change.id, known.node, "running", seq)
        elif stopping and self.seq.get(change.id, 0) <= seq:
            self.report(change.id, known.node, "exited", seq)

    def report(self, instance: str, node: str, state: str, recorded: int) -> None:
        self.seq[instance] = seq = max(self.seq.get(instance, 0), recorded) + 1
        now = time.time()
        self.queue.append(
            (
                node,
                InstanceReport(
                    id=instance,
                    state=state,
                    seq=seq,
                    started_at=now if state == "running" else 0.0,
                    finished_at=now if state == "exited" else 0.0,
                    exit_code=0 if state == "exited" else None,
                    at=now,
                ),
            )
        )
        self._wake.set()

    async def send(self) -> None:
        """Send what is queued, REPORTS_IN_FLIGHT proposals at a time."""
        slots = asyncio.Semaphore(REPORTS_IN_FLIGHT)
        pending: set[asyncio.Task] = set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                await slots.acquire()
                batch, self.queue = (
                    self.queue[:REPORTS_PER_PROPOSAL],
                    self.queue[REPORTS_PER_PROPOSAL:],
                )
                task = asyncio.create_task(self._propose(batch, slots))
                pending.add(task)
                task.add_done_callback(pending.discard)

    async def _propose(self, batch: list[tuple[str, InstanceReport]], slots) -> None:
        by_node: dict[str, list[InstanceReport]] = {}
        for node, report in batch:
            by_node.setdefault(node, []).append(report)
        commands = [InstancesReport(node=n, reports=r) for n, r in by_node.items()]
        try:
            reply = await Management(self.site.bus, self.site.voters.ids, 30).propose(*commands)
            refused = [o.error for o in reply.outcomes if not o.ok]
            if refused:
                self.errors.append(f"{len(refused)} reports refused: {refused[0]}")
            self.reported += len(batch)
            self.report_entries += 1
        except ManagementError as e:
            self.errors.append(f"reports not committed: {e}")
            self.queue.extend(batch)  # sent again: their seq makes it harmless
            self._wake.set()
        finally:
            slots.release()

    def of_jobs(self, jobs: set[str]) -> list[Seen]:
        return [s for s in self.instances.values() if s.job in jobs]


@dataclass
class Placing:
    """What placing the jobs took."""

    total: int
    submitted: dict[str, float]
    """job -> when its JobRun was sent (wall clock)."""
    committed: float
    """When the last JobRun's commit was answered."""
    instances: list[Seen]
    done: bool
    cores: dict[str, float]
    rss_peak: int
    rss_end: int
    entries: int
    """Log entries holding the placements."""
    reconciles: tuple[int, float]
    """The manager's curator: reconciles over the placement, and seconds spent deciding
    them (its own histogram, `colony_curator_reconcile_duration_seconds`)."""

    @property
    def start(self) -> float:
        return min(self.submitted.values())

    @property
    def last_placed(self) -> float:
        return max(s.placed for s in self.instances)

    @property
    def all_running(self) -> float:
        return max(s.running for s in self.instances) if self.done else float("inf")

    @property
    def rate(self) -> float:
        return len(self.instances) / max(self.last_placed - self.start, 1e-9)

    def first_placement(self) -> list[float]:
        """Per job: from its submission to its first placement's entry."""
        first: dict[str, float] = {}
        for s in self.instances:
            first[s.job] = min(first.get(s.job, s.placed), s.placed)
        return [first[job] - sent for job, sent in self.submitted.items() if job in first]


@dataclass
class Replacing:
    victim: str
    carried: int
    status_recorded: float
    """From the death event to the manager recording the node dead (inf: not seen)."""
    placed: float
    running: float
    replaced: int
    entries: int


async def until(condition, timeout: float, every: float = 0.05) -> bool:
    """Poll `condition` until true or `timeout`; whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)
    return True


async def progress(what: str, count, total: int, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
        say(f"{what}: {count()} of {total} after {time.monotonic() - started:.0f} s")


async def submit(site: Site, specs: list[JobSpec]) -> dict[str, float]:
    """Every JobRun at once, one per proposal, as many clients would."""
    sent: dict[str, float] = {}

    async def one(spec: JobSpec) -> None:
        sent[spec.name] = time.time()
        await Management(site.bus, site.voters.ids, 30).propose(JobRun(spec=spec))

    await asyncio.gather(*(one(spec) for spec in specs))
    return sent


async def reconciles(site: Site, node: str) -> tuple[int, float]:
    """How many reconciles the curator on `node` ran, and the seconds they took deciding."""
    reply = await site.bus.request(
        subjects.service_metrics(node, "curator"), ServiceMetricsRequest(), timeout=5
    )
    for family in reply.families:
        if family.name == "colony_curator_reconcile_duration_seconds":
            return family.samples[0].count, family.samples[0].sum
    return 0, 0.0


async def place(site: Site, sim: SimNodes, node: str, curator: int) -> Placing:
    specs = [job_spec(n) for n in range(JOBS)]
    jobs = {s.name for s in specs}
    total = JOBS * REPLICAS
    running = lambda: sum(1 for s in sim.of_jobs(jobs) if s.running)  # noqa: E731
    peak = [0]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss(curator))
            site.check_running()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)

    groups = site.pids()
    meters = {
        "curator (manager)": Cpu([curator]),
        "voters": Cpu(groups["voters"]),
        "nats-servers": Cpu(groups["nats-servers"]),
        "this process (agents, membership)": Cpu([os.getpid()]),
    }
    for meter in meters.values():
        meter.start()
    watchers = [
        asyncio.create_task(sample()),
        asyncio.create_task(progress("running", running, total, done)),
    ]
    decided = await reconciles(site, node)
    try:
        submitted = await submit(site, specs)
        committed = time.time()
        say(f"{JOBS} jobs submitted in {committed - min(submitted.values()):.2f} s")
        finished = await until(lambda: running() >= total, DEADLINE, every=0.02)
    finally:
        done.set()
        await asyncio.gather(*watchers, return_exceptions=True)
    cores = {name: meter.stop() for name, meter in meters.items()}
    cores["others on the machine"] = meters["voters"].others - sum(
        cores[n] for n in cores if n != "voters"
    )
    instances = sim.of_jobs(jobs)
    count, seconds = await reconciles(site, node)
    return Placing(
        total,
        submitted,
        committed,
        instances,
        finished,
        cores,
        peak[0],
        rss(curator),
        len({s.log_index for s in instances}),
        (count - decided[0], seconds - decided[1]),
    )


async def replace(site: Site, sim: SimNodes, members: Members) -> Replacing:
    carried = Counter(s.node for s in sim.instances.values() if s.desired == "run")
    victim, count = carried.most_common(1)[0]
    lost = {
        (s.job, s.slot) for s in sim.instances.values() if s.node == victim and s.desired == "run"
    }
    before = set(sim.instances)
    sim.live.discard(victim)
    died = time.time()
    await members.set([victim], "dead")

    def replacements() -> list[Seen]:
        return [
            s
            for i, s in list(sim.instances.items())
            if i not in before and (s.job, s.slot) in lost and s.node != victim
        ]

    def replaced() -> bool:
        found = replacements()
        return len({(s.job, s.slot) for s in found if s.running}) >= len(lost)

    await until(replaced, 120, every=0.01)
    found = replacements()
    status, at = sim.node_status.get(victim, ("", 0.0))
    return Replacing(
        victim,
        count,
        at - died if status == "dead" else float("inf"),
        max((s.placed for s in found), default=float("inf")) - died,
        max((s.running for s in found), default=float("inf")) - died
        if replaced()
        else float("inf"),
        len({(s.job, s.slot) for s in found if s.running}),
        len({s.log_index for s in found}),
    )


def manager_stops(where: Site) -> Counter[str]:
    """Why the voters stopped acting as manager, over the whole run (from their logs)."""
    why: Counter[str] = Counter()
    for log in where.voters.workdir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"stopped acting as manager"' in line:
                with contextlib.suppress(ValueError):
                    why[json.loads(line).get("why", "?")] += 1
    return why


def apply_cost(rounds: int = 3) -> tuple[float, float]:
    """Seconds one voter's apply (`Machine.apply`, in this process: no Raft, no NATS)
    takes per instance placed and per instance reported: the least of a few rounds (the
    machine is shared; the least is the nearest to the cost itself)."""
    costs = [apply_round() for _ in range(rounds)]
    return min(c[0] for c in costs), min(c[1] for c in costs)


def apply_round(count: int = 1000) -> tuple[float, float]:
    """One round of `apply_cost`, in entries of `count`."""
    with tempfile.TemporaryDirectory(prefix="colony-bench-apply-") as tmp:
        machine = Machine(Path(tmp) / "management.db")
        index = itertools.count(1)

        def apply(*commands: Command, epoch: int = 0) -> float:
            entry = encode_batch([Proposal(new_id(), c, epoch) for c in commands])
            started = time.perf_counter()
            outcomes = machine.apply(next(index), entry) or []
            if refused := [o.error for o in outcomes if not o.ok]:
                raise RuntimeError(f"apply refused: {refused[0]}")
            return time.perf_counter() - started

        try:
            apply(LeaseGrant(holder="bench", ttl=3600, expected_epoch=0))
            nodes = [node_id(i) for i in range(count)]
            for first in range(0, count, 250):
                apply(*(NodeRegister(node=n, name=n, address="10.0.0.1", cpu=NODE_CPU,
                       memory=NODE_MEMORY, drivers=["sim"], port_lo=PORTS[0], port_hi=PORTS[1])
                       for n in nodes[first : first + 250]))  # fmt: skip
            apply(JobRun(spec=job_spec(0)))
            placements = [
                Placement(id=f"job-000-{k}-beef", job="job-000", version=1, slot=k,
                          node=nodes[k], cpu=CPU, memory=MEMORY, ports={"http": PORTS[0]})
                for k in range(count)
            ]  # fmt: skip
            halves = placements[: count // 2], placements[count // 2 :]
            placing = apply(*(InstancesPlace(placements=h) for h in halves), epoch=1)
            reports = [
                InstancesReport(node=p.node, reports=[InstanceReport(id=p.id, state="running",
                                seq=1)])
                for p in placements
            ]  # fmt: skip
            reporting = sum(apply(*reports[i : i + 500]) for i in range(0, count, 500))
        finally:
            machine.close()
    return placing / count, reporting / count


async def measure() -> tuple[Placing, Replacing, dict]:
    nodes = [node_id(i) for i in range(NODES)]
    async with site("colony-bench-schedule-") as where:
        chief = await where.manager()
        members = await Members(where.bus, where.voters.ids).start()
        curators = {n: where.start("colony.curator", n) for n in where.voters.ids}
        sim = SimNodes(where, nodes)
        tasks = [asyncio.create_task(sim.follow()), asyncio.create_task(sim.send())]
        try:
            started = time.monotonic()
            await sim.register()
            say(f"{NODES} nodes registered in {time.monotonic() - started:.1f} s")
            for first in range(0, NODES, JOINING):
                joining = nodes[first : first + JOINING]
                await members.set(joining, "alive")

                def alive(joining=joining) -> bool:
                    where.check_running()
                    return all(sim.node_status.get(n, ("",))[0] == "alive" for n in joining)

                if not await until(alive, 60, every=0.05):
                    raise TimeoutError(
                        f"the curator did not record nodes {joining[0]}..{joining[-1]} alive "
                        f"within 60 s (its log: {where.log_tail('colony.curator', chief.node)})"
                    )
            say(f"{NODES} nodes alive after {time.monotonic() - started:.1f} s")
            manager = await where.manager()
            placing = await place(where, sim, manager.node, curators[manager.node].pid)
            say(
                f"placed {len(placing.instances):,} in {placing.last_placed - placing.start:.2f} s "
                f"({placing.rate:,.0f}/s), all running after "
                f"{placing.all_running - placing.start:.2f} s; curator RSS "
                f"{placing.rss_peak / 2**20:.0f} MiB; cores {placing.cores}"
            )
            replacing = await replace(where, sim, members)
            say(
                f"{replacing.victim} (carrying {replacing.carried}) dead: recorded after "
                f"{replacing.status_recorded:.2f} s, replacements placed after "
                f"{replacing.placed:.2f} s, running after {replacing.running:.2f} s"
            )
            after = await where.manager()
            context = {
                "manager": manager.node,
                "epochs": (chief.epoch, manager.epoch, after.epoch),
                "errors": sim.errors,
                "report_entries": sim.report_entries,
                "reported": sim.reported,
                "stops": manager_stops(where),
            }
            return placing, replacing, context
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await members.stop()


def secs(value: float) -> str:
    return "not reached" if value == float("inf") else f"{value:.2f}"


def report(placing: Placing, replacing: Replacing, context: dict) -> str:
    delays = placing.first_placement()
    elapsed = placing.last_placed - placing.start
    running = secs(placing.all_running - placing.start)
    memory = f"{placing.rss_peak / 2**20:.0f} / {placing.rss_end / 2**20:.0f} MiB"
    per_entry = len(placing.instances) / max(placing.entries, 1)
    figures = table(
        ["figure", "value"],
        [
            ["instances placed", f"{len(placing.instances):,} of {placing.total:,}"],
            ["**placements/s** (submission to last placement)", f"**{placing.rate:,.0f}**"],
            [
                "placements/s once placing (first to last placement)",
                f"{len(placing.instances) / max(elapsed - min(delays, default=0), 1e-9):,.0f}",
            ],
            ["all placed, from the first submission", f"{elapsed:.2f} s"],
            ["all running, from the first submission", f"{running} s"],
            ["submission to first placement, p50 per job", f"{ms(quantile(delays, 0.5))} ms"],
            ["submission to first placement, p99 per job", f"{ms(quantile(delays, 0.99))} ms"],
            ["log entries holding the placements", f"{placing.entries:,} ({per_entry:,.0f} each)"],
            ["report proposals (this process)", f"{context['report_entries']:,}"],
            [
                "the curator's reconciles, and their deciding time",
                f"{placing.reconciles[0]:,}, {placing.reconciles[1]:.2f} s",
            ],
            ["manager's curator RSS, peak / end", memory],
        ],
    )  # fmt: skip
    cores = table(
        ["process", "cores busy (average)"],
        [[name, f"{value:.2f}"] for name, value in placing.cores.items()],
    )
    death = table(
        ["from the node's death event to", "s"],
        [
            ["the manager recording it dead", secs(replacing.status_recorded)],
            [f"the last of its {replacing.carried} replacements placed", secs(replacing.placed)],
            ["the last of them running", secs(replacing.running)],
        ],
    )
    errors = "; ".join(sorted(set(context["errors"]))[:3]) or "none"
    place_cost, report_cost = context["apply"]
    per_instance = 3 * (place_cost + report_cost)
    ncores = os.cpu_count() or 1
    stops = ", ".join(f"{n} ({why})" for why, n in context["stops"].most_common()) or "none"
    return f"""Three `python -m colony.consensus` voters, each on its own server of a 3-server
NATS cluster, and the curator on each voter's node (the manager's acts:
{context["manager"]}, epochs {context["epochs"]} at start, placing, end). This
process plays membership (the nodes join {JOINING} at a time: the
curator records their statuses in one proposal, which holds at most 512 commands;
then one node's death event) and the
agents of {NODES:,} simulated nodes: {NODE_CPU:g} cores, {NODE_MEMORY / 2**30:g} GiB, driver `sim`,
ports {PORTS[0]}-{PORTS[1]}, label `zone` over {len(ZONES)} values. One follower of the
change stream reports each instance placed on a live node `running` at once (one
`InstancesReport` per node, up to {REPORTS_PER_PROPOSAL:,} reports per proposal,
{REPORTS_IN_FLIGHT} proposals in flight). {JOBS} jobs of {REPLICAS} replicas ({CPU:g} cores,
{MEMORY / 2**20:g} MiB and one port each; 6 in 10 bin-packed, 3 spread over the zones,
1 on distinct nodes of two zones) are submitted at once, one `JobRun` per proposal.
A placement's time is its log entry's (`Change.ts`, stamped by the voter that
took the proposal, before the commit); "running" is when this process saw the
instance's `running` change on the stream. Report errors: {errors}.

{figures}

Bar: at least {BAR:,.0f} placements/s: **{placing.rate:,.0f}/s**, {verdict(placing.rate >= BAR)}.
Anchors: Nomad's C2M placed 2,000,000 containers on 6,100 hosts at about 1,500/s;
the Kubernetes scheduler suite defaults to 400 pods/s.

Where the time goes. Manager epochs over the run: {context["epochs"][0]} to
{context["epochs"][2]}; the voters stopped acting as manager {sum(context["stops"].values())}
times: {stops}. After each, a curator (that one again, or another) reads its whole view
again before it places more. One voter's apply (`Machine.apply` in this process,
entries of 1,000, no Raft and no NATS; the least of 3 rounds) took
{place_cost * 1e6:.0f} µs per placement and {report_cost * 1e6:.0f} µs per `running` report:
with three voters applying every entry, {per_instance * 1e3:.2f} ms of CPU per instance
placed and reported, so the applies alone
could keep up with at most {ncores / per_instance:,.0f} instances/s if the {ncores} cores did
nothing else. And while an entry applies, pysyncobj's thread, which applies entries one
at a time and also runs Raft, sends no heartbeat and applies no lease renewal.

CPU over the placement (submission to all running; {ncores} cores in all):

{cores}

Node death: {replacing.victim}, carrying {replacing.carried} instances, declared dead
by membership's event (`MemberChanged`, from each voter's node); {replacing.replaced}
replaced, in {replacing.entries} log entries:

{death}"""


def run() -> str:
    placing, replacing, context = asyncio.run(measure())
    context["apply"] = apply_cost()
    return report(placing, replacing, context)


def main() -> None:
    """A small run, printed: 100 nodes, 10 jobs of 50 replicas."""
    parser = argparse.ArgumentParser(prog="python -m bench.schedule", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="100 nodes, 10 jobs of 50")
    if parser.parse_args().quick:
        global NODES, JOBS, REPLICAS
        NODES, JOBS, REPLICAS = 100, 10, 50
    print(run())


if __name__ == "__main__":
    main()
