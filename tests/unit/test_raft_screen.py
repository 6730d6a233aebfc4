"""What a follower hands pysyncobj of an `append_entries` (`raft.screen_append`): entries it
already holds are skipped, the log is cut only from a real conflict, and a conflict with a
committed entry is refused as fatal."""

from __future__ import annotations

import pytest

from colony.consensus.raft import LogConflict, screen_append

# index: 1 2 3 4 5 6 7 8
# term:  0 1 1 2 2 2 3 3      (entry 1 is pysyncobj's initial no-op)
TERMS = [0, 1, 1, 2, 2, 2, 3, 3]
LOG = [(f"c{i}".encode(), i, term) for i, term in enumerate(TERMS, 1)]
TERM = 3


def append(prev: int, entries: list[tuple[int, int]], term: int = TERM, **extra) -> dict:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 6,
        "prevLogIdx": prev,
        "prevLogTerm": TERMS[prev - 1] if 1 <= prev <= len(TERMS) else 9,
        "entries": [(f"c{i}".encode(), i, t) for i, t in entries],
        **extra,
    }


def test_new_entries_after_the_log_and_heartbeats_at_its_end_pass_unchanged():
    for message in (append(8, [(9, 3), (10, 3)]), append(8, [])):
        assert screen_append(LOG, 6, TERM, message) is message


def test_entries_the_log_holds_are_skipped_and_only_the_new_ones_delivered():
    screened = screen_append(LOG, 6, TERM, append(5, [(6, 2), (7, 3), (8, 3), (9, 3)]))
    assert screened is not None
    assert (screened["prevLogIdx"], screened["prevLogTerm"]) == (8, 3)
    assert [e[1:] for e in screened["entries"]] == [(9, 3)]
    assert screened["commit_index"] == 6 and screened["term"] == TERM


def test_a_repeat_that_ends_at_the_log_becomes_a_heartbeat_there():
    screened = screen_append(LOG, 6, TERM, append(6, [(7, 3), (8, 3)]))
    assert screened is not None
    assert (screened["prevLogIdx"], screened["entries"]) == (8, [])


@pytest.mark.parametrize(
    "message",
    [append(3, [(4, 2), (5, 2)]), append(5, []), append(2, [(3, 1)])],
    ids=["delayed entries", "delayed heartbeat", "older still"],
)
def test_a_delayed_frame_whose_entries_the_log_holds_and_passes_is_dropped(message):
    assert screen_append(LOG, 6, TERM, message) is None  # pysyncobj would cut 4..8


def test_a_conflict_above_the_commit_index_is_left_to_pysyncobj_to_cut_from_there():
    screened = screen_append(LOG, 6, TERM, append(5, [(6, 2), (7, 4), (8, 4)], term=4))
    assert screened is not None
    assert screened["prevLogIdx"] == 6  # pysyncobj cuts 7 and 8, keeps 6
    assert [e[1:] for e in screened["entries"]] == [(7, 4), (8, 4)]


@pytest.mark.parametrize(
    "message",
    [append(4, [(5, 2), (6, 4)], term=4), append(3, [(4, 9)], term=4)],
    ids=["at the commit index", "below it"],
)
def test_a_conflict_at_or_below_the_commit_index_is_fatal(message):
    with pytest.raises(LogConflict, match="is committed here"):
        screen_append(LOG, 6, TERM, message)


def test_a_mismatched_previous_entry_is_refused_by_pysyncobj_unless_it_is_committed():
    above = append(7, [(8, 4)], term=4, prevLogTerm=4)
    assert screen_append(LOG, 6, TERM, above) is above  # pysyncobj asks for earlier ones
    with pytest.raises(LogConflict, match="entry 5 is committed here in term 2"):
        screen_append(LOG, 6, TERM, append(5, [], term=4, prevLogTerm=1))


def test_frames_pysyncobj_ignores_or_refuses_pass_unchanged():
    older_term = append(3, [(4, 1)], term=2)  # pysyncobj ignores an earlier term's frames
    beyond = append(12, [(13, 3)])  # it asks the leader to send from 9
    compacted = append(0, [(1, 0)])  # before this log's first entry
    snapshot = {"type": "append_entries", "term": TERM, "commit_index": 6, "serialized": None}
    for message in (older_term, beyond, compacted, snapshot):
        assert screen_append(LOG, 6, TERM, message) is message


def test_an_entry_in_pieces_may_not_cut_the_log():
    assert screen_append(LOG, 6, TERM, append(8, [], transmission="start", data=b"")) is not None
    assert screen_append(LOG, 6, TERM, append(5, [], transmission="finish", data=b"")) is None
