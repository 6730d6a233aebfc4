"""The consensus service: one Raft voter, its management database, and its NATS API.

Start: read the voters and the cluster secret from config, subscribe to this
voter's Raft subject (`Link`), start the pysyncobj replica (`Replica`), then
answer on `propose`, `query` and `status`. A proposal sent to a follower is
handed to the leader by pysyncobj and answered here once it is applied here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import aiosqlite

from colony.consensus.machine import BadBatch, encode_batch
from colony.consensus.raft import NotCommitted, Replica, Timers
from colony.consensus.relay import ChangeRelay
from colony.consensus.transport import Link
from colony.shared import subjects
from colony.shared.messages import (
    Barrier,
    ConsensusStatus,
    ConsensusStatusRequest,
    DigestReply,
    DigestRequest,
    Proposal,
    ProposeReply,
    ProposeRequest,
    QueryReply,
    QueryRequest,
    VoterView,
    new_id,
)
from colony.shared.runner import Context, Refused

NO_QUORUM = 503
"""The refusal code of a proposal or read that could not be committed (retry later)."""


def read_secret(path: str) -> bytes:
    """The cluster secret from its file; a clear error if it is missing or too short."""
    if not path:
        raise ValueError("consensus.secret_file is not set: voters need the cluster secret")
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"cannot read the cluster secret {path}: {e.strerror}") from None
    if len(secret) < 16:
        raise ValueError(f"the cluster secret in {path} is too short (16 bytes at least)")
    return secret


class ConsensusService:
    name = "consensus"
    description = "Raft among the voters and the replicated management database"

    def __init__(self, timers: Timers | None = None) -> None:
        self.timers = timers or Timers()
        self.replica: Replica | None = None
        self.reader: aiosqlite.Connection | None = None
        self.timeout = 5.0

    async def run(self, ctx: Context) -> None:
        settings, me = ctx.config.consensus, ctx.config.node.id
        if me not in settings.voters:
            raise ValueError(f"{me} is not among consensus.voters {settings.voters}")
        self.timeout = settings.propose_timeout
        state_dir = Path(ctx.config.node.dir) / "consensus"
        state_dir.mkdir(parents=True, exist_ok=True)
        link = Link(ctx.bus.nc, me, settings.voters, read_secret(settings.secret_file))
        await link.start()
        # Made on the loop's thread: pysyncobj's tick thread lives as long as its maker.
        self.replica = Replica(me, settings.voters, state_dir, link, self.timers)
        self.reader = await aiosqlite.connect(self.replica.machine.path)
        replicas = settings.change_stream_replicas or min(3, len(settings.voters))
        relay = ChangeRelay(ctx.bus, self.reader, lambda: self._replica.is_leader, replicas)
        relaying = asyncio.create_task(relay.run())
        # concurrent: each waits for a commit, and proposals pipeline through Raft
        await ctx.serve(subjects.propose(me), self._on_propose, concurrent=True)
        await ctx.serve(subjects.query(me), self._on_query, concurrent=True)
        await ctx.serve(subjects.consensus_status(me), self._on_status)
        await ctx.serve(subjects.consensus_digest(me), self._on_digest)
        ctx.log.info("voter started", extra={"voters": settings.voters})
        try:
            await asyncio.Event().wait()
        finally:
            relaying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relaying
            await self.reader.close()
            await asyncio.to_thread(self.replica.destroy)
            await link.stop()

    async def _on_propose(self, request: ProposeRequest) -> ProposeReply:
        try:
            entry = encode_batch(request.proposals)
        except BadBatch as e:
            raise Refused(400, str(e)) from None
        index, outcomes = await self._commit(entry)
        return ProposeReply(index=index, outcomes=outcomes or [])

    async def _on_query(self, request: QueryRequest) -> QueryReply:
        if not request.stale:
            # pysyncobj has no read index, and two voters may briefly both think they
            # lead: a barrier committed through the log is what makes the read current.
            await self._commit(encode_batch([Proposal(new_id(), Barrier())]))
        assert self.reader is not None
        # One statement, so the value and the applied index come from one state (the
        # reader's own connection: the one pysyncobj's thread applies with is its own).
        async with self.reader.execute(
            "SELECT (SELECT value FROM meta WHERE name = 'last_applied'), kv.value, kv.version "
            "FROM (SELECT 1) LEFT JOIN kv ON kv.key = ?",
            (request.key,),
        ) as rows:
            index, value, version = await rows.fetchone()
        return QueryReply(key=request.key, value=value, version=version or 0, index=index or 0)

    async def _on_status(self, _request: ConsensusStatusRequest) -> ConsensusStatus:
        replica = self._replica
        for _ in range(3):  # pysyncobj's thread may be mid-update of what status reads
            with contextlib.suppress(RuntimeError):
                raw = replica.status()
                break
        else:
            raise Refused(503, "status is changing too fast to read; try again")
        voters = [VoterView(replica.me, connected=True, match_index=raw["applied_index"])]
        for node, connected in sorted(raw["connected"].items()):
            match = raw["match_index"].get(node) if raw["role"] == "leader" else None
            lag = raw["commit_index"] - match if match is not None else None
            voters.append(VoterView(node, connected, match, lag))
        return ConsensusStatus(
            node=replica.me,
            role=raw["role"],
            leader=raw["leader"],
            term=raw["term"],
            commit_index=raw["commit_index"],
            applied_index=raw["applied_index"],
            has_quorum=raw["has_quorum"],
            voters=voters,
        )

    async def _on_digest(self, _request: DigestRequest) -> DigestReply:
        """A digest of the whole database, read in one transaction (one consistent state)."""
        digest, statements = hashlib.sha256(), 0
        # its own connection: its transaction must not make anyone else's reads stale
        async with aiosqlite.connect(self._replica.machine.path) as db:
            await db.execute("BEGIN")
            async with db.execute("SELECT value FROM meta WHERE name = 'last_applied'") as rows:
                row = await rows.fetchone()
            async for line in db.iterdump():
                digest.update(line.encode() + b"\n")
                statements += 1
            await db.execute("COMMIT")
        return DigestReply(
            node=self._replica.me,
            applied_index=row[0] if row else 0,
            sha256=digest.hexdigest(),
            statements=statements,
        )

    async def _commit(self, entry: bytes):
        try:
            return await self._replica.commit(entry, self.timeout)
        except NotCommitted as e:
            raise Refused(NO_QUORUM, str(e)) from None

    @property
    def _replica(self) -> Replica:
        assert self.replica is not None
        return self.replica
