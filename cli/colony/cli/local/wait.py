"""Waiting until a local cluster is ready: every nats-server up under one JetStream
meta leader, a first metrics sample from every node, and a Raft leader that every
voter follows. A supervisor that exits meanwhile ends the wait with its log's name.

A step can be put between NATS answering and the rest (`once_nats`): `colony up
--restore replica` fetches the snapshot the voters wait for there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from colony.cli.local.plan import ClusterError
from colony.cli.local.write import voters_of
from colony.shared import natsd, subjects
from colony.shared.bus import Bus, connect
from colony.shared.cluster import Cluster, Leader, Statuses, WaitTimeout
from colony.shared.config import NatsSettings
from colony.shared.statedir import SUPERVISOR, NodeDir, StateDir

METRICS_KEPT = 3600.0
"""Seconds the metrics stream keeps a node's last sample."""


def servers(state: StateDir) -> list[str]:
    """The client URL of every node's nats-server."""
    return [url for node_dir in state.nodes() if (url := node_dir.nats_url())]


async def wait_ready(
    state: StateDir,
    node_dirs: list[NodeDir],
    timeout: float,
    progress: Callable[[str], None] = lambda _: None,
    once_nats: Callable[[Bus, float, Callable[[str], None]], Awaitable[None]] | None = None,
) -> None:
    """Wait for a JetStream meta leader and a first metrics sample from every node;
    `once_nats(bus, deadline, progress)` runs as soon as JetStream answers."""
    deadline = time.monotonic() + timeout
    http_urls = [_nats_http(n) for n in node_dirs]

    def check_supervisors() -> None:
        for node_dir in node_dirs:
            record = node_dir.record(SUPERVISOR)
            if record is None or not record.alive():
                raise ClusterError(
                    f"{node_dir.name}'s supervisor exited; see {node_dir.log(SUPERVISOR)}"
                )

    progress("waiting for the nats-servers and a JetStream meta leader")
    while True:
        check_supervisors()
        leaders = {natsd.jetstream_leader(url, timeout=0.5) for url in http_urls}
        if None not in leaders and len(leaders) == 1:
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"no JetStream meta leader within {timeout:g} s")
        await asyncio.sleep(0.1)

    bus = await connect(NatsSettings(servers=servers(state)), "colony-up", reconnect=False)
    try:
        replicas = min(3, len(state.nodes()))
        await _ensure_metrics_stream(bus, replicas=replicas, deadline=deadline)
        if once_nats is not None:
            await once_nats(bus, deadline, progress)
        expected = {n.node_id for n in node_dirs}
        seen: set[str] = set()
        sub = await bus.subscribe(subjects.node_metrics(subjects.ANY))
        progress(f"waiting for metrics from {len(expected)} nodes")
        while expected - seen:  # the nodes of a running cluster publish too
            check_supervisors()
            try:
                sample = await sub.next(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                seen.add(sample.node)
                progress(f"metrics from {len(seen & expected)}/{len(expected)} nodes")
            except TimeoutError:
                if time.monotonic() > deadline:
                    missing = ", ".join(sorted(expected - seen))
                    raise ClusterError(f"no metrics from {missing} within {timeout:g} s") from None
        await sub.stop()
        await _wait_for_raft_leader(bus, voters_of(state), deadline, progress, check_supervisors)
    finally:
        await bus.close()


async def _wait_for_raft_leader(
    bus: Bus, nodes: list[str], deadline: float, progress, check_supervisors
) -> None:
    """Until there is a leader and every voter in its view answers naming it (standby
    nodes, which are not voters now, are not waited for)."""
    if not nodes:
        return
    progress("waiting for the voters to elect a Raft leader")

    def followed(statuses: Statuses) -> Leader | None:
        check_supervisors()
        top = statuses.leader()
        return top if top and all(statuses.of.get(n) for n in top.voters) else None

    try:
        left = max(0.0, deadline - time.monotonic())
        await Cluster(bus, nodes, ask=0.5).until(followed, left, "Raft leader every voter follows")
    except WaitTimeout as e:
        raise ClusterError(
            f"the voters elected no Raft leader in time; see their consensus logs ({e})"
        ) from None


async def _ensure_metrics_stream(bus: Bus, replicas: int, deadline: float) -> None:
    """The stream that keeps each node's last sample (for `last heard` in status)."""
    while True:
        try:
            await bus.ensure_stream(
                subjects.METRICS_STREAM,
                [subjects.node_metrics(subjects.ANY).name],
                replicas=replicas,
                max_msgs_per_subject=1,
                max_age=METRICS_KEPT,
                memory=True,
            )
            return
        except Exception as e:  # JetStream answers 503 for a moment after electing
            if time.monotonic() > deadline:
                raise ClusterError(f"cannot create the metrics stream: {e}") from None
            await asyncio.sleep(0.2)


def _nats_http(node_dir: NodeDir) -> str:
    for line in node_dir.nats_conf.read_text().splitlines():
        if line.startswith("http:"):
            return "http://" + line.split(":", 1)[1].strip()
    raise ClusterError(f"{node_dir.nats_conf} has no http line")
