"""The consensus service: a Raft voter with its management database and NATS API, or a standby.

Every node runs it. On a voter (listed in consensus.voters, or promoted
since: `role.json` in its state folder says so) it subscribes to its Raft
subject (`Link`), starts the pysyncobj replica (`Replica`), holds the
manager lease when it leads (`ManagerRole`), keeps the voters (`VoterKeeper`),
relays the change log, and answers `propose`, `query` and `status`. A
proposal sent to a follower is handed to the leader by pysyncobj and
answered here once it is applied here.

A standby node answers `status` (role standby) and waits: the Raft leader
adds it to the cluster and then tells it to `join`, with the voters; it
starts its replica, which catches up from the leader (a snapshot, or the
log). A voter that was removed (declared dead) and comes back is told to
`retire`: it drops its replica and its database, and stands by. It reports
standby only once all of that is done, so the leader can add it back
without its old replica (and its old, higher term) ever being heard.

A promoted node whose `join` allows it starts from the freshest replica
snapshot its node's snapshotter fetches, and replays the log after it. At
start, a voter restores the snapshot `colony snapshot restore` left in its
folder (snapshots.py), and the leader answers `snapshot_save`.

`join` and `retire` change who votes: each must be signed with the cluster
secret, recent, not seen before, and addressed to this node; anything else
is refused (403) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import aiosqlite

from colony.consensus import changelog, schema
from colony.consensus.batching import Batcher
from colony.consensus.kinds import REGISTRY, retention
from colony.consensus.kinds.kind import Registry, Select
from colony.consensus.machine import BadBatch, ForeignDatabase, encode_batch
from colony.consensus.manager import LeaseTimers, ManagerRole
from colony.consensus.metrics import ConsensusMetrics
from colony.consensus.pruner import Pruner
from colony.consensus.raft import NotCommitted, Replica, Timers
from colony.consensus.relay import ChangeRelay
from colony.consensus.snapshots import (
    SAVING,
    cluster_of,
    drop_replica,
    log_started,
    restore_at_start,
    restored_term,
    seed_from_replica,
)
from colony.consensus.snapshots import save as save_snapshot
from colony.consensus.stream import StreamKeeper
from colony.consensus.transport import Link
from colony.consensus.voters import Preference, VoterKeeper
from colony.shared import snapshot, subjects
from colony.shared.bus import BusError
from colony.shared.config import ConsensusSettings
from colony.shared.messages import (
    MANAGER,
    Barrier,
    ConsensusStatus,
    ConsensusStatusRequest,
    DigestReply,
    DigestRequest,
    JoinReply,
    JoinRequest,
    LeaseView,
    Proposal,
    ProposeReply,
    ProposeRequest,
    Prune,
    QueryReply,
    QueryRequest,
    RetireReply,
    RetireRequest,
    SnapshotSaveReply,
    SnapshotSaveRequest,
    Stored,
    VoterView,
    new_id,
)
from colony.shared.runner import Context, Refused
from colony.shared.signing import FRESH_FOR, BadSignature, read_secret, verify
from colony.shared.statedir import RESTORE_PENDING, RESTORE_SNAPSHOT

NO_QUORUM = 503
"""The refusal code of a proposal or read that could not be committed (retry later)."""
NOT_LEADER = 409
"""The refusal code of a request only the Raft leader serves (snapshot save): the reason
ends with the leader's id when one is known."""
RELEASE_GRACE = 0.5
"""Seconds a stopping manager may take to release its lease (else it expires)."""


Seed = Callable[[Path], Awaitable[str | None]]
"""Fills a new replica's state folder before it starts (the freshest snapshot there is, as
its management.db); returns where it came from, or None if it left the folder empty. The
default asks this node's snapshotter (snapshots.seed_from_replica)."""


class VoterRole:
    """Whether this node is a voter, and with which voters: `role.json` once the leader
    promoted or retired it, else the configured voters."""

    def __init__(self, state_dir: Path, me: str, settings: ConsensusSettings) -> None:
        self.file = state_dir / "role.json"
        self.me = me
        self.settings = settings

    def voters(self) -> list[str] | None:
        """The voters to start with, this node among them; None: stand by."""
        try:
            saved = json.loads(self.file.read_text())
        except FileNotFoundError:
            return self.settings.voters if self.me in self.settings.voters else None
        return saved["voters"] if saved["voter"] else None

    def save(self, voters: list[str] | None) -> None:
        record = {"voter": voters is not None, "voters": voters or []}
        temporary = self.file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(self.file)  # atomic: a crash leaves the old role or the new


