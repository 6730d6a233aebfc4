"""Retention at apply: a Prune forgets idempotency records and relayed changes, the same on
every voter; a retry too late to be recognised is refused, never applied twice."""

from __future__ import annotations

import itertools

import pytest

from colony.consensus.kinds import retention
from colony.consensus.machine import Machine, encode_batch
from colony.shared.messages import KvPut, Proposal, Prune


@pytest.fixture
def machine(tmp_path):
    made = Machine(tmp_path / "management.db")
    yield made
    made.close()


class Log:
    """Entries applied to a machine in order, each `made` by its client at a given time."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.index = itertools.count(1)

    def apply(self, *proposals: Proposal, made: float = 0.0):
        return self.machine.apply(next(self.index), encode_batch(list(proposals), made=made))

    def put(self, id: str, key: str, value: str, made: float = 0.0):
        [outcome] = self.apply(Proposal(id, KvPut(key, value)), made=made)
        return outcome


def count(machine: Machine, table: str) -> int:
    return machine.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_forgotten_ids_are_gone_and_a_late_retry_is_refused_not_applied_twice(machine):
    log = Log(machine)
    for i in range(10):  # entries 1-10, made at 100, 101, ...
        assert log.put(f"p{i}", "k", f"v{i}", made=100.0 + i).ok
    assert count(machine, "proposals") == 10
    log.apply(Proposal("prune-1", Prune(proposals_upto=5, refuse_before=106.0, changes_upto=0)))
    assert count(machine, "proposals") == 5  # the Prune itself keeps no record
    assert retention.pruned(machine.db) == (5, 0)

    late = log.put("p0", "k", "v0", made=100.0)  # its record is gone: a retry of it is refused
    assert not late.ok and "Propose it again with new ids" in late.error
    assert machine.read("k") == ("v9", 10)
    kept = log.put("p7", "k", "v7", made=107.0)  # still remembered: its first outcome
    assert kept.ok and kept.index == 8 and machine.read("k") == ("v9", 10)
    assert log.put("fresh", "k", "new", made=106.0).ok  # made late enough: applies
    assert log.put("unknown-time", "k", "newer").ok  # no time given: nothing to judge by


def test_a_prune_never_takes_back_what_an_earlier_one_did(machine):
    log = Log(machine)
    for i in range(6):
        log.put(f"p{i}", "k", "v", made=100.0 + i)
    log.apply(Proposal("a", Prune(proposals_upto=4, refuse_before=105.0, changes_upto=3)))
    log.apply(Proposal("b", Prune(proposals_upto=2, refuse_before=101.0, changes_upto=1)))
    assert retention.pruned(machine.db) == (4, 3)
    assert not log.put("p4-again", "k", "v", made=104.0).ok  # the later, looser one lost


def test_relayed_changes_go_but_the_newest_stays_and_numbering_goes_on(machine):
    log = Log(machine)
    for i in range(5):
        log.put(f"p{i}", f"k{i}", "v")  # changes 1-5
    log.apply(Proposal("prune", Prune(proposals_upto=0, refuse_before=0, changes_upto=99)))
    rows = machine.db.execute("SELECT idx FROM changes").fetchall()
    assert rows == [(5,)]  # everything relayed may go but the newest: idx is its row id
    log.put("p5", "k5", "v")
    assert machine.db.execute("SELECT max(idx) FROM changes").fetchone() == (6,)


def test_two_voters_that_apply_the_same_prunes_hold_the_same_database(tmp_path):
    entries = []  # made once: an entry carries its proposer's time
    for i in range(20):
        proposal = Proposal(f"p{i}", KvPut(f"k{i % 3}", str(i)))
        entries.append(encode_batch([proposal], made=100.0 + i))
        if i % 7 == 6:
            prune = Prune(proposals_upto=i - 3, refuse_before=100.0 + i - 2, changes_upto=i)
            entries.append(encode_batch([Proposal(f"prune-{i}", prune)]))
    first, second = Machine(tmp_path / "a.db"), Machine(tmp_path / "b.db")
    for machine in (first, second):
        for index, entry in enumerate(entries, start=1):
            machine.apply(index, entry)
    assert first.dump() == second.dump()
    assert retention.pruned(first.db) == (10, 13)
    first.close()
    second.close()


def test_one_prune_forgets_at_most_a_step_so_apply_never_stalls(machine, monkeypatch):
    monkeypatch.setattr(retention, "STEP", 3)
    log = Log(machine)
    for i in range(10):
        log.put(f"p{i}", f"k{i}", "v")  # entries and changes 1-10
    everything = Prune(proposals_upto=10, refuse_before=0, changes_upto=10)
    log.apply(Proposal("a", everything))
    assert retention.pruned(machine.db) == (4, 4)  # the oldest (1) plus a step
    log.apply(Proposal("b", everything))
    assert retention.pruned(machine.db) == (8, 8)
    log.apply(Proposal("c", everything))
    assert retention.pruned(machine.db) == (10, 9)  # the newest change stays
