"""What operators of a Raft cluster look at first, as metric families for the node's monitor.

Gauges are read from this voter's status when asked (role, term, commit and applied
index, quorum, each follower's lag, the manager lease); counters and the apply-time
histogram accumulate while the service runs. The node's monitor asks at each scrape
(`subjects.service_metrics`) and serves them on the node's Prometheus endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from colony.shared import subjects
from colony.shared.messages import (
    ConsensusStatus,
    ConsensusStatusRequest,
    MetricFamily,
    ProposeReply,
    ProposeRequest,
    ServiceMetrics,
    ServiceMetricsRequest,
)
from colony.shared.metrics import Counter, Histogram, gauge, sample
from colony.shared.runner import Context, Refused

ROLES = ("leader", "follower", "candidate", "standby")
REFUSALS = {400: "invalid", 403: "forbidden", 503: "not_committed"}
"""Why the propose endpoint refused a request, by its error code."""
NOT_APPLIED = "not_applied"
"""Committed, but the machine did not apply it (a stale manager epoch, a failed cas)."""
APPLY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
"""Seconds: applying one entry is one SQLite transaction, well under a millisecond when
the disk keeps up."""

CHANGES_LOST = Counter(
    "colony_consensus_changes_lost_total",
    "Changes the relay could not put on the change stream: the stream lost them after they "
    "were relayed and the management database had dropped them (an error is logged)",
)
"""One for the process (one consensus service runs in it): the relay counts here."""

Status = Callable[[ConsensusStatusRequest], Awaitable[ConsensusStatus]]
Propose = Callable[[ProposeRequest], Awaitable[ProposeReply]]


class ConsensusMetrics:
    def __init__(self) -> None:
        self.proposals = Counter(
            "colony_consensus_proposals_total",
            "Proposals received by this node's propose endpoint",
        )
        self.refused = Counter(
            "colony_consensus_proposals_refused_total",
            "Proposals received here and not applied, by why",
            label="reason",
            known=[*REFUSALS.values(), NOT_APPLIED],
        )
        self.apply_seconds = Histogram(
            "colony_consensus_apply_seconds",
            "Time to apply one Raft entry to the management database",
            APPLY_BOUNDS,
        )

    def counting(self, propose: Propose) -> Propose:
        """The propose handler, counting its proposals and its refusals."""

        async def counted(request: ProposeRequest) -> ProposeReply:
            batch = len(request.proposals)
            self.proposals.inc(amount=batch)
            try:
                reply = await propose(request)
            except Refused as e:
                self.refused.inc(REFUSALS.get(e.code, str(e.code)), batch)
                raise
            self.refused.inc(NOT_APPLIED, sum(not o.ok for o in reply.outcomes))
            return reply

        return counted

    async def serve(self, ctx: Context, node: str, status: Status) -> None:
        """Answer the monitor's requests for these figures, read from `status` then."""

        async def answer(_request: ServiceMetricsRequest) -> ServiceMetrics:
            try:
                now = await status(ConsensusStatusRequest())
            except Refused:
                now = None  # starting or dropping a replica: the counters only
            return ServiceMetrics(node=node, service="consensus", families=self.families(now))

        await ctx.serve(subjects.service_metrics(node, "consensus"), answer)

    def families(self, status: ConsensusStatus | None) -> list[MetricFamily]:
        counted = [
            self.proposals.family(),
            self.refused.family(),
            self.apply_seconds.family(),
            CHANGES_LOST.family(),
        ]
        return [*(_status_families(status) if status else []), *counted]


def _status_families(s: ConsensusStatus) -> list[MetricFamily]:
    roles = [sample(1 if role == s.role else 0, role=role) for role in ROLES]
    followers = [v for v in s.voters if v.node != s.node]
    lags = [sample(v.lag, follower=v.node) for v in followers if v.lag is not None]
    lease = s.manager
    families = [
        gauge("colony_consensus_role", "This node's Raft role (1 for the one it has)", roles),
        gauge("colony_consensus_term", "The Raft term this voter is in", s.term),
        gauge(
            "colony_consensus_commit_index", "The highest log index known committed", s.commit_index
        ),
        gauge(
            "colony_consensus_applied_index", "The highest log index applied here", s.applied_index
        ),
        gauge("colony_consensus_has_quorum", "1 if this voter reaches a majority", s.has_quorum),
        gauge(
            "colony_consensus_stopped", "1 if this voter stopped (a log conflict)", bool(s.stopped)
        ),
        gauge(
            "colony_consensus_voters",
            "Voters in the Raft group, as this voter knows it (0 on a standby)",
            len(s.voters),
        ),
        gauge(
            "colony_consensus_voter_connected",
            "1 if this voter heard from that voter lately",
            [sample(v.connected, voter=v.node) for v in followers],
        ),
        gauge(
            "colony_consensus_follower_lag_entries",
            "Entries a follower is behind the commit index (known to the leader only)",
            lags,
        ),
        gauge("colony_consensus_acting_manager", "1 if this node acts as manager now", s.acting),
    ]
    if lease is not None:
        families += [
            gauge("colony_consensus_lease_epoch", "The manager lease's epoch", lease.epoch),
            gauge(
                "colony_consensus_lease_holder",
                "The manager lease's holder, in its label (no sample while the lease is free)",
                [sample(1, holder=lease.holder)] if lease.holder else [],
            ),
        ]
        if lease.renewed_age is not None:
            families.append(
                gauge(
                    "colony_consensus_lease_renewed_age_seconds",
                    "Seconds since this replica applied the lease's grant or latest renewal",
                    lease.renewed_age,
                )
            )
    return families
