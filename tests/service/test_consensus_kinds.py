"""Kinds against real voters and a real nats-server: a voter of an older version stops at
a command it does not know (and goes on once upgraded); a command that needs the manager's
epoch is refused without it; the relay publishes past a change it cannot publish."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging

import _voters
import aiosqlite
import pytest
from _voters import Voters, status

from colony.consensus import changelog, metrics, relay
from colony.consensus.kinds import REGISTRY, kv, retention
from colony.consensus.kinds.kind import Registry
from colony.consensus.machine import Machine, encode_batch
from colony.consensus.service import ConsensusService
from colony.harness.processes import poll
from colony.shared import subjects
from colony.shared.bus import RemoteError
from colony.shared.cluster import Cluster
from colony.shared.messages import (
    Change,
    DigestRequest,
    KvDelete,
    KvPut,
    Proposal,
    ProposeRequest,
    Prune,
    QueryRequest,
    decode,
    new_id,
)
from colony.shared.signing import verify

VOTERS = ["v1", "v2", "v3"]


def start(group: Voters, node: str, kinds: Registry, monkeypatch) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(
            _voters, "ConsensusService", functools.partial(ConsensusService, kinds=kinds)
        )
        group.start(node)


async def propose(bus, via: str, *commands, epoch: int = 0):
    proposals = [Proposal(new_id(), c, epoch) for c in commands]
    return await bus.request(subjects.propose(via), ProposeRequest(proposals=proposals), 6)


async def test_an_older_voter_stops_at_a_command_it_lacks_and_goes_on_once_upgraded(
    nats_server, tmp_path, bus, monkeypatch
):
    group = Voters(nats_server, tmp_path, VOTERS)
    group.start("v1")
    group.start("v2")
    start(group, "v3", REGISTRY.without("kv.delete"), monkeypatch)
    cluster = Cluster(bus, VOTERS)
    try:
        await cluster.wait_settled(20, 3)
        # asked itself, it refuses what it does not know
        with pytest.raises(RemoteError, match=r"kv\.delete is not known to this voter"):
            await propose(bus, "v3", KvDelete("a"))
        via = (await cluster.wait_leader(20)).node
        if via == "v3":
            via = "v1"  # a follower hands it to the leader
        await propose(bus, via, KvPut("a", "1"))
        deleted = await propose(bus, via, KvDelete("a"))
        want = f"needs a newer version: command tag kv.delete at log index {deleted.index}"

        async def stopped():
            view = await status(bus, "v3")
            return view if view and view.stopped else None

        view = await poll(stopped, 20, "v3 to stop")
        assert view.stopped == want and view.applied_index == deleted.index - 1
        # it serves nothing from the state it stopped at, and proposes nothing
        with pytest.raises(RemoteError, match="needs a newer version"):
            await bus.request(subjects.query("v3"), QueryRequest(key="a", stale=True), 6)
        with pytest.raises(RemoteError, match="this voter stopped"):
            await propose(bus, "v3", KvPut("b", "1"))
        # the others (a majority) go on without it, and it neither leads nor campaigns
        for i in range(5):
            assert (await propose(bus, "v1", KvPut(f"k{i}", "x"))).outcomes[0].ok
        leader = await cluster.wait_leader(20, among=["v1", "v2"])
        assert leader.node != "v3" and (await status(bus, "v3")).term == view.term

        await group.stop("v3")
        group.start("v3")  # upgraded: it knows kv.delete
        await cluster.wait_settled(30, 3)

        async def same_digest():  # caught up in its log first, then in what it applied
            digests = [
                await bus.request(subjects.consensus_digest(n), DigestRequest(), 6) for n in VOTERS
            ]
            return len({d.sha256 for d in digests}) == 1

        await poll(same_digest, 20, "v3 to hold the same database as the others")
        v3 = await status(bus, "v3")
        assert not v3.stopped and v3.applied_index >= deleted.index
        read = await bus.request(subjects.query("v3"), QueryRequest(key="a"), 6)
        assert (read.value, read.version) == (None, 0)
    finally:
        await group.stop_all()


async def test_a_command_that_needs_the_managers_epoch_is_refused_at_propose_without_it(
    nats_server, tmp_path, bus, monkeypatch
):
    handles = [dataclasses.replace(h, needs_epoch=h.tag == "kv.put") for h in kv.KIND.commands]
    fenced = dataclasses.replace(kv.KIND, commands=tuple(handles))
    kinds = Registry(tuple(fenced if k.name == "kv" else k for k in REGISTRY.kinds))
    group = Voters(nats_server, tmp_path, ["v1"])
    start(group, "v1", kinds, monkeypatch)
    try:
        manager = await Cluster(bus, ["v1"]).wait_manager(20)
        with pytest.raises(RemoteError, match="needs the manager's epoch") as refused:
            await propose(bus, "v1", KvPut("a", "1"))
        assert refused.value.code == 400
        reply = await propose(bus, "v1", KvPut("a", "1"), epoch=manager.epoch)
        assert reply.outcomes[0].ok
    finally:
        await group.stop_all()


async def test_the_relay_publishes_past_a_change_it_cannot_publish_and_survives_a_bug(
    tmp_path, bus, monkeypatch, caplog
):
    machine = Machine(tmp_path / "db")
    machine.apply(1, encode_batch([Proposal("p1", KvPut("a", "1"))], ts=1000.5))
    # What apply refuses, a bug or a newer version's kind may still have left:
    for kind, id, detail in [("kv", "a.b", "{}"), ("zz", "n1", "{}"), ("kv", "c", "[1]")]:
        machine.db.execute(
            "INSERT INTO changes (log_index, kind, id, version, cause, detail, ts) "
            "VALUES (2, ?, ?, 1, 'c', ?, 2.0)",
            (kind, id, detail),
        )
    machine.apply(3, encode_batch([Proposal("p3", KvPut("d", "1"))], ts=1003.5))
    real, failures = changelog.after, []

    async def after_once_broken(*args):
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug")
        return await real(*args)

    monkeypatch.setattr(changelog, "after", after_once_broken)
    monkeypatch.setattr(relay, "PAUSE_AFTER_BUG", 0.05)
    secret = b"relay-test-secret"
    async with aiosqlite.connect(machine.path) as reader:
        task = asyncio.create_task(relay.ChangeRelay(bus, reader, lambda: True, 1, secret).run())
        try:
            await poll(lambda: _stored(bus, 5), 20, "five messages on the stream")
            assert not task.done()
        finally:
            task.cancel()
    changes = [
        decode((await bus.stored(subjects.CHANGES_STREAM, s)).data, Change) for s in range(1, 6)
    ]
    assert all(verify(secret, c, fresh_for=None) for c in changes)
    assert [(c.index, c.kind) for c in changes] == [
        (1, "kv"), (2, "skipped"), (3, "skipped"), (4, "skipped"), (5, "kv"),
    ]  # fmt: skip
    assert [c.ts for c in changes] == [1000.5, 2.0, 2.0, 2.0, 1003.5]  # the entries', not now
    assert "cannot be used in a subject" in changes[1].detail["reason"]
    assert changes[2].id == "zz" and "does not capture kind 'zz'" in changes[2].detail["reason"]
    assert "not a JSON object" in changes[3].detail["reason"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("change relay round failed" in e for e in errors)
    assert sum("cannot be published" in e for e in errors) == 3


async def _stored(bus, count: int) -> bool:
    try:
        return (await bus.stream_state(subjects.CHANGES_STREAM)).messages >= count
    except Exception:
        return False


async def test_the_relay_fills_in_what_a_stream_that_went_back_lost(tmp_path, bus):
    """A stream whose surviving replica was behind holds fewer changes than it acknowledged:
    the relay notices at its next publish and sends the lost ones again."""
    machine = Machine(tmp_path / "db")
    for index in (1, 2, 3):
        machine.apply(index, encode_batch([Proposal(f"p{index}", KvPut(f"k{index}", "v"))]))
    secret = b"relay-test-secret"
    async with aiosqlite.connect(machine.path) as reader:
        task = asyncio.create_task(relay.ChangeRelay(bus, reader, lambda: True, 1, secret).run())
        try:
            await poll(lambda: _stored(bus, 3), 20, "three changes on the stream")
            first = await bus.stored(subjects.CHANGES_STREAM, 1)
            # Only change 1 survives: the stream as a replica that was behind holds it.
            config = (await bus.js.stream_info(subjects.CHANGES_STREAM)).config
            await bus.js.delete_stream(subjects.CHANGES_STREAM)
            await bus.js.add_stream(config)
            await bus.js.publish(first.subject, first.data)
            machine.apply(4, encode_batch([Proposal("p4", KvPut("k4", "v"))]))
            await poll(lambda: _stored(bus, 4), 20, "the lost changes sent again")
        finally:
            task.cancel()
    state = await bus.stream_state(subjects.CHANGES_STREAM)
    stored = [await bus.stored(subjects.CHANGES_STREAM, s) for s in range(1, state.last_seq + 1)]
    indexes = [decode(m.data, Change).index for m in stored if m is not None]
    assert sorted(set(indexes)) == [1, 2, 3, 4] and len(indexes) == 4


async def _relaying(bus, machine: Machine, secret: bytes, until, what: str) -> None:
    """Run a relay for `machine` until `until()` holds."""
    async with aiosqlite.connect(machine.path) as reader:
        task = asyncio.create_task(relay.ChangeRelay(bus, reader, lambda: True, 1, secret).run())
        try:
            await poll(until, 20, what)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # stopped before its database connection closes


async def _indexes(bus) -> list[int]:
    """The indexes of the changes on the stream, in stream order."""
    state = await bus.stream_state(subjects.CHANGES_STREAM)
    stored = [await bus.stored(subjects.CHANGES_STREAM, s) for s in range(1, state.last_seq + 1)]
    return [decode(m.data, Change).index for m in stored if m is not None]


def _puts(machine: Machine, indexes: range) -> None:
    for index in indexes:
        machine.apply(index, encode_batch([Proposal(f"p{index}", KvPut(f"k{index}", "v"))]))


def _drop_changes(machine: Machine, index: int, upto: int) -> None:
    """Apply, at log index `index`, the Prune that drops the changes up to `upto`."""
    prune = Prune(proposals_upto=0, refuse_before=0.0, changes_upto=upto)
    machine.apply(index, encode_batch([Proposal(f"prune-{index}", prune)]))
    assert retention.pruned(machine.db)[1] == upto


async def test_a_relay_finding_no_genuine_change_resumes_from_the_databases_first(
    tmp_path, bus, caplog
):
    """An idle cluster's stream aged out (or held only forgeries): its sequence is past the
    last change's index, yet every change the database still holds is relayed."""
    machine = Machine(tmp_path / "db")
    _puts(machine, range(1, 6))
    _drop_changes(machine, 6, 3)  # changes 1-3 were relayed to the stream, then dropped
    await bus.ensure_stream(
        subjects.CHANGES_STREAM,
        [subjects.change(kind, subjects.ANY).name for kind in REGISTRY.change_kinds],
    )
    for n in range(10):  # sequences 1-10, then nothing left: as if aged out
        await bus.js.publish(subjects.change("kv", f"forged{n}").name, b"forged")
    await bus.js.purge_stream(subjects.CHANGES_STREAM)
    lost = metrics.CHANGES_LOST.values[""]
    await _relaying(
        bus, machine, b"relay-test-secret", lambda: _stored(bus, 2), "changes 4 and 5 relayed"
    )
    assert await _indexes(bus) == [4, 5]
    assert metrics.CHANGES_LOST.values[""] == lost
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_changes_a_stream_lost_after_retention_dropped_them_are_reported(
    tmp_path, bus, caplog
):
    """The stream went back past changes the database has dropped since: nobody can send
    them again, and the relay says which (an error, and the lost-changes counter)."""
    machine, secret = Machine(tmp_path / "db"), b"relay-test-secret"
    _puts(machine, range(1, 3))
    await _relaying(bus, machine, secret, lambda: _stored(bus, 2), "changes 1 and 2 relayed")
    _puts(machine, range(3, 7))
    _drop_changes(machine, 7, 4)  # as if relayed: the stream then lost 3 and 4
    lost = metrics.CHANGES_LOST.values[""]
    await _relaying(bus, machine, secret, lambda: _stored(bus, 4), "changes 5 and 6 relayed")
    assert await _indexes(bus) == [1, 2, 5, 6]
    assert metrics.CHANGES_LOST.values[""] == lost + 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "changes 3 to 4" in errors[0]
    assert "cannot be sent again" in errors[0]
