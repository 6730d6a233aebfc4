"""The registry of object kinds: every command has one handler, every change kind is one
the change stream captures, and what a kind declares is checked before proposing."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import typing

import aiosqlite
import msgspec
import pytest

from colony.consensus import changelog
from colony.consensus.kinds import REGISTRY, kv, leases
from colony.consensus.kinds.kind import Handles, Kind, Registry, RegistryError, Select
from colony.consensus.machine import Machine, NeedsNewerVersion, encode_batch
from colony.shared import subjects
from colony.shared.messages import (
    MAX_DETAIL_BYTES,
    Command,
    KvDelete,
    KvPut,
    LeaseGrant,
    Outcome,
    Proposal,
    Stored,
    new_id,
)


def test_every_command_has_a_kind_and_no_kind_records_a_reserved_change_kind():
    assert set(REGISTRY.by_type) == set(typing.get_args(Command))
    assert not set(REGISTRY.change_kinds) & set(subjects.RESERVED_CHANGE_KINDS)
    # membership's events are never captured by the change stream
    with pytest.raises(RegistryError, match="'member' is reserved"):
        Registry((Kind("members", (), changes=(subjects.MEMBER,)),))
    with pytest.raises(RegistryError, match="members:"):
        Registry((Kind("members", (), changes=("a.b",)),))


def _ok(_txn, _command) -> Outcome:
    return Outcome(ok=True)


def test_a_registry_refuses_a_tag_twice_or_a_change_kind_twice_or_reserved():
    kv = Kind("kv", (Handles(KvPut, _ok),), changes=("kv",))
    with pytest.raises(RegistryError, match="needs a tag of its own"):
        Registry((kv, Kind("again", (Handles(KvPut, _ok),))))
    # a new change kind needs nothing but its kind: the stream captures the registry's
    assert Registry((kv, Kind("jobs", (), changes=("job",)))).change_kinds == ("kv", "job")
    with pytest.raises(RegistryError, match="two kinds record changes"):
        Registry((kv, Kind("other", (), changes=("kv",))))
    with pytest.raises(RegistryError):
        Registry((Kind("marker", (), changes=(subjects.SKIPPED,)),))


class Loose(msgspec.Struct, tag="test.loose", frozen=True):
    """A command whose id is not typed as a subject token (as a careless kind might)."""

    name: str


def test_a_change_id_that_cannot_be_a_subject_or_a_missing_epoch_is_refused():
    registry = Registry(
        (Kind("test", (Handles(Loose, _ok, ids=lambda c: (c.name,), needs_epoch=True),)),)
    )
    assert "needs the manager's epoch" in registry.refusal(Proposal("p", Loose("ok")))
    assert registry.refusal(Proposal("p", Loose("ok"), epoch=3)) == ""
    refusal = registry.refusal(Proposal("p", Loose("a.b"), epoch=3))
    assert "'a.b' cannot be used in a subject" in refusal
    assert "not known to this voter" in registry.refusal(Proposal("p", KvPut("k", "v")))


# --- the machine with kinds it lacks, or that ask more ------------------------------


def entry(*commands, epoch: int = 0, ts: float = 1000.0) -> bytes:
    return encode_batch([Proposal(new_id(), c, epoch) for c in commands], ts=ts)


def test_a_voter_that_lacks_a_command_stops_at_it_and_goes_on_once_upgraded(tmp_path):
    older = Machine(tmp_path / "db", kinds=REGISTRY.without("kv.delete"))
    assert older.apply(1, entry(KvPut("a", "1")))[0].ok
    for _ in range(2):  # pysyncobj tries again at its next tick: the same, nothing applied
        with pytest.raises(
            NeedsNewerVersion, match=r"needs a newer version: command tag kv\.delete at log index 2"
        ):
            older.apply(2, entry(KvPut("b", "1"), KvDelete("a")))
    assert older.last_applied == 1 and older.read("b") == (None, 0)
    older.close()
    upgraded = Machine(tmp_path / "db")
    assert [o.ok for o in upgraded.apply(2, entry(KvPut("b", "1"), KvDelete("a")))] == [True] * 2
    assert upgraded.read("a") == (None, 0) and upgraded.last_applied == 2


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b'{"proposals": [{"id": "x", "command": {"type": "job.submit", "job": "n"}}]}',
         "command tag job.submit"),
        (b'{"proposals": [{"id": "x", "command": {"type": "kv.put", "key": "k", "value": "v",'
         b' "ttl": 3}}]}', "unknown field"),
        (b'{"v": 2, "proposals": []}', "log entry format 2"),
        (b'[{"id": "x", "command": {"type": "kv.put", "key": "k"}}]', "missing required field"),
    ],
)  # fmt: skip
def test_an_entry_this_version_cannot_read_stops_it_whatever_is_unknown(tmp_path, raw, what):
    m = Machine(tmp_path / "db")
    with pytest.raises(NeedsNewerVersion, match=what):
        m.apply(1, raw)
    assert m.last_applied == 0


def test_a_command_that_needs_the_managers_epoch_is_refused_without_it(tmp_path):
    fenced_kv = dataclasses.replace(
        kv.KIND, commands=(dataclasses.replace(kv.KIND.commands[0], needs_epoch=True),)
    )
    m = Machine(tmp_path / "db", kinds=Registry((fenced_kv, leases.KIND)))
    [unfenced] = m.apply(1, entry(KvPut("a", "x")))
    assert not unfenced.ok and "kv.put is proposed only on the manager's behalf" in unfenced.error
    assert m.read("a") == (None, 0)
    m.apply(2, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    [fenced] = m.apply(3, entry(KvPut("a", "x"), epoch=1))
    assert fenced.ok and m.read("a") == ("x", 1)


def _records(id: str, detail: dict):
    def put(txn, command: KvPut) -> Outcome:
        outcome = kv.put(txn, command)
        txn.changed("kv", id, 1, detail)  # as a careless kind might
        return outcome

    return Registry((Kind("kv", (Handles(KvPut, put),), changes=("kv",)),))


@pytest.mark.parametrize(
    ("id", "detail", "why"),
    [
        ("a.b", {}, "'a.b' cannot be used in a subject"),
        ("ok", {"blob": "x" * MAX_DETAIL_BYTES}, "over the 16384-byte limit"),
        ("ok", {"nan": float("nan")}, "not JSON"),
    ],
)
def test_a_change_the_relay_could_not_publish_refuses_its_proposal_at_apply(
    tmp_path, id, detail, why
):
    m = Machine(tmp_path / "db", kinds=_records(id, detail))
    [refused] = m.apply(1, entry(KvPut("a", "x")))
    assert not refused.ok and why in refused.error
    assert m.read("a") == (None, 0) and m.last_applied == 1  # undone, and the log goes on


def test_a_change_carries_its_entrys_timestamp_and_structured_detail(tmp_path):
    m = Machine(tmp_path / "db", kinds=_records("k", {"ok": True, "nodes": ["a"], "n": None}))
    m.apply(1, entry(KvPut("a", "x"), ts=1234.5))
    rows = m.db.execute("SELECT kind, id, ts, detail FROM changes ORDER BY idx").fetchall()
    assert rows[0][:3] == ("kv", "a", 1234.5)
    assert json.loads(rows[1][3]) == {"ok": True, "nodes": ["a"], "n": None}


BOOKKEEPING = re.compile(r"\b(FROM|INTO|UPDATE|JOIN)\s+[\"']?(meta|proposals|changes)\b")
"""A statement reading or writing one of the machine's bookkeeping tables."""


def test_only_the_change_log_module_runs_statements_on_the_bookkeeping_tables():
    package = pathlib.Path(changelog.__file__).parent
    # schema.py's migrations reshape the tables (ALTER TABLE): not statements on their rows
    elsewhere = {
        str(path.relative_to(package)): BOOKKEEPING.findall(path.read_text())
        for path in package.rglob("*.py")
        if path.name not in ("changelog.py", "schema.py")
    }
    assert {path: found for path, found in elsewhere.items() if found} == {}


async def test_every_kind_read_answers_through_the_registry_kv_too(tmp_path):
    machine = Machine(tmp_path / "db")
    machine.apply(
        1, encode_batch([Proposal("p1", KvPut("a", "1")), Proposal("p2", KvPut("a", "2"))])
    )
    readable = {k.name for k in REGISTRY.kinds if k.query is not None}
    assert {"kv", "labels"} <= readable
    async with aiosqlite.connect(machine.path) as reader:
        assert await REGISTRY.named("kv").query(reader, Select("a")) == (1, [Stored("a", 2, "2")])
        assert await REGISTRY.named("kv").query(reader, Select("absent")) == (1, [])
    machine.close()
