"""The raft group's events: what the consensus service records about itself.

Commands: LeaderElected (change kind `leader`, id the node, version the term),
VoterChanged (`voter`, version 1 added / 0 removed), LeadershipTransferred
(`transfer`, id the target, version the log index; watchers hear `transferred`),
all internal; and Barrier, which changes nothing (a linearizable read commits one
first) and anyone may propose. No tables: these live in the change log only.
"""

from __future__ import annotations

from colony.consensus.kinds.kind import Handles, Kind, Txn
from colony.shared.messages import (
    Barrier,
    LeaderElected,
    LeadershipTransferred,
    Outcome,
    VoterChanged,
)


def barrier(_txn: Txn, _command: Barrier) -> Outcome:
    return Outcome(ok=True)


def elected(txn: Txn, command: LeaderElected) -> Outcome:
    txn.changed("leader", command.node, command.term, {"term": command.term})
    return Outcome(ok=True)


def voter_changed(txn: Txn, command: VoterChanged) -> Outcome:
    version = 1 if command.change == "added" else 0
    detail = {"change": command.change, "reason": command.reason}
    txn.changed("voter", command.node, version, detail)
    return Outcome(ok=True)


def transferred(txn: Txn, command: LeadershipTransferred) -> Outcome:
    detail = {"source": command.source, "target": command.target, "reason": command.reason}
    txn.changed("transfer", command.target, txn.index, detail)
    txn.note("transferred")
    return Outcome(ok=True)


KIND = Kind(
    name="raft",
    changes=("leader", "voter", "transfer"),
    commands=(
        Handles(Barrier, barrier),
        Handles(LeaderElected, elected, ids=lambda c: (c.node,), internal=True),
        Handles(VoterChanged, voter_changed, ids=lambda c: (c.node,), internal=True),
        Handles(LeadershipTransferred, transferred, ids=lambda c: (c.target,), internal=True),
    ),
)
