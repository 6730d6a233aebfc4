"""Apply never breaks on a hostile command: values out of bounds are refused at decode,
and an error applying one proposal refuses that proposal alone, the same on every voter."""

from __future__ import annotations

import msgspec
import pytest

from colony.consensus import machine as machine_module
from colony.consensus.machine import BadBatch, Machine, NeedsNewerVersion, encode_batch
from colony.shared.messages import (
    MAX_INT,
    DecodeError,
    KvPut,
    LeaderElected,
    Proposal,
    ProposeRequest,
    decode,
)


def test_a_term_too_large_is_refused_before_proposing_and_stops_a_voter_that_meets_it(
    tmp_path,
):
    # built in Python (no validation), as a buggy proposer could
    with pytest.raises(BadBatch, match="term"):
        encode_batch([Proposal("evil", LeaderElected("v1", 2**70))])
    # In the log all the same (a newer version's bound, or a forger with the secret):
    # the voter stops there, nothing applied and the entry not counted, never skips it.
    m = Machine(tmp_path / "db")
    hostile = b'[{"id": "evil", "command": {"type": "leader.elected", "node": "v1", "term": %d}}]'
    with pytest.raises(NeedsNewerVersion, match="at log index 1"):
        m.apply(1, hostile % 2**70)
    assert m.last_applied == 0 and not any("evil" in line for line in m.dump())


@pytest.mark.parametrize("value", [2**70, MAX_INT + 1, -1])
def test_counters_out_of_bounds_are_refused_at_decode(value):
    raw = msgspec.json.encode(
        {
            "proposals": [
                {"id": "x", "command": {"type": "leader.elected", "node": "a", "term": value}}
            ]
        }
    )
    with pytest.raises(DecodeError, match="term"):
        decode(raw, ProposeRequest)
    epoch = msgspec.json.encode(
        {
            "proposals": [
                {"id": "x", "command": {"type": "kv.put", "key": "k", "value": "v"}, "epoch": value}
            ]
        }
    )
    with pytest.raises(DecodeError, match="epoch"):
        decode(epoch, ProposeRequest)


def test_deep_nesting_is_a_decode_error_not_a_crash():
    deep = b'{"proposals": [], "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(deep, ProposeRequest)


def test_an_error_applying_one_proposal_refuses_it_alone_and_undoes_its_writes(
    tmp_path, monkeypatch
):
    m = Machine(tmp_path / "db")
    real = Machine._changed

    def changed(self, txn, kind, changes):
        if any(id == "bad" for id, _version, _detail in changes):
            # the row is written, then the change log refuses: all undone
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(self, txn, kind, changes)

    monkeypatch.setattr(machine_module.Machine, "_changed", changed)
    batch = [Proposal("a", KvPut("good", "1")), Proposal("b", KvPut("bad", "1"))]
    good, bad = m.apply(1, encode_batch(batch))
    assert good.ok and not bad.ok
    assert bad.error == (
        "kv.put could not be applied: OverflowError: Python int too large to convert to "
        "SQLite INTEGER"
    )
    assert m.read("good") == ("1", 1) and m.read("bad") == (None, 0)
    assert m.last_applied == 1
    # the refusal is recorded: a retry of the same id gets it back, nothing reapplied
    monkeypatch.setattr(machine_module.Machine, "_changed", real)
    [again] = m.apply(2, encode_batch([Proposal("b", KvPut("bad", "1"))]))
    assert again == bad
