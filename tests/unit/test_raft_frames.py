"""Raft frames are signed for one recipient, at their place in their sender's stream; a
receiver's ReplayGuard accepts only each sender's latest run, in sequence."""

from __future__ import annotations

import pytest

from colony.consensus import frames
from colony.consensus.frames import Incarnation, ReplayGuard

SECRET = b"0123456789abcdef"
RUN = Incarnation(1_000, b"nonce-01")


def frame(seq: int, run: Incarnation = RUN, sender: str = "v1") -> frames.Frame:
    return frames.Frame(sender, "v2", run, seq, {"type": "append_entries"})


def test_a_frame_carries_its_recipient_run_and_number_inside_the_signature():
    sealed = frames.seal_for(SECRET, "v1", "v2", RUN, 7, {"type": "next_node_idx"})
    assert frames.unseal_for(SECRET, sealed) == ("v1", "v2", RUN, 7, {"type": "next_node_idx"})
    for position in range(frames.MAC_BYTES, len(sealed)):  # any changed byte: refused
        tampered = sealed[:position] + bytes([sealed[position] ^ 1]) + sealed[position + 1 :]
        with pytest.raises(frames.BadFrame, match="signature"):
            frames.unseal_for(SECRET, tampered)


def test_a_frame_without_recipient_and_number_is_refused():
    old_style = frames.seal(SECRET, "v1", {"type": "append_entries"})
    with pytest.raises(frames.BadFrame, match="names no recipient"):
        frames.unseal_for(SECRET, old_style)


def test_numbers_must_grow_within_a_run():
    guard = ReplayGuard()
    assert [guard.refusal(frame(n)) for n in (1, 2, 5)] == ["", "", ""]
    assert guard.refusal(frame(5)).startswith("replayed: number 5, after 5")
    assert guard.refusal(frame(3)).startswith("replayed")
    assert guard.refusal(frame(6)) == ""
    assert guard.refusal(frame(1, sender="v3")) == ""  # each sender counts on its own


def test_a_later_run_is_accepted_and_an_earlier_one_never_again():
    guard = ReplayGuard()
    assert guard.refusal(frame(40)) == ""
    restarted = Incarnation(2_000, b"nonce-02")
    assert guard.refusal(frame(1, restarted)) == ""  # numbering starts again: fine
    assert guard.refusal(frame(41)).startswith("replayed: from an earlier run of v1")
    same_instant = Incarnation(2_000, b"nonce-03")
    assert guard.refusal(frame(9, same_instant)).startswith("replayed")
    assert guard.refusal(frame(2, restarted)) == ""


def test_new_incarnations_differ():
    assert frames.new_incarnation() != frames.new_incarnation()
