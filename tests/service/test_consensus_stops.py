"""A voter that cannot go on says so and stops, rather than looping or diverging: a bug in
apply stops its replica at that entry; a database written by a newer Colony runs no
replica at all. Both show in the voter's status, and the service keeps answering."""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from pathlib import Path

import _voters
import pytest
from _voters import Voters, status

from colony.consensus.kinds import REGISTRY, kv
from colony.consensus.kinds.kind import Registry
from colony.consensus.service import ConsensusService
from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import RemoteError
from colony.shared.cluster import Cluster
from colony.shared.messages import KvCas, KvPut, Proposal, ProposeRequest, new_id


def broken(_txn, _command):
    raise KeyError("a bug")


def with_a_bug_in(tag: str) -> Registry:
    handles = [
        dataclasses.replace(h, apply=broken) if h.tag == tag else h for h in kv.KIND.commands
    ]
    buggy = dataclasses.replace(kv.KIND, commands=tuple(handles))
    return Registry(tuple(buggy if k.name == "kv" else k for k in REGISTRY.kinds))


async def propose(bus, command):
    request = ProposeRequest(proposals=[Proposal(new_id(), command)])
    return await bus.request(subjects.propose("v1"), request, 8)


async def stopped(bus):
    view = await status(bus, "v1")
    return view if view and view.stopped else None


async def test_a_bug_in_apply_stops_the_replica_at_that_entry_saying_where(
    nats_server, tmp_path, bus, monkeypatch
):
    group = Voters(nats_server, tmp_path, ["v1"])
    kinds = with_a_bug_in("kv.cas")
    monkeypatch.setattr(
        _voters, "ConsensusService", functools.partial(ConsensusService, kinds=kinds)
    )
    group.start("v1")
    try:
        await Cluster(bus, ["v1"]).wait_leader(20)
        put = await propose(bus, KvPut("a", "1"))
        assert put.outcomes[0].ok
        with pytest.raises(RemoteError):
            await propose(bus, KvCas("a", "1", "2"))
        view = await poll(lambda: stopped(bus), 20, "v1 to stop")
        assert view.stopped.startswith("applying log entry ")
        assert "failed: KeyError: 'a bug'" in view.stopped
        assert view.applied_index < put.index + 3  # nothing after the entry was applied
        with pytest.raises(RemoteError, match="this voter stopped"):
            await propose(bus, KvPut("b", "1"))
    finally:
        await group.stop_all()


async def test_a_database_from_a_newer_colony_runs_no_replica_and_says_why(
    nats_server, tmp_path, bus
):
    database = Path(nats_server.node_config("v1").node.dir) / "consensus" / "management.db"
    database.parent.mkdir(parents=True)
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 9999")
    db.close()
    group = Voters(nats_server, tmp_path, ["v1"])
    group.start("v1")
    try:
        view = await poll(lambda: stopped(bus), 20, "v1 to say it stopped")
        assert str(database) in view.stopped and "9999" in view.stopped
        assert not group.tasks["v1"].done()  # no crash (a supervisor would loop on it)
        with pytest.raises(RemoteError):
            await propose(bus, KvPut("a", "1"))
        with sqlite3.connect(database) as db:  # left as it was
            assert db.execute("PRAGMA user_version").fetchone() == (9999,)
        db.close()
    finally:
        await group.stop_all()
