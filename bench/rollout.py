"""Rollouts: a 30-instance HTTP job updated, reverted and drained under a steady client load,
and how soon an unhealthy instance leaves its endpoints.

Real parts: a `colony up --nodes 5` cluster (the real CLI, `bench._cluster`), every
service and every instance a real process. The job runs `colony.harness.webapp` (a
Python HTTP server, 0.01 core and 48 MiB reserved each) with an HTTP check on
/health every second; its update strategy replaces 5 at a time (`min_healthy_time`
1 s, `auto_revert`), and an instance leaves the endpoints 1 s before it is stopped
(`shutdown_delay`).

A client loop (`colony.harness.rollouts.Prober`) runs the whole time: it asks the
job's endpoints (`subjects.endpoints()`, as programs do) and GETs the next of them,
RATE requests a second in all; every failed request is counted with its reason.
In turn:
1. a rolling update (version 2): from its submission to its rollout succeeded;
2. a broken version (its check fails for good), reverted by itself: from its
   submission to the revert's rollout succeeded;
3. a drain of a node holding DRAIN instances (the job's own, and a second job's
   to make up the number): from `colony node drain` to the node drained;
4. SAMPLES instances made unhealthy one at a time (their /health answers 500, the
   check's unhealthy_threshold 2): from the monitor's decision (the record's
   `health_at`) to a set without the instance published on `endpoints_changed`,
   and from the break itself. Bar: p99 from the decision at most 2 x the check
   interval.

    python -m bench rollout
    python -m bench.rollout --quick     # 10 instances, 2 at a time: printed, nothing written
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from bench._cluster import Cluster, colony, local_cluster
from bench._report import ms, quantile, say, table, verdict
from colony.harness.jobs import LocalJobs
from colony.harness.processes import wait_for
from colony.harness.rollouts import (
    EndpointWatch,
    InstanceChanges,
    Probed,
    Prober,
    all_healthy,
    nats_urls,
    rollout_ended,
    sick,
    web_job,
)
from colony.shared.messages import JobRecord

TITLE = "Rollouts"
NODES = 5
REPLICAS = int(os.environ.get("COLONY_BENCH_ROLLOUT_REPLICAS", "30"))
PARALLEL = int(os.environ.get("COLONY_BENCH_ROLLOUT_PARALLEL", "5"))
DRAIN = int(os.environ.get("COLONY_BENCH_ROLLOUT_DRAIN", "10"))
"""Instances on the drained node."""
SAMPLES = int(os.environ.get("COLONY_BENCH_ROLLOUT_SAMPLES", "20"))
RATE = float(os.environ.get("COLONY_BENCH_ROLLOUT_RATE", "50"))
"""Client requests per second (the loop's target)."""
INTERVAL = 1.0
"""The check's interval, seconds."""
GRACE = 20
"""The check's grace, seconds: a start capped at 0.02 core takes seconds."""
LONG = 600.0
"""Seconds any one phase may take before the bench gives up."""


def spec(
    name: str, replicas: int, control: Path, version: str = "1", health: str = "ok", **fields
) -> dict:
    return web_job(
        name,
        replicas,
        version=version,
        health=health,
        control=control,
        check={"interval": "1s", "timeout": "1s", "unhealthy_threshold": 2, "grace": f"{GRACE}s"},
        cpu=0.02,
        update={
            "max_parallel": PARALLEL,
            "min_healthy_time": "1s",
            "healthy_deadline": "60s",
            "progress_deadline": "120s",
            "auto_revert": True,
        },
        restart={"attempts": 100, "interval": "5m", "delay": "200ms"},
        **fields,
    )


class Bench:
    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        self.cluster = cluster
        self.state = cluster.state.path
        self.jobs = LocalJobs(self.state)
        self.workdir = workdir
        self.control = workdir / "control"

    def submit(self, job: dict) -> float:
        """`colony job run --detach`; when it was stored."""
        path = self.workdir / f"{job['name']}.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        colony("job", self.cluster.state, "run", str(path), "--detach")
        return time.time()

    def rolled_out(self, job: str, version: int, ends=("succeeded",)) -> JobRecord:
        return wait_for(
            lambda: rollout_ended(self.jobs.jobs().get(job), version, ends),
            LONG,
            f"{job}'s rollout of version {version} to end",
            every=0.5,
        )

    def all_healthy(self, job: str, replicas: int) -> list:
        return self.jobs.until(all_healthy(replicas), job, LONG, f"{replicas} healthy", every=0.5)


def phase(name: str, seconds: float, probe: Probed, before: Probed, note: str) -> list[str]:
    """A row: the requests the client made since `before` (a copy taken at the start)."""
    requests = probe.requests - before.requests
    failed = probe.failed - before.failed
    return [
        name,
        f"{seconds:.1f}",
        str(requests),
        f"{requests / max(seconds, 1e-9):.0f}",
        str(failed),
        note,
    ]


def snapshot(probe: Probed) -> Probed:
    return Probed(requests=probe.requests, failed=probe.failed)


def measure(workdir: Path) -> tuple[list[list[str]], dict]:
    rows: list[list[str]] = []
    figures: dict = {}
    with local_cluster(nodes=NODES) as cluster:
        here = Bench(cluster, workdir)
        say(f"cluster up in {cluster.up_seconds:.1f} s")
        wait_for(
            lambda: (
                len(n := here.jobs.nodes()) == NODES
                and all(r.status == "alive" and r.registered for r in n.values())
            ),
            120,
            f"{NODES} nodes registered and alive",
            every=0.5,
        )
        here.submit(spec("web", REPLICAS, here.control))
        here.rolled_out("web", 1)
        here.all_healthy("web", REPLICAS)
        say(f"web: {REPLICAS} healthy")
        urls = nats_urls(here.state)
        with (
            Prober(urls, "web", workers=4, rate=RATE) as client,
            EndpointWatch(urls, "web") as watch,
            InstanceChanges(urls, "web") as seen,
        ):
            wait_for(lambda: client.result.requests >= 50, 60, "the client's first requests")

            before, began = snapshot(client.result), time.monotonic()
            here.submit(spec("web", REPLICAS, here.control, version="2"))
            done = here.rolled_out("web", 2)
            took = time.monotonic() - began
            rows.append(
                phase(
                    "rolling update, version 2",
                    took,
                    client.result,
                    before,
                    f"{done.rollout.batch} batches",
                )
            )
            say(f"update: {took:.1f} s")

            before, began = snapshot(client.result), time.monotonic()
            submitted = here.submit(spec("web", REPLICAS, here.control, "3", health="fail"))
            # the revert is version 4, made in the same entry as version 3's failure
            back = here.rolled_out("web", 4)
            here.all_healthy("web", REPLICAS)
            took = time.monotonic() - began
            note = f"reverted after {back.rollout.started - submitted:.1f} s ({back.cause})"
            rows.append(
                phase(
                    f"broken version 3, auto-reverted to {back.version}",
                    took,
                    client.result,
                    before,
                    note,
                )
            )
            say(f"revert: {took:.1f} s")

            took, moved, before = drain(here, client.result)
            rows.append(
                phase(
                    f"drain of a node with {moved} instances",
                    took,
                    client.result,
                    before,
                    "until drained",
                )
            )
            say(f"drain: {took:.1f} s")

            before = snapshot(client.result)
            figures["latency"] = unhealthy_latency(here, watch, seen)
            figures["client"] = client.result
            figures["latency_failed"] = client.result.failed - before.failed
    return rows, figures


def drain(here: Bench, client: Probed) -> tuple[float, int, Probed]:
    """Fill the node with the most of web's instances up to DRAIN with a second job's,
    then drain it: seconds until drained, instances it held, the client's figures when
    the drain began."""
    instances = [i for i in here.jobs.instances("web") if i.desired == "run"]
    nodes = here.jobs.nodes()
    counts = {n: sum(i.node == n for i in instances) for n in nodes}
    target = max(counts, key=lambda n: counts[n])
    name = nodes[target].name
    extra = max(0, DRAIN - counts[target])
    if extra:
        colony("node", here.cluster.state, "label", name, "pool=drain")
        here.submit(
            spec(
                "pack",
                extra,
                here.control,
                constraints=[{"label": "pool", "op": "=", "value": "drain"}],
            )
        )
        here.rolled_out("pack", 1)
        here.all_healthy("pack", extra)
        for other in nodes.values():  # room for them elsewhere once it drains
            colony("node", here.cluster.state, "label", other.name, "pool=drain")
    held = sum(
        i.node == target and i.desired == "run"
        for job in ("web", "pack")
        for i in here.jobs.instances(job)
    )
    before, began = snapshot(client), time.monotonic()
    colony("node", here.cluster.state, "drain", name, "--deadline", str(int(LONG)))
    wait_for(lambda: here.jobs.nodes()[target].drain == "drained", LONG, f"{name} drained")
    took = time.monotonic() - began
    colony("node", here.cluster.state, "undrain", name)
    return took, held, before


def unhealthy_latency(here: Bench, watch: EndpointWatch, seen: InstanceChanges) -> dict:
    """SAMPLES instances made unhealthy one at a time (each past its check's grace, and
    a different one each time where there are enough): from the monitor's decision and
    from the break to a set without it; each healthy again before the next."""
    decided: list[float] = []
    broken: list[float] = []
    missed = 0
    used: list[str] = []

    def candidate() -> str | None:
        current = set(watch.current() or ())
        settled = [i.id for i in here.jobs.instances("web")
                   if i.id in current and i.started_at < time.time() - GRACE - 1]  # fmt: skip
        fresh = [i for i in settled if i not in used] or sorted(settled, key=used.index)
        return fresh[0] if fresh else None

    for _ in range(SAMPLES):
        watch.until(lambda ids: len(ids) == REPLICAS, LONG, f"{REPLICAS} endpoints")
        victim = wait_for(candidate, LONG, "an instance past its grace", every=0.5)
        used.append(victim)
        sick(here.control, victim, "fail")
        began = time.time()
        left = watch.until(lambda ids, v=victim: v not in ids, LONG, f"{victim} gone")
        broken.append(left - began)
        try:
            record = seen.first(
                victim, lambda r, t=began: r.health == "unhealthy" and r.health_at > t
            )
            decided.append(left - record.health_at)
        except AssertionError:
            missed += 1  # its unhealthy record not seen on the change stream
        sick(here.control, victim, "ok")
        watch.until(lambda ids, v=victim: v in ids, LONG, f"{victim} back")
    return {"decided": decided, "broken": broken, "missed": missed}


def report(rows: list[list[str]], figures: dict) -> str:
    latency = figures["latency"]
    decided, broken = latency["decided"], latency["broken"]
    p99 = quantile(decided, 0.99)
    client: Probed = figures["client"]
    lat = table(
        ["from", "samples", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "the monitor's decision (`health_at`)",
                str(len(decided)),
                ms(quantile(decided, 0.5)),
                ms(p99),
                ms(max(decided, default=0)),
            ],
            [
                "the break (/health answers 500)",
                str(len(broken)),
                ms(quantile(broken, 0.5)),
                ms(quantile(broken, 0.99)),
                ms(max(broken, default=0)),
            ],
        ],
    )
    failures = "\n".join(f"- {n} x {why}" for why, n in client.failures.most_common(5))
    return f"""A `colony up --nodes {NODES}` cluster; job `web`: {REPLICAS} instances of
`colony.harness.webapp` (a Python HTTP server), an HTTP check on /health every
{INTERVAL:g} s (timeout 1 s, unhealthy after 2 failures), update strategy
`max_parallel` {PARALLEL}, `min_healthy_time` 1 s, `auto_revert`; `shutdown_delay`
1 s. A client loop asks the job's endpoints and GETs the next one, {RATE:g}
requests/s asked for ({client.rate:.0f}/s made over the whole run, 4 loops); a
request failed if it was refused, reset, timed out or did not answer 200.

{table(["phase", "seconds", "requests", "req/s", "failed requests", "note"], rows)}

An instance made unhealthy leaves the endpoint set ({SAMPLES} samples, one at a
time; {latency["missed"]} whose unhealthy record was not seen on the change stream;
{figures["latency_failed"]} requests failed meanwhile: its agent restarts an unhealthy
instance as soon as its record says so, without the shutdown delay of a stop):

{lat}

Bar: p99 from unhealthy to out of the endpoint set at most 2 x the check interval
({2 * INTERVAL * 1000:.0f} ms): {ms(p99)} ms, {verdict(bool(decided) and p99 <= 2 * INTERVAL)}.
Failed requests during the update, the revert and the drain: {
        verdict(all(row[4] == "0" for row in rows))
    }.{chr(10) * 2 + failures if failures else ""}"""


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="colony-bench-rollout-") as tmp:
        rows, figures = measure(Path(tmp))
    return report(rows, figures)


def main() -> None:
    """A small run, printed: 10 instances, 2 at a time, a drain of 4, 5 samples."""
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=main.__doc__)
    parser.add_argument("--quick", action="store_true", help="10 instances, 2 at a time")
    if parser.parse_args().quick:
        global REPLICAS, PARALLEL, DRAIN, SAMPLES, RATE
        REPLICAS, PARALLEL, DRAIN, SAMPLES, RATE = 10, 2, 4, 5, 20
    print(run())


if __name__ == "__main__":
    main()
