"""The voter keeper: the Raft leader carries out the keeping of the voters (`keeper.py`).

What to change and when is decided in `keeper.py` (`Keeping`); this shell
asks membership for its view once a look (every `LOOK_EVERY` seconds, on
the leader), feeds the core, and carries out its decisions, one change per
look, with the time from an injected `Clock`.

Adding a node: first it must be standing by. A removed voter that restarts
runs its old replica, campaigning at an ever higher term (the voters drop its
frames); added as it is, that term would unseat the leader. So it is told to
`retire` (it drops its replica, journal and database) and added only once it
reports standby. Unless its log removes one of today's voters, the leader
tells the node to seed its replica from the freshest replica snapshot (its
snapshotter fetches it) and replay the log after it (`keeper.may_seed`);
else it compacts its log (so the node is sent a snapshot holding today's
voters, not the history of every earlier set of them). It appends the
change, then tells the node to `join` with the new voters: it starts a
replica at term 0 and follows the leader's frames, which it is already sent;
with a lost voter still in the group the change commits only once the new
one holds the log, and the lost voter is removed at once.
One change at a time: pysyncobj refuses a second while the first is
uncommitted. `join` and `retire` are signed with the cluster secret: a node
obeys no one else.

Handing over: the manager lease is released in the same entry that records
the transfer, so the next leader takes it without waiting, and this node does
not take it back for `HANDOVER` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Mapping

from colony.consensus.keeper import (
    NOT_READY_FOR,
    SHUNNED_FOR,
    Keeping,
    Preference,
    Transfer,
    may_seed,
    strays,
)
from colony.consensus.machine import encode_batch
from colony.consensus.manager import ManagerRole
from colony.consensus.raft import NotCommitted, Replica
from colony.shared import subjects
from colony.shared.bus import Bus, BusError
from colony.shared.clock import Clock, SystemClock
from colony.shared.messages import (
    ConsensusStatusRequest,
    JoinRequest,
    LeadershipTransferred,
    MembersRequest,
    MemberView,
    Proposal,
    RetireRequest,
    VoterChanged,
    new_id,
)
from colony.shared.signing import sign

LOOK_EVERY = 1.0
"""Seconds between looks at membership."""
JOIN_PATIENCE = 10.0
"""Seconds an added voter has to start its replica before it is removed again."""
STANDBY_PATIENCE = 10.0
"""Seconds a node told to retire has to report standby before it is passed over."""
HANDOVER = 2.0
"""Seconds a leader handing over leaves the lease free for the next one (then takes it back)."""
COMPACTED = 2
"""Entries in a log that holds nothing but its snapshot's last two (pysyncobj keeps them)."""

log = logging.getLogger("colony.consensus.voters")


