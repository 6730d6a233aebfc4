"""The monitor service: sample every interval, publish, answer, export.

Loop: read the host and the node's processes -> `Samples.add` (pure) ->
publish NodeMetrics on the node's metrics subject. Requests for the latest
sample are answered from the ring buffer; Prometheus scrapes the same, and
with it the metric families of the node's consensus and membership, asked
for at each scrape (`figures.py`).
The declared capacity is re-read whenever the node's config file changes
(`colony capacity` edits it), so it changes without a restart. Samples are
signed with the cluster secret (when the node has one): the free resources in
them move Raft leadership, so membership believes only signed ones.
"""

from __future__ import annotations

import asyncio

import psutil

from colony.monitor.checking import Checker
from colony.monitor.figures import ServiceFigures
from colony.monitor.prometheus import MetricsServer
from colony.monitor.sampling import NodeProcesses, read_host
from colony.monitor.state import Samples
from colony.shared import subjects, tasks
from colony.shared.config import DeclaredCapacity, host_capacity
from colony.shared.management import Management
from colony.shared.messages import LatestMetricsRequest, NodeMetrics
from colony.shared.runner import Context
from colony.shared.signing import read_secret, sign
from colony.shared.statedir import SUPERVISOR, NodeDir


class Monitor:
    name = "monitor"
    description = "Host metrics, node capacity and a Prometheus endpoint for one node"

    def __init__(self) -> None:
        self.samples: Samples | None = None
        self.secret: bytes | None = None

    async def run(self, ctx: Context) -> None:
        node, settings = ctx.config.node, ctx.config.monitor
        secret_file = ctx.config.consensus.secret_file
        self.secret = read_secret(secret_file) if secret_file else None
        node_dir = NodeDir(node.dir)
        node_dir.create()
        self.samples = samples = Samples(settings.history)
        processes = NodeProcesses(node_dir)
        capacity = DeclaredCapacity(node_dir.config_file, host_capacity(node), ctx.log)
        supervisor = node_dir.record(SUPERVISOR)
        node_started = supervisor.started if supervisor else psutil.Process().create_time()
        publish_on = subjects.node_metrics(node.id)

        services = ServiceFigures(ctx.bus, node.id, ctx.log)
        http = MetricsServer(lambda: self.samples.latest if self.samples else None, services.gather)
        metrics_url = await http.start(settings.http_host, settings.http_port)
        ctx.log.info("serving prometheus metrics", extra={"url": metrics_url})

        async def sample() -> NodeMetrics:
            # psutil reads /proc: off the event loop, so requests are never kept waiting
            host, usage = await asyncio.to_thread(
                lambda: (read_host(str(node_dir.path)), processes.read())
            )
            added = samples.add(
                node=node,
                now=ctx.clock.time(),
                interval=settings.interval,
                node_started=node_started,
                host=host,
                processes=usage,
                capacity=capacity.read(),
                nats_url=ctx.config.nats.servers[0],
                metrics_url=metrics_url,
            )
            return self._signed(added)

        checking = None
        if ctx.config.consensus.voters:
            checker = Checker(ctx, Management(ctx.bus, ctx.config.consensus.voters))
            checking = asyncio.create_task(checker.run(), name="health checks")
            checking.add_done_callback(lambda t: _ended(t, ctx))
        else:
            ctx.log.warning("no consensus voters configured: health checks are not run")
        try:
            next_at = ctx.clock.monotonic()
            latest = await sample()
            await ctx.serve(subjects.latest_metrics(node.id), self.latest)
            while True:
                if ctx.bus.connected:  # while reconnecting, a stale sample is worth nothing
                    await ctx.bus.publish(publish_on, latest)
                next_at += settings.interval
                await ctx.clock.sleep(max(0.0, next_at - ctx.clock.monotonic()))
                latest = await sample()
        finally:
            await tasks.cancel(checking)
            await http.close()

    async def latest(self, request: LatestMetricsRequest) -> NodeMetrics:
        """The newest sample (served only once there is one)."""
        assert self.samples is not None and self.samples.latest is not None
        return self._signed(self.samples.latest)

    def _signed(self, sample: NodeMetrics) -> NodeMetrics:
        """Signed with the cluster secret; as it is if the node has none (then neither
        does its membership, which takes unsigned samples only in that case)."""
        return sign(self.secret, sample) if self.secret is not None else sample


def _ended(task: asyncio.Task[None], ctx: Context) -> None:
    """Health checking ends only when the service stops: if it failed, the service fails
    (its supervisor restarts it) rather than run on without checking."""
    if task.cancelled() or task.exception() is None:
        return
    ctx.log.error("health checking failed", exc_info=task.exception())
    if not ctx.deaf.done():
        ctx.deaf.set_result(f"health checking failed: {task.exception()!r}")
