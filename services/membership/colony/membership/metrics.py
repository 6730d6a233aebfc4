"""What membership looks like from this member, as metric families for the node's monitor.

Members by status, the Lifeguard health and this member's incarnation are read from
the core when asked; probes, suspicions, refutations and messages are counted from
the instructions the core hands the shell and from the messages the shell handles.
The node's monitor asks at each scrape (`subjects.service_metrics`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, get_args

from colony.membership.state import (
    Announce,
    Broadcast,
    Changed,
    Instruction,
    Membership,
    Ping,
    PingReq,
    PushPull,
    Tell,
)
from colony.shared import subjects
from colony.shared.messages import (
    MemberStatus,
    MetricFamily,
    ServiceMetrics,
    ServiceMetricsRequest,
)
from colony.shared.metrics import Counter, gauge, sample
from colony.shared.runner import Context

M = TypeVar("M")
R = TypeVar("R")

SENT = {
    Ping: "ping",
    PingReq: "ping_req",
    PushPull: "sync",
    Tell: "tell",
    Broadcast: "news",
    Announce: "announce",
}
"""The message each instruction sends."""
RECEIVED = ("ping", "ping_req", "sync", "gossip", "announce")
"""Requests answered, and gossip heard (tells and news), and announcements."""


class MembershipMetrics:
    def __init__(self) -> None:
        self.probes = Counter(
            "colony_membership_probes_total",
            "Probes sent: direct pings, and ping-reqs asking a helper to probe",
            label="kind",
            known=("direct", "indirect"),
        )
        self.suspicions = Counter(
            "colony_membership_suspicions_total",
            "Members that became suspect here: accused by this member's probe, or by gossip",
            label="origin",
            known=("probe", "gossip"),
        )
        self.refutations = Counter(
            "colony_membership_refutations_total",
            "Suspicions or deaths of this member that it refuted (at a new incarnation)",
        )
        self.sent = Counter(
            "colony_membership_messages_sent_total",
            "Membership messages sent, by kind",
            label="kind",
            known=SENT.values(),
        )
        self.received = Counter(
            "colony_membership_messages_received_total",
            "Membership messages received, by kind (answers to ours not counted)",
            label="kind",
            known=RECEIVED,
        )

    def executed(self, i: Instruction, me: str) -> None:
        """Count what the core of member `me` asked the shell to do."""
        kind = SENT.get(type(i))
        if kind:
            self.sent.inc(kind)
        if isinstance(i, Ping):
            self.probes.inc("direct")
        elif isinstance(i, PingReq):
            self.probes.inc("indirect")
        elif isinstance(i, Changed) and i.status == "suspect":
            self.suspicions.inc("probe" if i.cause == me else "gossip")
        elif isinstance(i, Broadcast) and any(
            u.node == me and u.status == "alive" for u in i.updates
        ):
            self.refutations.inc()  # the core broadcasts itself alive only to refute

    def receiving(
        self, kind: str, handler: Callable[[M], Awaitable[R]]
    ) -> Callable[[M], Awaitable[R]]:
        """`handler`, counting each message it is handed as received."""

        async def counted(message: M) -> R:
            self.received.inc(kind)
            return await handler(message)

        return counted

    async def serve(self, ctx: Context, core: Membership) -> None:
        """Answer the monitor's requests for these figures."""

        async def answer(_request: ServiceMetricsRequest) -> ServiceMetrics:
            return ServiceMetrics(node=core.me, service="membership", families=self.families(core))

        await ctx.serve(subjects.service_metrics(core.me, "membership"), answer)

    def families(self, core: Membership) -> list[MetricFamily]:
        statuses = [m.status for m in core.members.values()]
        by_status = [sample(statuses.count(s), status=s) for s in get_args(MemberStatus)]
        return [
            gauge(
                "colony_membership_members", "Members in this member's view, by status", by_status
            ),
            gauge(
                "colony_membership_candidates",
                "Newcomers named to this member that have not answered its ping yet",
                len(core.candidates),
            ),
            gauge(
                "colony_membership_health",
                "Lifeguard health score: 0 is healthy; higher slows this member's probing",
                core.health,
            ),
            gauge("colony_membership_incarnation", "This member's incarnation", core.incarnation),
            self.probes.family(),
            self.suspicions.family(),
            self.refutations.family(),
            self.sent.family(),
            self.received.family(),
        ]