class VoterKeeper:
    def __init__(
        self,
        replica: Replica,
        bus: Bus,
        role: ManagerRole,
        target: int,
        preference: Preference | None = None,
        *,
        secret: bytes,
        heard: Mapping[str, float],
        clock: Clock | None = None,
        removed_in_log: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """`secret` signs `join` and `retire`; `heard` is the Raft link's record of when
        each voter's last frame arrived (`Link.heard`, read only), on `clock` (the system's).
        `removed_in_log()`: the voters this leader's log removes (`Replica.removed_in_log`):
        whether a joining node may seed from a snapshot (None: never, the log is compacted)."""
        self.replica = replica
        self.bus = bus
        self.role = role
        self.me = replica.me
        self.secret = secret
        self.heard = heard
        self.clock = clock or SystemClock()
        self.removed_in_log = removed_in_log
        self.keeping = Keeping(self.me, target, preference or Preference())

    async def run(self) -> None:
        while True:
            await self.clock.sleep(LOOK_EVERY)
            if not self.keeping.leading(self.clock.monotonic(), self.replica.is_leader):
                continue
            try:
                members = await self._members()
                if members is not None:
                    await self.keep(members)
            except (NotCommitted, TimeoutError) as e:
                log.info("voter change not committed", extra={"reason": str(e)})
            except Exception:  # a bug or a refusal must not end the keeping
                log.exception("keeping the voters failed; trying again")

    async def _members(self) -> dict[str, MemberView] | None:
        try:
            reply = await self.bus.request(subjects.members(self.me), MembersRequest(), 1.0)
        except BusError:
            return None  # no membership view now: change nothing
        return {m.node: m for m in reply.members}

    async def keep(self, members: dict[str, MemberView]) -> None:
        """One decision: at most one cluster change or one transfer."""
        voters = self._voters()
        change = self.keeping.change(self.clock.monotonic(), voters, members, self.heard)
        if change is not None:
            if change.kind == "remove":
                await self._remove(change.node, change.reason)
            else:
                await self._add(change.node, voters, change.reason, change.replacing)
            return
        await self._retire_strays(voters, members)
        transferred = self.role.applied.transferred_at
        now, caught_up = self.clock.monotonic(), self._caught_up()
        handover = self.keeping.prefer(now, voters, members, transferred, caught_up)
        if handover is not None:
            await self._hand_over(handover)

    async def _remove(self, node: str, reason: str) -> None:
        await self.replica.remove_voter(node)
        log.warning("voter removed", extra={"voter": node, "reason": reason})
        await self._record(VoterChanged(node, "removed", reason))

    async def _add(
        self, node: str, voters: list[str], reason: str, replacing: str | None = None
    ) -> None:
        ready = await self._standing_by(node, voters)
        if ready is None:
            return  # its consensus service is not answering yet: look again next time
        if not ready:
            self.keeping.pass_over(node, self.clock.monotonic(), NOT_READY_FOR)
            log.info("not adding a voter: it did not come to stand by", extra={"voter": node})
            return
        # The node itself counts: a replay of its own earlier removal would unsettle it.
        voting = [*voters, node]
        seed = self.removed_in_log is not None and may_seed(self.removed_in_log(), voting)
        if not seed:
            await self._snapshot_log()
        adding = asyncio.create_task(self.replica.add_voter(node))
        # Told to join only once the change is appended here: from then on this leader
        # sends it frames (so it follows at once rather than campaign) and hears its own.
        for _ in range(int(JOIN_PATIENCE / 0.005)):  # pysyncobj's thread appends it in a tick
            if adding.done() or node in self._voters():
                break
            await self.clock.sleep(0.005)
        if node not in self._voters():
            await adding  # refused (another change pending, or not the leader): raises
            return
        joined = await self._join(node, self._voters(), seed)
        if not joined:
            self.keeping.pass_over(node, self.clock.monotonic(), SHUNNED_FOR)
        await adding
        if not joined:
            await self._remove(node, f"did not start its replica within {JOIN_PATIENCE:g} s")
            return
        log.warning("voter added", extra={"voter": node, "reason": reason, "seeded": seed})
        if replacing is not None:
            # At once, not at the next look, nor after recording the add: until it is gone
            # every commit waits for the new voter, busy applying the log it was just sent.
            await self._remove(replacing, f"replaced by {node}")
        await self._record(VoterChanged(node, "added", reason))

    async def _snapshot_log(self) -> None:
        """Compact this leader's log into a snapshot now, so that the node about to join is
        sent the snapshot, which holds the voters as they are, not the log's history.
        Replaying that, it would pass through every earlier set of voters: one without a
        voter that was removed and added back since (this leader, perhaps), whose frames
        its transport would then drop as a stranger's, so that it never catches up and
        campaigns instead, term after term."""
        before = self.replica.log_length()
        if before <= COMPACTED:
            return
        self.replica.compact()
        for _ in range(100):
            await self.clock.sleep(0.02)
            if self.replica.log_length() < before:
                return
        log.info("the log was not compacted before a voter joined", extra={"entries": before})

    def _voters(self) -> list[str]:
        """The voters as pysyncobj's thread has them now (it may be changing them)."""
        while True:
            with contextlib.suppress(RuntimeError):  # set changed size during iteration
                return self.replica.voters

    async def _standing_by(self, node: str, voters: list[str]) -> bool | None:
        """Whether `node` stands by, after telling it to retire if it still runs a replica
        (a removed voter back with its old journal), and waiting until it does; None if
        its consensus service does not answer."""
        deadline = self.clock.monotonic() + STANDBY_PATIENCE
        told = False
        while self.clock.monotonic() < deadline:
            try:
                status = await self.bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
            except BusError:  # not answering, or busy dropping its replica
                if not told:
                    return None
                await self.clock.sleep(0.1)
                continue
            if status.role == "standby":
                return True
            if not told:
                await self._retire(node, f"not among the voters {voters}: rejoining afresh")
                told = True
            await self.clock.sleep(0.1)
        return False

    async def _join(self, node: str, voters: list[str], seed: bool) -> bool:
        deadline = self.clock.monotonic() + JOIN_PATIENCE
        while self.clock.monotonic() < deadline:
            try:
                request = sign(self.secret, JoinRequest(voters=voters, seed=seed))
                await self.bus.request(subjects.consensus_join(node), request, 2.0)
                return True
            except BusError:
                await self.clock.sleep(0.5)
        return False

    async def _retire(self, node: str, reason: str) -> None:
        request = sign(self.secret, RetireRequest(reason=reason, node=node))
        await self.bus.request(subjects.consensus_retire(node), request, 2.0)
        log.warning("told a removed voter to stand by", extra={"voter": node})

    async def _retire_strays(self, voters: list[str], members: dict[str, MemberView]) -> None:
        """A removed voter that comes back still runs its replica: tell it to stand by."""
        for node in strays(voters, members):
            try:
                status = await self.bus.request(
                    subjects.consensus_status(node), ConsensusStatusRequest(), 0.5
                )
                if status.role != "standby":
                    await self._retire(node, f"not among the voters {voters}")
            except BusError:
                continue

    def _caught_up(self) -> set[str]:
        """The voters whose log holds every committed entry, as this leader knows."""
        for _ in range(3):  # pysyncobj's thread may be mid-update of what status reads
            with contextlib.suppress(RuntimeError):
                status = self.replica.status()
                return {n for n, m in status["match_index"].items() if m == status["commit_index"]}
        return set()

    async def _hand_over(self, handover: Transfer) -> None:
        target, reason = handover.target, handover.reason
        record = LeadershipTransferred(self.me, target, reason)
        # Released first, so the next leader takes the lease at once; and not taken back
        # while the handover is under way.
        if not await self.role.release(reason, also=[record], hold_off=HANDOVER):
            await self._record(record)  # not acting now: record it unfenced
        if await self.replica.transfer_leadership(target, patience=HANDOVER / 2):
            log.warning("leadership handed over", extra={"to": target, "reason": reason})
        else:
            log.warning("leadership transfer refused by Raft", extra={"to": target})

    async def _record(self, command) -> None:
        await self.replica.commit(encode_batch([Proposal(new_id(), command)]), 5.0)
