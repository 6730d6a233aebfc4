"""The registry of object kinds: every command has one handler, every change kind is one
the change stream captures, and what a kind declares is checked before proposing."""

from __future__ import annotations

import typing

import msgspec
import pytest

from colony.consensus.kinds import REGISTRY
from colony.consensus.kinds.kind import Handles, Kind, Registry, RegistryError
from colony.shared import subjects
from colony.shared.messages import Command, KvPut, Outcome, Proposal


def test_every_command_has_a_kind_and_every_change_kind_is_on_the_stream():
    assert set(REGISTRY.by_type) == set(typing.get_args(Command))
    # the library's list (what the CLI and the stream subscribe to) is the registry's
    assert {*REGISTRY.change_kinds, subjects.SKIPPED} == set(subjects.CHANGE_KINDS)


def _ok(_txn, _command) -> Outcome:
    return Outcome(ok=True)


def test_a_registry_refuses_a_tag_twice_or_a_change_kind_the_stream_does_not_capture():
    kv = Kind("kv", (Handles(KvPut, _ok),), changes=("kv",))
    with pytest.raises(RegistryError, match="needs a tag of its own"):
        Registry((kv, Kind("again", (Handles(KvPut, _ok),))))
    with pytest.raises(RegistryError, match="not in subjects"):
        Registry((Kind("jobs", (), changes=("job",)),))
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
