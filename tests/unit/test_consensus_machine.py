"""The management database's apply, pure of Raft: deterministic, idempotent, replay-safe;
and the Raft frame codec: signed, and unable to run code."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import pickle

import pytest

from colony.consensus import frames
from colony.consensus.lease import AppliedClock, countdown_from
from colony.consensus.machine import Applied, BadBatch, LeaseState, Machine, encode_batch
from colony.shared.messages import (
    Barrier,
    KvCas,
    KvDelete,
    KvPut,
    LeaderElected,
    LeadershipTransferred,
    LeaseEnd,
    LeaseGrant,
    LeaseRenew,
    Proposal,
    VoterChanged,
)

_ids = itertools.count()


def entry(*commands, ids=None) -> bytes:
    ids = ids or [f"p{next(_ids)}" for _ in commands]
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


# --- the manager lease and fencing ------------------------------------------------


def fenced(epoch: int, *commands, ids=None) -> bytes:
    ids = ids or [f"p{next(_ids)}" for _ in commands]
    return encode_batch([Proposal(i, c, epoch) for i, c in zip(ids, commands, strict=True)])


def changes(m: Machine) -> list[tuple]:
    return m.db.execute(
        "SELECT kind, id, version, epoch, detail FROM changes ORDER BY idx"
    ).fetchall()


def test_a_grant_raises_the_epoch_and_only_a_free_lease_at_the_expected_epoch_is_granted(tmp_path):
    m = Machine(tmp_path / "db")
    [first] = m.apply(1, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    assert first.ok and first.version == 1 and m.lease().holder == "n1"
    [held] = m.apply(2, entry(LeaseGrant("n2", 1.0, expected_epoch=1)))
    assert not held.ok and "held by n1 at epoch 1" in held.error
    [stale] = m.apply(3, entry(LeaseGrant("n2", 1.0, expected_epoch=0)))
    assert not stale.ok and "at epoch 1, not 0" in stale.error
    ended, granted = m.apply(
        4, entry(LeaseEnd(1, "expired"), LeaseGrant("n2", 1.0, expected_epoch=1))
    )
    assert ended.ok and granted.ok and granted.version == 2
    assert m.lease().holder == "n2" and m.lease().epoch == 2
    kinds = [(kind, id, version) for kind, id, version, _, _ in changes(m)]
    assert kinds == [("lease", "manager", 1), ("lease", "manager", 1), ("lease", "manager", 2)]
    assert '"event": "expired"' in changes(m)[1][4]


def test_a_command_with_a_stale_or_ungranted_epoch_is_refused_and_changes_nothing(tmp_path):
    m = Machine(tmp_path / "db")
    m.apply(1, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    [ok] = m.apply(2, fenced(1, KvPut("a", "by-1")))
    m.apply(3, entry(LeaseEnd(1, "expired"), LeaseGrant("n2", 1.0, expected_epoch=1)))
    [stale] = m.apply(4, fenced(1, KvPut("a", "late")))
    [future] = m.apply(5, fenced(7, KvPut("a", "forged")))
    [current] = m.apply(6, fenced(2, KvPut("a", "by-2")))
    assert ok.ok and current.ok
    assert not stale.ok and stale.error.startswith("stale epoch 1: the manager lease is at epoch 2")
    assert not future.ok and "never granted" in future.error
    assert m.read("a") == ("by-2", 2)
    kv = [(id, version, epoch) for kind, id, version, epoch, _ in changes(m) if kind == "kv"]
    assert kv == [("a", 1, 1), ("a", 2, 2)]


def test_renewals_need_the_holders_epoch_and_leave_no_change_or_idempotency_record(tmp_path):
    m = Machine(tmp_path / "db")
    heard = []
    m.watch(heard.append)
    m.apply(1, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    [renewed] = m.apply(2, fenced(1, LeaseRenew("n1"), ids=["r"]))
    [again] = m.apply(3, fenced(1, LeaseRenew("n1"), ids=["r"]))
    [wrong] = m.apply(4, fenced(1, LeaseRenew("n2")))
    assert renewed.ok and again.ok and not wrong.ok and "n2 at epoch 1 cannot renew" in wrong.error
    renewed_twice = [Applied("renewed", "manager")] * 2  # a repeat renews again
    assert heard == [Applied("granted", "manager"), *renewed_twice]  # the refused one: not
    assert len(changes(m)) == 1
    assert m.db.execute("SELECT count(*) FROM proposals WHERE id = 'r'").fetchone() == (0,)


def test_the_term_the_holder_asked_in_is_kept_with_the_lease(tmp_path):
    m = Machine(tmp_path / "db")
    m.apply(1, entry(LeaseGrant("n1", 1.0, expected_epoch=0, term=4)))
    assert m.lease().asked_term == 4
    m.apply(2, fenced(1, LeaseRenew("n1", term=5)))
    assert m.lease().asked_term == 5


def test_a_renewal_asked_in_an_earlier_term_counts_down_from_its_arrival_if_sooner():
    asked_in_6 = LeaseState("n1", 3, 1.0, asked_term=6)
    # Asked in term 6, applied by the leader of term 7 once it committed its first entry
    # (20.5), but here since 20.0 at the latest: the countdown starts then.
    assert countdown_from(asked_in_6, 20.5, term=7, arrived_by=20.0) == 20.0
    assert countdown_from(asked_in_6, 20.5, term=7, arrived_by=21.0) == 20.5  # never later
    # Asked in this leader's own term: applied soon after it was asked.
    assert countdown_from(asked_in_6, 20.5, term=6, arrived_by=20.0) == 20.5
    unknown = LeaseState("n1", 3, 1.0)  # asked_term 0: from before
    assert countdown_from(unknown, 20.5, term=7, arrived_by=20.0) == 20.5
    assert countdown_from(asked_in_6, None, 7, 20.0) == 0.0


def test_only_the_holder_releases_and_a_released_epoch_fences_everything(tmp_path):
    m = Machine(tmp_path / "db")
    m.apply(1, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    [unfenced] = m.apply(2, entry(LeaseEnd(1, "released")))
    [released] = m.apply(3, fenced(1, LeaseEnd(1, "released", reason="handing over")))
    [after] = m.apply(4, fenced(1, KvPut("a", "x")))
    assert not unfenced.ok and "only the holder" in unfenced.error
    assert released.ok and m.lease().holder == ""
    assert not after.ok and after.error == "epoch 1 has ended: the manager lease is free"


def test_the_lease_survives_a_restart_with_its_clock_started_afresh(tmp_path):
    m = Machine(tmp_path / "db")
    m.apply(1, entry(LeaseGrant("n1", 1.5, expected_epoch=0)))
    m.close()
    again = Machine(tmp_path / "db")
    lease = again.lease()
    assert (lease.holder, lease.epoch, lease.ttl) == ("n1", 1, 1.5)
    times = iter([5.0, 7.0])
    clock = AppliedClock(lambda: next(times))  # started at 5.0
    clock(Applied("loaded"))  # at 7.0
    # the grant's time is unknown; the leader waits a whole ttl from the load
    assert (clock.granted("manager"), clock.renewed("manager")) == (None, 7.0)


def test_events_for_leaders_voters_and_transfers_are_recorded(tmp_path):
    m = Machine(tmp_path / "db")
    heard = []
    m.watch(heard.append)
    m.apply(
        1,
        entry(
            LeaderElected("n1", 3),
            VoterChanged("n4", "added", "replaces n2 (dead)"),
            LeadershipTransferred("n1", "n4", "more free resources"),
        ),
    )
    assert [(k, i, v) for k, i, v, _, _ in changes(m)] == [
        ("leader", "n1", 3),
        ("voter", "n4", 1),
        ("transfer", "n4", 1),
    ]
    assert heard == [Applied("transferred")]


def test_a_database_from_before_fencing_is_migrated(tmp_path):
    import sqlite3

    old = sqlite3.connect(tmp_path / "db")
    old.executescript(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL,"
        " expires INTEGER NOT NULL);"
        "CREATE TABLE changes (idx INTEGER PRIMARY KEY, log_index INTEGER NOT NULL,"
        " kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, cause TEXT NOT NULL);"
        "INSERT INTO changes VALUES (1, 1, 'kv', 'a', 1, 'c');"
    )
    old.commit()
    old.close()
    m = Machine(tmp_path / "db")
    m.apply(2, entry(LeaseGrant("n1", 1.0, expected_epoch=0)))
    assert [(k, v, e) for k, _, v, e, _ in changes(m)] == [("kv", 1, 0), ("lease", 1, 0)]
