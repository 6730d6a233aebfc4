"""The leader's pruner decides what a Prune forgets from its own notes, on a fake clock."""

from __future__ import annotations

import asyncio

from colony.consensus.pruner import Pruner
from colony.shared.messages import Prune


class Leader:
    """What the pruner reads: leadership, the applied index, the change log, the relay."""

    def __init__(self) -> None:
        self.leading = True
        self.index = 0
        self.last = 0
        self.relayed = 0
        self.now = 1000.0
        self.proposed: list[Prune] = []

    def pruner(self, window: float = 10.0, kept: int = 5) -> Pruner:
        async def positions() -> tuple[int, int]:
            return self.index, self.last

        async def propose(command: Prune) -> None:
            self.proposed.append(command)

        return Pruner(
            lambda: self.leading,
            positions,
            lambda: self.relayed,
            propose,
            window,
            kept,
            clock=lambda: self.now,
        )


def look(pruner: Pruner) -> Prune | None:
    return asyncio.run(pruner.look())


def test_records_are_forgotten_a_window_after_their_entry_was_applied():
    leader = Leader()
    pruner = leader.pruner(window=10.0)
    for second in range(10):  # 10 entries a second for the first window: nothing forgotten
        leader.index = 10 * second
        leader.now = 1000.0 + second
        assert look(pruner) is None
    leader.index, leader.now = 100, 1010.0
    assert look(pruner) is None  # index 0 was applied by 1000: nothing before it to forget
    leader.index, leader.now = 110, 1011.0
    # index 10 was applied by 1001; proposals made before half a window later are refused
    assert look(pruner) == Prune(proposals_upto=10, refuse_before=1006.0, changes_upto=0)
    leader.now = 1011.5  # no note is newly a window old, nothing changed: no entry
    assert look(pruner) is None
    assert len(leader.proposed) == 1


def test_changes_go_once_relayed_keeping_the_newest():
    leader = Leader()
    pruner = leader.pruner(kept=5)
    leader.last, leader.relayed = 20, 8
    assert look(pruner) == Prune(proposals_upto=0, refuse_before=0.0, changes_upto=8)
    leader.relayed = 20  # all relayed: the 5 newest stay
    assert look(pruner) == Prune(proposals_upto=0, refuse_before=0.0, changes_upto=15)
    leader.relayed = 3  # a new relay that knows less never takes back what was pruned
    assert look(pruner) is None


def test_a_follower_proposes_nothing_and_starts_afresh_when_it_leads():
    leader = Leader()
    pruner = leader.pruner(window=10.0)
    leader.index = 50
    look(pruner)
    leader.leading = False
    leader.now += 100
    assert look(pruner) is None
    assert not pruner.notes
    leader.leading = True
    leader.index = 60
    assert look(pruner) is None  # it has led for less than a window: it knows no old index
    leader.now += 10
    assert look(pruner).proposals_upto == 60


def test_records_are_forgotten_in_steps_a_tenth_of_a_window_apart():
    leader = Leader()
    pruner = leader.pruner(window=100.0)
    for second in range(100):  # an idle cluster: an entry (a lease renewal) or two a second
        leader.index, leader.now = 2 * second, 1000.0 + second
        look(pruner)
    leader.index, leader.now = 202, 1101.0
    assert look(pruner) == Prune(proposals_upto=2, refuse_before=1051.0, changes_upto=0)
    for second in range(2, 11):  # what a window ago is moves each second: no entry for it
        leader.index, leader.now = 200 + 2 * second, 1100.0 + second
        assert look(pruner) is None, second
    leader.index, leader.now = 222, 1111.0  # a tenth of a window on: the next step
    assert look(pruner) == Prune(proposals_upto=22, refuse_before=1061.0, changes_upto=0)
    leader.last, leader.relayed = 20, 20  # changes to drop go at once, with the records
    leader.index, leader.now = 224, 1112.0
    assert look(pruner) == Prune(proposals_upto=24, refuse_before=1062.0, changes_upto=15)
    assert len(leader.proposed) == 3
