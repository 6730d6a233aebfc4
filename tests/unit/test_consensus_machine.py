"""The management database's apply, pure of Raft: deterministic, idempotent, replay-safe;
and the Raft frame codec: signed, and unable to run code."""

from __future__ import annotations

import hashlib
import hmac
import pickle

import pytest

from colony.consensus import frames
from colony.consensus.machine import BadBatch, Machine, encode_batch
from colony.shared.messages import Barrier, KvCas, KvDelete, KvPut, Proposal


def entry(*commands, ids=None) -> bytes:
    ids = ids or [f"p{i}" for i in range(len(commands))]
    return encode_batch([Proposal(i, c) for i, c in zip(ids, commands, strict=True)])


def test_an_entry_applies_in_order_and_a_replayed_index_is_skipped(tmp_path):
    m = Machine(tmp_path / "db")
    outcomes = m.apply(2, entry(KvPut("a", "1"), KvPut("a", "2"), KvDelete("b"), Barrier()))
    assert [(o.ok, o.value, o.version) for o in outcomes] == [
        (True, "1", 1),
        (True, "2", 2),
        (True, None, 0),
        (True, None, 0),
    ]
    assert m.last_applied == 2
    assert m.apply(2, entry(KvPut("a", "3"), ids=["other"])) is None  # a journal replay
    assert m.read("a") == ("2", 2)


def test_a_retried_proposal_id_returns_its_first_outcome_without_applying_again(tmp_path):
    m = Machine(tmp_path / "db")
    [first] = m.apply(1, entry(KvPut("a", "x"), ids=["same"]))
    [again] = m.apply(2, entry(KvPut("a", "y"), ids=["same"]))
    assert again == first and m.read("a") == ("x", 1)


def test_compare_and_set_applies_only_on_the_expected_value(tmp_path):
    m = Machine(tmp_path / "db")
    [absent] = m.apply(1, entry(KvCas("a", None, "first"), ids=["c1"]))
    [stale] = m.apply(2, entry(KvCas("a", "nope", "second"), ids=["c2"]))
    assert absent.ok and not stale.ok and stale.value == "first"


def test_replicas_that_apply_the_same_log_dump_the_same(tmp_path):
    log = [
        entry(KvPut(f"k{i % 7}", str(i)), KvCas("c", None, "x"), ids=[f"a{i}", f"b{i}"])
        for i in range(50)
    ]
    dumps = []
    for name in ("one", "two"):
        m = Machine(tmp_path / name)
        for index, e in enumerate(log, start=1):
            m.apply(index, e)
        dumps.append(m.dump())
    assert dumps[0] == dumps[1] and len(dumps[0]) > 10


def test_a_snapshot_restores_the_database_and_its_applied_index(tmp_path):
    m = Machine(tmp_path / "db")
    m.apply(1, entry(KvPut("a", "1")))
    m.save(tmp_path / "snap")
    m.apply(2, entry(KvPut("a", "2"), ids=["later"]))
    m.load(tmp_path / "snap")
    assert m.read("a") == ("1", 1) and m.last_applied == 1


def test_an_empty_or_huge_batch_is_refused_before_proposing():
    with pytest.raises(BadBatch):
        encode_batch([])
    with pytest.raises(BadBatch):
        encode_batch([Proposal(str(i), Barrier()) for i in range(513)])
    with pytest.raises(BadBatch, match="over the 262144-byte limit"):
        encode_batch([Proposal("big", KvPut("k", "x" * 300_000))])


SECRET = b"0123456789abcdef"


def test_frames_round_trip_and_refuse_a_wrong_secret_or_a_tampered_body():
    frame = frames.seal(SECRET, "v1", {"type": "append_entries", "entries": [(b"cmd", 4, 2)]})
    assert frames.unseal(SECRET, frame) == (
        "v1",
        {"type": "append_entries", "entries": [(b"cmd", 4, 2)]},
    )
    with pytest.raises(frames.BadFrame, match="signature"):
        frames.unseal(b"another-secret!!", frame)
    tampered = frame[:-1] + bytes([frame[-1] ^ 1])
    with pytest.raises(frames.BadFrame, match="signature"):
        frames.unseal(SECRET, tampered)


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_signed_frame_still_cannot_build_objects_or_call_functions():
    body = pickle.dumps(("v1", _Boom()))
    frame = hmac.digest(SECRET, body, hashlib.sha256) + body
    with pytest.raises(frames.BadFrame, match="only plain values"):
        frames.unseal(SECRET, frame)
