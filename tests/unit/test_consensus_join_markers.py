"""A node promoted to voter never restores (review finding 2): the join deletes a restore
left in its consensus folder (a standby's copy of `colony up --restore replica`, which a
later restart would otherwise put over the log it acknowledged), and ends a pending wait.
Real files; the service's join handler called directly with a signed request."""

from __future__ import annotations

import asyncio
import json

from colony.consensus import snapshots
from colony.consensus.service import ConsensusService, VoterRole
from colony.shared.config import ConsensusSettings
from colony.shared.messages import JoinRequest
from colony.shared.signing import sign
from colony.shared.statedir import RESTORE_PENDING, RESTORE_SNAPSHOT

SECRET = b"s" * 32
CLUSTER = "0123456789abcde"


def standby(folder) -> ConsensusService:
    """A standby node v4's consensus service, as run() leaves it (no replica)."""
    folder.mkdir(exist_ok=True)
    service = ConsensusService()
    service.me, service.state_dir, service._secret = "v4", folder, SECRET
    service._voter_role = VoterRole(folder, "v4", ConsensusSettings(voters=["v1", "v2", "v3"]))
    return service


async def test_a_join_deletes_a_restore_left_for_the_node(tmp_path):
    service = standby(tmp_path / "consensus")
    for marker in (RESTORE_SNAPSHOT, RESTORE_PENDING):
        (service.state_dir / marker).write_bytes(b"a stale restore")
    reply = await service._on_join(sign(SECRET, JoinRequest(voters=["v1", "v2", "v4"])))
    assert reply.started
    assert sorted(p.name for p in service.state_dir.iterdir()) == ["role.json"]
    assert json.loads((service.state_dir / "role.json").read_text())["voters"] == ["v1", "v2", "v4"]


async def test_a_join_ends_a_wait_for_a_pending_restore(tmp_path):
    service = standby(tmp_path / "consensus")
    (service.state_dir / RESTORE_PENDING).touch()
    waited = asyncio.Event()
    restoring = asyncio.create_task(
        snapshots.restore_at_start(service.state_dir, CLUSTER, True, {"role.json"}, waited.set)
    )
    await asyncio.wait_for(waited.wait(), 5)
    await service._on_join(sign(SECRET, JoinRequest(voters=["v1", "v2", "v4"])))
    assert await asyncio.wait_for(restoring, 5) is None
