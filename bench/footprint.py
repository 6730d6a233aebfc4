"""Footprint: how long `colony up` takes, and what an idle 3-node cluster costs.

Each trial starts a cluster with the real CLI (`colony up --nodes 3 --detach`,
wall time to ready), lets it settle, samples the memory and cpu of every
recorded process (supervisor, nats, monitor per node), then `colony down`s it
and checks that nothing recorded is left running.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

from bench._cluster import local_cluster
from colony.shared.statedir import ProcessRecord

TITLE = "Footprint"
NODES = 3
TRIALS = 5
SETTLE = 5.0
SAMPLES = 10
INTERVAL = 1.0
BAR_MIB = 60
GOAL_CPU = 10.0
"""The idle cluster's cpu, % of one core, at most (issue 17)."""
GOAL_PSS_MIB = 200
"""The idle cluster's PSS, MiB, at most (issue 17)."""
MIB = 2**20


@dataclass
class Usage:
    """One process over one sampling window: memory in MiB per sample, cpu % of one core."""

    kind: str
    rss: list[float] = field(default_factory=list)
    uss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)
    cpu: float = 0.0


def sample(records: list[ProcessRecord]) -> list[Usage]:
    processes = []
    for record in records:
        process = psutil.Process(record.pid)
        if process.create_time() != record.started:
            raise RuntimeError(f"{record.name} (pid {record.pid}) was restarted before sampling")
        processes.append(process)
    usages = [Usage(r.name) for r in records]

    def cpu_seconds() -> list[float]:
        return [sum(p.cpu_times()[:2]) for p in processes]  # user + system

    before, started = cpu_seconds(), time.monotonic()
    for _ in range(SAMPLES):
        for usage, process in zip(usages, processes, strict=True):
            memory = process.memory_full_info()
            usage.rss.append(memory.rss / MIB)
            usage.uss.append(memory.uss / MIB)
            usage.pss.append(memory.pss / MIB)
        time.sleep(INTERVAL)
    elapsed = time.monotonic() - started
    for usage, first, last in zip(usages, before, cpu_seconds(), strict=True):
        usage.cpu = (last - first) / elapsed * 100
    return usages


def trial(number: int) -> tuple[tuple[float, float], list[Usage], list[str]]:
    """Up times (fresh, restart), each process's usage, and what `colony down` left running."""
    with local_cluster(NODES) as cluster:
        time.sleep(SETTLE)
        usages = sample(cluster.records())
        restart = cluster.restart()
    left = cluster.left_running
    total = sum(statistics.mean(u.rss) for u in usages)
    print(
        f"trial {number}/{TRIALS}: up in {cluster.up_seconds:.2f} s (restart {restart:.2f} s), "
        f"{len(usages)} processes, "
        f"{total:.0f} MiB RSS; left running after down: {', '.join(left) or 'none'}",
        file=sys.stderr,
        flush=True,
    )
    return (cluster.up_seconds, restart), usages, left


def combined(usages: list[Usage]) -> Usage:
    """The whole cluster as if one process: at each sample, the sum over its processes."""

    def summed(figure: str) -> list[float]:
        return [sum(xs) for xs in zip(*(getattr(u, figure) for u in usages), strict=True)]

    cpu = sum(u.cpu for u in usages)
    return Usage("cluster", summed("rss"), summed("uss"), summed("pss"), cpu)


def figures(usages: list[Usage]) -> list[float]:
    """RSS mean and max, USS and PSS means, cpu % mean and max, over all of `usages`."""

    def every(figure: str) -> list[float]:
        return [x for u in usages for x in getattr(u, figure)]

    cpu = [u.cpu for u in usages]
    rss = every("rss")
    return [
        statistics.mean(rss),
        max(rss),
        statistics.mean(every("uss")),
        statistics.mean(every("pss")),
        statistics.mean(cpu),
        max(cpu),
    ]


COLUMNS = ["process", "per cluster", "RSS mean", "RSS max", "USS mean", "PSS mean"]
COLUMNS += ["idle cpu % mean", "cpu % max", f"≤ {BAR_MIB} MiB RSS"]


def run() -> str:
    load_before = os.getloadavg()[0]
    ups, trials, lefts = zip(*(trial(n + 1) for n in range(TRIALS)), strict=True)
    load_after = os.getloadavg()[0]
    left = [process for processes in lefts for process in processes]
    fresh, again = zip(*ups, strict=True)
    kinds: dict[str, list[Usage]] = defaultdict(list)
    for usage in (u for usages in trials for u in usages):
        kinds[usage.kind].append(usage)
    rows = [f"| {' | '.join(COLUMNS)} |", "|---" * len(COLUMNS) + "|"]

    def add(name: str, count: str, usages: list[Usage], verdict: str = "") -> None:
        cells = figures(usages)
        shown = [f"{x:.1f}" for x in cells[:4]] + [f"{x:.2f}" for x in cells[4:]]
        rows.append(f"| {name} | {count} | {' | '.join(shown)} | {verdict} |")

    for kind, usages in sorted(kinds.items()):
        worst = figures(usages)[1]
        add(kind, str(len(usages) // TRIALS), usages, "pass" if worst <= BAR_MIB else "**FAIL**")
    cluster = [combined(usages) for usages in trials]
    _, _, _, pss, cpu, _ = figures(cluster)
    goal = "pass" if pss <= GOAL_PSS_MIB and cpu <= GOAL_CPU else "**FAIL**"
    goal += f" (goal ≤ {GOAL_CPU:g} % cpu, ≤ {GOAL_PSS_MIB} MiB PSS)"
    add(f"**{NODES}-node cluster**", f"{len(trials[0])} in all", cluster, goal)
    table = "\n".join(rows)
    return f"""{TRIALS} trials of a {NODES}-node cluster on loopback, each from an empty
state dir on a random free port range. `colony up --nodes {NODES} --detach` is
timed from the command's start to its exit (cluster ready: a JetStream meta
leader and a metrics sample from every node). After {SETTLE:g} s to settle,
every recorded process is sampled {SAMPLES} times, {INTERVAL:g} s apart (RSS,
USS and PSS from `psutil.memory_full_info`; cpu from its cpu time over the
window, in % of one core). Then `colony down`, and a check that no process is
left running (recorded in the state dir, or naming it on its command line):
{", ".join(left) or "none was"}.

| `colony up` to ready | p50 | max |
|---|---|---|
| new cluster (empty state dir) | {statistics.median(fresh):.2f} s | {max(fresh):.2f} s |
| restart (`colony down`, then `up` on the same state) | {statistics.median(again):.2f} s \
| {max(again):.2f} s |

A restart waits for the JetStream meta group to re-elect a leader from its
stored state, which nats-server does only after an election timeout (a few
seconds); a new cluster elects at once.

Per process kind, in MiB and % of one core, over every node, sample and trial;
the cluster row sums the processes at each sample. The bar: at most {BAR_MIB} MiB
RSS per process; the idle cluster's goal: at most {GOAL_CPU:g} % of one core and
{GOAL_PSS_MIB} MiB PSS in all.

{table}

RSS counts shared pages (the interpreter and libraries that the Python
processes map alike) in full in every process; USS is what a process alone
uses (freed when it exits); PSS splits shared pages among the processes that
share them, so the cluster's PSS is the memory it really takes.

The machine's 1-minute load average was {load_before:.1f} when the run began and
{load_after:.1f} when it ended ({os.cpu_count()} cores): idle cpu reads higher on a busy
machine than on a quiet one.
"""