class ConsensusService:
    name = "consensus"
    description = "Raft among the voters and the replicated management database"

    def __init__(
        self, timers: Timers | None = None, seed: Seed | None = None, kinds: Registry = REGISTRY
    ) -> None:
        self.timers = timers or Timers()
        self.seed = seed
        """None: the default seed (this node's snapshotter), built at run."""
        self._seed_next = False
        """The JoinRequest that promoted this node allowed a seed from a replica snapshot."""
        self.cluster = ""
        """This cluster's id (configured, or derived from its secret)."""
        self.state_dir = Path()
        self._js = None
        self._settings = ConsensusSettings()
        self._waiting = ""
        """What this voter waits for before it starts its replica ('' : nothing)."""
        self.kinds = kinds
        """The object kinds this voter applies (tests leave one out: an older version)."""
        self.replica: Replica | None = None
        self.reader: aiosqlite.Connection | None = None
        self.role: ManagerRole | None = None
        self.timeout = 5.0
        self.me = ""
        self._joined = asyncio.Event()
        self._retired = asyncio.Event()
        self._voter_role: VoterRole | None = None
        self.refused_to_start = ""
        """Why this voter runs no replica: its database is a newer Colony's or another
        cluster's, or the snapshot left to restore cannot be ('' if none of these)."""
        self._standing_by = False
        """True once this node runs no replica and has dropped a retired one's files."""
        self._secret = b""
        self._seen: dict[str, float] = {}
        """Signatures of the join and retire requests obeyed, and when (refusing replays)."""
        self.log = logging.getLogger("colony.consensus")
        self.metrics = ConsensusMetrics()
        self._batcher = Batcher(self._commit)

    async def run(self, ctx: Context) -> None:
        settings, self.me = ctx.config.consensus, ctx.config.node.id
        self.timeout = settings.propose_timeout
        state_dir = Path(ctx.config.node.dir) / "consensus"
        state_dir.mkdir(parents=True, exist_ok=True)
        self._secret = secret = read_secret(settings.secret_file)
        self.log = ctx.log
        self.state_dir, self._js, self._settings = state_dir, ctx.bus.js, settings
        self.cluster = cluster_of(settings, secret)
        self._voter_role = voter_role = VoterRole(state_dir, self.me, settings)
        if self.seed is None:
            bus, me, cluster = ctx.bus, self.me, self.cluster
            self.seed = lambda folder: seed_from_replica(bus, me, folder, cluster)
        # concurrent: each waits for a commit, and proposals pipeline through Raft
        propose = self.metrics.counting(self._on_propose)
        await ctx.serve(subjects.propose(self.me), propose, concurrent=True)
        await ctx.serve(subjects.query(self.me), self._on_query, concurrent=True)
        await ctx.serve(subjects.consensus_status(self.me), self._on_status)
        await ctx.serve(subjects.consensus_digest(self.me), self._on_digest)
        await ctx.serve(subjects.consensus_join(self.me), self._on_join)
        await ctx.serve(subjects.consensus_retire(self.me), self._on_retire)
        await ctx.serve(subjects.snapshot_save(self.me), self._on_snapshot_save)
        await self.metrics.serve(ctx, self.me, self._on_status)
        await self._restore(state_dir, voter_role)
        while True:
            voters = voter_role.voters()
            if voters is None:
                # A standby keeps no replica state: what a crash in the middle of retiring
                # left would start a later replica at its old term.
                drop_replica(state_dir, {voter_role.file.name})
                ctx.log.info("standing by: not a voter (the Raft leader may promote this node)")
                self._joined.clear()
                self._standing_by = True
                await self._joined.wait()
                self._standing_by = False
                continue
            self._retired.clear()
            if not (state_dir / "management.db").exists():
                source = None
                if self._seed_next:  # promoted by a leader whose log is safe to start within
                    source = await self.seed(state_dir)
                self._seed_next = False
                ctx.log.info("new replica", extra={"from": source or "the leader's log"})
            await self._serve_as_voter(ctx, settings, voters, state_dir, secret)
            ctx.log.warning("retired: no longer a voter; dropping the replica")
            drop_replica(state_dir, {voter_role.file.name})

    async def _serve_as_voter(
        self, ctx: Context, settings: ConsensusSettings, voters: list[str], state_dir, secret
    ) -> None:
        """Run the replica and everything a voter does, until told to retire."""
        link = Link(ctx.bus.nc, self.me, voters, secret)
        await link.start()
        relay: ChangeRelay | None = None

        def applied(seconds: float) -> None:  # on pysyncobj's thread, after each entry
            self.metrics.apply_seconds.observe(seconds)
            if relay is not None:
                relay.wake()  # it may have changes to publish: no need to poll for them

        # Made on the loop's thread: pysyncobj's tick thread lives as long as its maker.
        try:
            self.replica = replica = Replica(
                self.me,
                voters,
                state_dir,
                link,
                self.timers,
                applied,
                self.kinds,
                self.cluster,
                first_term=restored_term(state_dir),
            )
        except schema.TooNew as e:
            await link.stop()
            await self._refuse_to_start(str(e))
            return
        except ForeignDatabase as e:
            await link.stop()
            await self._refuse_to_start(str(e), "its database is another cluster's")
            return
        log_started(state_dir)
        self.reader = await aiosqlite.connect(replica.machine.path)
        lease = LeaseTimers(settings.lease_ttl, settings.lease_renew, settings.lease_margin)
        self.role = role = ManagerRole(replica, ctx.bus, lease)
        keeper = VoterKeeper(
            replica,
            ctx.bus,
            role,
            target=settings.voter_count or len(settings.voters),
            preference=Preference(settings.transfer_margin, settings.transfer_hold),
            secret=secret,
            heard=link.heard,
            removed_in_log=replica.removed_in_log,
        )
        replicas = self._replicas(replica)
        relay = ChangeRelay(
            ctx.bus, self.reader, lambda: replica.is_leader, replicas, secret,
            settings.change_stream_max_msgs, settings.change_stream_max_bytes,
            self.kinds.change_kinds, lambda: _commit_index(replica),
        )  # fmt: skip
        placer = StreamKeeper(ctx.bus, self.me, lambda: replica.is_leader, lambda: replica.voters)
        reader = self.reader
        pruner = Pruner(
            lambda: replica.is_leader,
            lambda: retention.positions(reader),
            lambda: relay.relayed,
            self._prune,
            settings.idempotency_window,
            settings.change_log_kept,
        )
        tasks = [asyncio.create_task(t.run()) for t in (relay, placer, role, keeper, pruner)]
        ctx.log.info("voter started", extra={"voters": voters})
        try:
            await self._retired.wait()
        finally:
            try:
                with contextlib.suppress(Exception):  # so the next manager need not wait a ttl
                    await asyncio.wait_for(role.release("stopping"), RELEASE_GRACE)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:  # even if the runner's grace ran out meanwhile (this task is cancelled)
                reader, self.replica, self.role, self.reader = self.reader, None, None, None
                # Not awaited: its thread ends once the reads queued before are done. A
                # close cut short by a cancellation would leave it waiting for work, and
                # the process unable to exit.
                reader.stop()
                await asyncio.to_thread(replica.destroy)
                await link.stop()

    async def _restore(self, state_dir: Path, voter_role: VoterRole) -> None:
        """Restore the snapshot the CLI left for this voter (snapshots.restore_at_start);
        one that cannot be restored stops this voter before its replica starts."""

        def waiting() -> None:
            self._waiting = "waiting for a restore (colony up --restore delivers it)"

        try:
            await restore_at_start(
                state_dir, self.cluster, voter_role.voters() is not None,
                {voter_role.file.name}, waiting,
            )  # fmt: skip
        except (snapshot.BadSnapshot, OSError) as e:
            what = f"not restoring {state_dir / RESTORE_SNAPSHOT}: {e}"
            await self._refuse_to_start(what, "its replica is left as it was")
        finally:
            self._waiting = ""

    async def _refuse_to_start(
        self, reason: str, what: str = "upgrade Colony on this node"
    ) -> NoReturn:
        """This voter cannot run its replica (a newer Colony or another cluster wrote its
        database, or the snapshot left to restore is bad): run none (it would neither
        apply nor vote correctly), say why in the log and in status, and wait for the
        operator (a restart crash-looping would say it nowhere)."""
        self.refused_to_start = reason
        what = f"not starting the replica: {what}"
        self.log.critical(what, extra={"reason": reason})
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _on_join(self, request: JoinRequest) -> JoinReply:
        if self.me not in request.voters:
            self._refuse(request, 400, f"{self.me} is not among the voters {request.voters}")
        self._check_signed(request)
        if self.replica is not None:
            return JoinReply(node=self.me, started=False)
        assert self._voter_role is not None
        # A node promoted starts from the leader (or a seed), never from a restore: one left
        # here (a standby's copy of `colony up --restore replica`) would, after a restart,
        # put an old snapshot over the log this voter acknowledged. A pending wait ends too.
        for marker in (RESTORE_SNAPSHOT, RESTORE_PENDING):
            (self.state_dir / marker).unlink(missing_ok=True)
        self._voter_role.save(request.voters)
        self._seed_next = request.seed
        self._joined.set()
        return JoinReply(node=self.me, started=True)

    async def _on_retire(self, request: RetireRequest) -> RetireReply:
        if request.node != self.me:
            self._refuse(request, 403, f"it names {request.node or 'no node'!r}, not {self.me}")
        self._check_signed(request)
        if self.replica is None:
            return RetireReply(node=self.me, retired=False)
        assert self._voter_role is not None
        self._voter_role.save(None)
        self._retired.set()
        return RetireReply(node=self.me, retired=True)

    def _check_signed(self, request: JoinRequest | RetireRequest) -> None:
        """Refuse `request` unless signed with the cluster secret, recently, and new here."""
        try:
            verify(self._secret, request)
        except BadSignature as e:
            self._refuse(request, 403, str(e))
        now = time.monotonic()
        self._seen = {mac: at for mac, at in self._seen.items() if now - at < 2 * FRESH_FOR}
        if request.mac in self._seen:
            self._refuse(request, 403, "already obeyed: a replay")
        self._seen[request.mac] = now

    def _refuse(self, request: JoinRequest | RetireRequest, code: int, reason: str) -> NoReturn:
        what = type(request).__name__
        self.log.warning(f"refused a {what}", extra={"reason": reason, "cause": request.cause})
        raise Refused(code, f"{what} refused: {reason}")

    async def _on_propose(self, request: ProposeRequest) -> ProposeReply:
        for proposal in request.proposals:
            found = self.kinds.by_type.get(type(proposal.command))
            if found is not None and found[1].internal:
                tag = found[1].tag
                raise Refused(403, f"{tag} is proposed only by the consensus service itself")
            if refusal := self.kinds.refusal(proposal):
                raise Refused(400, f"proposal {proposal.id} refused: {refusal}")
        try:
            # made: the request's time, the same in each retry of it (kinds/retention.py)
            index, outcomes = await self._batcher.propose(request.proposals, request.ts)
        except BadBatch as e:
            raise Refused(400, str(e)) from None
        return ProposeReply(index=index, outcomes=outcomes)

    async def _on_query(self, request: QueryRequest) -> QueryReply:
        if not request.stale:
            # pysyncobj has no read index, and two voters may briefly both think they
            # lead: a barrier committed through the log is what makes the read current.
            await self._commit(encode_batch([Proposal(new_id(), Barrier())]))
        reader, replica = self.reader, self._replica
        if reader is None:
            raise Refused(NO_QUORUM, f"{self.me} is standing by, not a voter: ask a voter")
        if replica.stopped_by is not None:  # its state is one the others went past
            raise Refused(NO_QUORUM, f"{self.me} stopped: {replica.stopped_by}; ask a voter")
        # The reader's own connection (pysyncobj's thread applies with its own); the value
        # and the applied index come from one state.
        kind = self.kinds.named(request.kind)
        if kind is None or kind.query is None:
            readable = [k.name for k in self.kinds.kinds if k.query]
            raise Refused(400, f"no kind {request.kind!r} to read: {', '.join(readable)}")
        unknown = sorted(set(request.where) - set(kind.filters))
        if unknown:
            raise Refused(
                400,
                f"{kind.name} cannot be selected by {', '.join(unknown)}: "
                f"only by {', '.join(kind.filters) or 'id'}",
            )
        limit = min(request.limit or kind.page, kind.page)
        # One more than asked: whether there is a next page.
        select = Select(request.key, dict(request.where), request.after, limit + 1)
        index, objects = await kind.query(reader, select)
        more = len(objects) > limit
        objects = objects[:limit]
        # A kv key's value is a string, also answered in `value` and `version` (`colony kv
        # get`); other kinds' objects (node labels: a dict) only in `objects`.
        named = next((o for o in objects if o.id == request.key), None)
        if named is None or not isinstance(named.value, str):
            named = Stored(id=request.key, version=0, value=None)
        return QueryReply(
            key=request.key, value=named.value, version=named.version, index=index,
            objects=objects, more=more,
        )  # fmt: skip

    async def _prune(self, command: Prune) -> None:
        """Commit the leader's Prune (pruner.py)."""
        await self._commit(encode_batch([Proposal(new_id(), command)]))

    async def _on_status(self, _request: ConsensusStatusRequest) -> ConsensusStatus:
        replica, role = self.replica, self.role
        if self.refused_to_start:
            return ConsensusStatus(
                node=self.me, role="follower", leader=None, term=0, commit_index=0,
                applied_index=0, has_quorum=False, voters=[], stopped=self.refused_to_start,
            )  # fmt: skip
        if replica is None or role is None:
            if self._waiting:
                raise Refused(503, f"{self.me} is {self._waiting}")
            if not self._standing_by:
                raise Refused(503, f"{self.me} is starting or dropping a replica; ask again")
            return ConsensusStatus(
                node=self.me, role="standby", leader=None, term=0, commit_index=0,
                applied_index=0, has_quorum=False, voters=[],
            )  # fmt: skip
        raw = replica.read_status()
        if raw is None:
            raise Refused(503, "status is changing too fast to read; try again")
        voters = [VoterView(replica.me, connected=True, match_index=raw["applied_index"])]
        for node, connected in sorted(raw["connected"].items()):
            match = raw["match_index"].get(node) if raw["role"] == "leader" else None
            lag = raw["commit_index"] - match if match is not None else None
            voters.append(VoterView(node, connected, match, lag))
        lease, now = replica.machine.lease(MANAGER), time.monotonic()
        return ConsensusStatus(
            node=replica.me,
            role=raw["role"],
            leader=raw["leader"],
            term=raw["term"],
            commit_index=raw["commit_index"],
            applied_index=raw["applied_index"],
            has_quorum=raw["has_quorum"],
            voters=voters,
            manager=LeaseView(
                name=MANAGER,
                holder=lease.holder,
                epoch=lease.epoch,
                ttl=lease.ttl,
                granted_age=_age(role.applied.granted(MANAGER), now),
                renewed_age=_age(role.applied.renewed(MANAGER) if lease.holder else None, now),
            ),
            acting=role.acting(),
            stopped=replica.stopped_by or "",
        )

    async def _on_snapshot_save(self, request: SnapshotSaveRequest) -> SnapshotSaveReply:
        """Save a snapshot holding every write acknowledged before this request (the
        leader's read barrier) to the object store: only the leader does."""
        replica = self._replica
        if not replica.is_leader:
            leader = (replica.read_status() or {}).get("leader")
            known = f"ask {leader}" if leader else "no leader is known now"
            raise Refused(NOT_LEADER, f"{self.me} is not the Raft leader: {known}")
        began = time.monotonic()
        await self._commit(encode_batch([Proposal(new_id(), Barrier())]))
        try:
            name, header = await save_snapshot(
                self._js, replica.machine.path, self.state_dir / SAVING, me=self.me,
                cluster=self.cluster, replicas=self._replicas(replica), name=request.name,
            )  # fmt: skip
        except (BusError, OSError, snapshot.BadSnapshot) as e:
            raise Refused(503, f"{self.me} could not save a snapshot: {e}") from None
        seconds = round(time.monotonic() - began, 3)
        self.log.info(
            "snapshot saved",
            extra={"object": name, "index": header.index, "bytes": header.size, "seconds": seconds},
        )
        return SnapshotSaveReply(node=self.me, name=name, header=header, seconds=seconds)

    def _replicas(self, replica: Replica) -> int:
        """Servers that keep a copy of the change stream and of saved snapshots: the
        configured number, else one per voter up to three."""
        return self._settings.change_stream_replicas or min(3, len(replica.voters))

    async def _on_digest(self, _request: DigestRequest) -> DigestReply:
        """A digest of the whole database, read in one transaction (one consistent state)."""
        replica = self._replica
        applied, sha256, statements = await changelog.digest(replica.machine.path)
        return DigestReply(
            node=replica.me, applied_index=applied, sha256=sha256, statements=statements
        )

    async def _commit(self, entry: bytes):
        try:
            return await self._replica.commit(entry, self.timeout)
        except NotCommitted as e:
            raise Refused(NO_QUORUM, str(e)) from None

    @property
    def _replica(self) -> Replica:
        if self.replica is None:
            raise Refused(NO_QUORUM, f"{self.me} is standing by, not a voter: ask a voter")
        return self.replica


def _commit_index(replica: Replica) -> int | None:
    """`replica`'s Raft commit index; None if its status cannot be read now (unknown: no
    decision may be taken on it, it is not 0)."""
    status = replica.read_status()
    return None if status is None else status["commit_index"]


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(now - at, 3)
