"""A snake_case adapter over pysyncobj: one voter's Raft replica of the management database.

pysyncobj stays in this module. Its tick thread applies committed entries to
the `Machine` and calls back; `commit` turns that callback into an awaitable
on the service's loop (`call_soon_threadsafe`). Its snapshots (log
compaction, and catching up a voter that fell too far behind) are
colony.shared.snapshot files (an online backup of the database behind a
header; pysyncobj's bookkeeping rides in the header), not pickles of Python
objects. One that fails its checks (truncated, corrupted, another cluster's)
is refused: the database is left as it is, and the file the replica had
before is put back.

A replica folder holding only a database (restored from a snapshot, or seeded
from one: no journal) starts its log where the database stands (`seed_log`):
at its last applied index N, in that entry's term, from a snapshot whose
last two entries are markers (`SEED_COMMAND`, N-1 and N) that stand for
entries it never holds. It catches up from the leader's log from N+1, and
once it has applied two entries past N it compacts its log, so the markers
go. They are never applied anywhere: a follower drops a frame that would
append one (`screen_append`), and a seeded leader sends a follower that lacks
entry N its seed snapshot rather than such a frame. A restored log may start
campaigning from a later term than its entries' (`first_term`): a restore
starts a history whose terms are above every earlier one's.

Two Raft rules pysyncobj does not keep are kept here, with hooks rather than
changes to it:

- An entry counts toward a commit only once it is on stable storage.
  pysyncobj never flushes its journal (an mmap'd file), so `flush_journal`
  does, grouped: before a follower's acknowledgements of a batch of frames
  leave (the transport holds them until then), and at the start of every
  tick, which is where the leader counts its own log toward the commit
  index.
- A follower never cuts entries it holds because of an `append_entries`
  that only repeats them. pysyncobj deletes everything after `prevLogIdx`
  whenever its log is longer, so a delayed or repeated frame would cut
  entries it acknowledged, even applied ones. `screen_append` skips the
  entries it already holds (same index and term), lets it cut only from a
  real conflict, and treats a conflict with a committed entry as fatal: the
  replica stops rather than rewrite what it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal
from pysyncobj.node import Node

from colony.consensus import frames
from colony.consensus.keeper import membership_change
from colony.consensus.kinds import REGISTRY
from colony.consensus.kinds.kind import Registry
from colony.consensus.machine import (
    ForeignDatabase,
    Machine,
    NeedsNewerVersion,
    is_snapshot,
    read_snapshot_meta,
)
from colony.consensus.transport import Link, NatsTransport
from colony.shared import snapshot
from colony.shared.messages import Outcome


@dataclass(frozen=True)
class Timers:
    """Raft's timers, tuned for a LAN (pysyncobj's defaults suit slow WANs)."""

    append_entries: float = 0.05
    """Heartbeat period: 20 a second keeps an idle voter cheap (pysyncobj: 0.1 s)."""
    election_min: float = 0.3
    election_max: float = 0.6
    """A follower that hears no leader for a random time in this range campaigns."""
    leader_fallback: float = 1.0
    """A leader cut off from its majority steps down after this (pysyncobj: 30 s)."""
    tick: float = 0.1
    """The longest a voter's tick thread sleeps: it wakes at its next deadline (a heartbeat,
    an election), and at once for frames and proposals (the transport's pipe)."""
    apply_budget: float = 0.02
    """Seconds one tick spends applying committed entries, about (at least one entry): the
    rest waits for the next tick, so heartbeats, acknowledgements and elections are never
    held up for longer by a burst of large entries."""
    commit_notice: float = 0.005
    """Seconds the leader waits, once an entry commits, before it tells the followers in a
    frame of its own: the next frame with new entries carries the commit index anyway, so
    a client that sends again at once (or many in flight) costs no extra frame, and a
    follower still learns it long before the next heartbeat."""
    compaction_entries: int = 20_000
    compaction_seconds: float = 300


_LEADER = 2
"""pysyncobj's leader state."""
NO_QUORUM_CHECK = 0.1
"""Seconds between checks, while an entry waits, that a majority is still reachable."""
STATUS_TRIES = 5
"""Reads of pysyncobj's status before giving up: its thread may change what it reads
(a RuntimeError: a dict changed size), rarely twice in a row."""

log = logging.getLogger("colony.consensus.raft")


class NotCommitted(Exception):
    """The entry was not committed (or not known to be): the message says why."""


_REASONS = {
    FAIL_REASON.QUEUE_FULL: "too many proposals waiting",
    FAIL_REASON.MISSING_LEADER: "no leader: a majority of the voters cannot be reached",
    FAIL_REASON.DISCARDED: "the leader changed before it was committed",
    FAIL_REASON.NOT_LEADER: "this voter is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed while it waited: it may still commit "
    "(a retry with the same id is safe)",
    FAIL_REASON.REQUEST_DENIED: "refused by the leader",
}


def sync_conf(timers: Timers, state_dir: Path, save, load, on_state_changed=None) -> SyncObjConf:
    """pysyncobj's configuration for a voter: the timers, its journal and snapshot files,
    the snapshot hooks `save(path, raft_state)` / `load(path)`, and a hook called with
    (old, new) when it becomes follower (0), candidate (1) or leader (2)."""
    return SyncObjConf(
        onStateChanged=on_state_changed,
        autoTick=True,
        autoTickPeriod=timers.tick,
        appendEntriesPeriod=timers.append_entries,
        raftMinTimeout=timers.election_min,
        raftMaxTimeout=timers.election_max,
        leaderFallbackTimeout=timers.leader_fallback,
        journalFile=str(state_dir / "raft.journal"),
        fullDumpFile=str(state_dir / "raft.snapshot"),
        serializer=save,
        deserializer=load,
        useFork=False,  # never fork a threaded asyncio process
        # No leader: refuse at once ("no quorum"); clients retry, a queue would hide it.
        commandsWaitLeader=False,
        logCompactionMinEntries=timers.compaction_entries,
        logCompactionMinTime=timers.compaction_seconds,
        appendEntriesBatchSizeBytes=frames.MAX_FRAME // 2,
        # Voters are replaced at run time, one change committed at a time; the cluster
        # is kept in the journal and in snapshots.
        dynamicMembershipChange=True,
    )


JOURNAL = "raft.journal"
SNAPSHOT = "raft.snapshot"
KEPT = "raft.snapshot.kept"
"""A second name for the last snapshot file that passed its checks: a snapshot received
from a leader replaces `SNAPSHOT` before it is checked, and this puts the good one back."""

SEED_COMMAND = b"\x01colony-seed"
"""The command of the two entries a seeded log starts with: they stand for entries the
replica never holds (its database has their effects). pysyncobj's no-op type byte first:
were one ever applied, it would do nothing; but none is (`screen_append`)."""


def seed_log(
    state_dir: Path, machine: Machine, voters: list[str], me: str, first_term: int = 0
) -> int:
    """Start the Raft log of a replica folder that holds only a database (restored or
    seeded from a snapshot: no journal) at the database's last applied index N: write a
    snapshot whose last entries are (SEED_COMMAND, N-1, T) and (SEED_COMMAND, N, T), T
    the term of entry N, with the cluster of `voters`, and a journal holding the same
    two entries, committed, its current term max(T, `first_term`) (so a new leader's
    term is above it: a restore passes a term above every earlier history's, and its
    first new entry outranks any entry of that history). Returns N, or 0 if the log
    starts as it is (a journal exists, or nothing was applied, or the database does not
    know its term: it then catches up from the leader)."""
    journal_path = state_dir / JOURNAL
    index, term = machine.last_applied, machine.applied_term
    if journal_path.exists() or index < 2:
        return 0
    if term < 1:
        log.warning(
            "the database does not say which Raft term it was applied in (made before "
            "terms were recorded): this replica catches up from the leader's log instead",
            extra={"applied_index": index},
        )
        return 0
    began = time.perf_counter()
    last, previous = (SEED_COMMAND, index, term), (SEED_COMMAND, index - 1, term)
    raft = frames.dumps((last, previous, sorted(voters)))
    machine.save(state_dir / SNAPSHOT, made_by=me, origin="seed", voters=voters, raft=raft)
    _keep(state_dir / SNAPSHOT)
    # The journal last, under a temporary name: its presence says the seed is complete.
    seeding = state_dir / f"{JOURNAL}.seeding"
    for leftover in (seeding, Path(f"{seeding}.meta"), Path(f"{journal_path}.meta")):
        leftover.unlink(missing_ok=True)
    journal = FileJournal(str(seeding))
    journal.add(*previous)
    journal.add(*last)
    journal.setRaftCommitIndex(index)
    # The entries keep their real term T; only the term to campaign from jumps.
    journal.setCurrentTerm(max(term, first_term), None)  # stores the commit index too
    journal._destroy()  # flushed and closed
    os.replace(f"{seeding}.meta", f"{journal_path}.meta")
    os.replace(seeding, journal_path)
    log.info(
        "the Raft log starts at the database's applied index",
        extra={
            "index": index,
            "term": term,
            "current_term": max(term, first_term),
            "seconds": round(time.perf_counter() - began, 3),
        },
    )
    return index


def _keep(path: Path) -> None:
    """Give the snapshot file at `path`, checked, the second name KEPT."""
    kept = path.with_name(KEPT)
    linking = path.with_name(f"{KEPT}.tmp")
    linking.unlink(missing_ok=True)
    os.link(path, linking)
    os.replace(linking, kept)


def _put_back(path: Path) -> str:
    """Put the last checked snapshot file back at `path` in place of a refused one (none:
    remove the refused one, it must not be loaded or sent again); what was done."""
    kept = path.with_name(KEPT)
    if not kept.exists():
        path.unlink(missing_ok=True)
        return "removed"
    if path.exists() and os.path.samefile(kept, path):
        return "left as it was"  # the checked file itself failed (its disk?)
    linking = path.with_name(f"{SNAPSHOT}.restoring")
    linking.unlink(missing_ok=True)
    os.link(kept, linking)
    os.replace(linking, path)
    return "the previous one put back"


def _sync(journal: FileJournal) -> None:
    """Put what pysyncobj wrote to its journal (through a shared mmap) on stable storage:
    fdatasync of the file, which on Linux is what msync does for a shared mapping, but
    releases the interpreter lock while the disk works. Python's mmap.flush holds it, so
    every other thread of the voter (its event loop: frames, requests, the relay) stood
    still for each flush, a millisecond or more."""
    file = getattr(getattr(journal, "_FileJournal__journalFile", None), "_ResizableFile__f", None)
    if file is None:  # another pysyncobj than the one this was written for
        journal.flush()
    else:
        os.fdatasync(file.fileno())


class LogConflict(Exception):
    """A leader's entries contradict entries this voter holds as committed."""


Entry = tuple[bytes, int, int]
"""pysyncobj's log entry: (command, index, term)."""


def screen_append(
    journal: Sequence[Entry], commit_index: int, current_term: int, message: dict
) -> dict | None:
    """What pysyncobj should see of `append_entries` `message`, given this voter's
    `journal` (its log: consecutive entries), commit index and term: the message itself, the
    message without the entries the log already holds (same index and term), or None
    (drop it: it holds nothing new and pysyncobj would cut the entries after it). Raises
    LogConflict if it contradicts a committed entry."""
    prev = message.get("prevLogIdx")
    if message["term"] < current_term or prev is None:
        return message  # pysyncobj ignores an earlier term's; a snapshot install cuts nothing
    first, last = journal[0][1], journal[-1][1]
    entries = message.get("entries") or []
    if "transmission" in message:
        # One entry too large for a frame, sent in pieces: Colony's entries never are
        # (machine.MAX_ENTRY_BYTES), so refuse any that would cut this log, unchecked.
        return message if prev >= last else None
    if not first <= prev <= last:
        return message  # pysyncobj refuses it and tells the leader where this log ends

    def term_at(index: int) -> int:
        return journal[index - first][2]

    if entries and entries[0][0] == SEED_COMMAND:
        # A seeded leader's first marker (N) follows its other (N-1), whose term stands for
        # entry N's, not N-1's: prevLogTerm cannot be compared. Entry N's term is its own:
        # a log holding N in that term is the leader's up to N (log matching).
        _command, index, term = entries[0]
        if index > last or term_at(index) != term:
            return None  # it would append the marker (see below)
    elif term_at(prev) != message["prevLogTerm"]:
        if prev <= commit_index:
            raise LogConflict(_conflict(prev, term_at(prev), message["prevLogTerm"], message))
        return message  # pysyncobj refuses it; the leader steps back
    held = 0  # how many of them this log holds already
    for _command, index, term in entries:
        if index > last or term_at(index) != term:
            break
        held += 1
    verified = entries[held - 1][1] if held else prev  # this log is the leader's up to here
    new = entries[held:]
    if new and new[0][1] <= last and new[0][1] <= commit_index:  # a real conflict
        raise LogConflict(_conflict(new[0][1], term_at(new[0][1]), new[0][2], message))
    if any(command == SEED_COMMAND for command, _index, _term in new):
        # A seeded leader's marker for an entry this log lacks: it would be applied here
        # as if it were that entry. Dropped: the leader sends such a follower its seed
        # snapshot instead (`_Replica._send_seed_snapshot`); a frame that only repeats a
        # marker (same index and term) this log holds, as marker or real entry, passes.
        return None
    # (A real conflict with an uncommitted entry: pysyncobj cuts the log from there.)
    if not new and verified < last:
        # Nothing new, and this log goes further than the frame knows (it is delayed, or
        # repeats what a later one sent): pysyncobj would cut entries already acknowledged.
        return None
    if not held:
        return message
    return {**message, "prevLogIdx": verified, "prevLogTerm": term_at(verified), "entries": new}


def _conflict(index: int, ours: int, theirs: int, message: dict) -> str:
    return (
        f"entry {index} is committed here in term {ours}, but the leader of term "
        f"{message['term']} has term {theirs} there"
    )


OnApply = Callable[[float], None]
"""Told how many seconds each entry took to apply (on pysyncobj's thread)."""


class _Replica(SyncObj):
    def __init__(
        self,
        machine: Machine,
        me: str,
        peers: list[str],
        conf,
        link: Link,
        on_apply: OnApply,
        apply_budget: float,
        commit_notice: float,
        owner: Replica,
    ) -> None:
        owner._raft = self  # before pysyncobj starts: its thread may call the snapshot hooks
        self._machine = machine
        self._on_apply = on_apply  # set before pysyncobj starts: it may apply at once
        self._apply_budget = apply_budget
        self.stopped_by: str | None = None
        """Why this replica stopped itself: its log conflicts with committed entries, or
        a committed entry needs a newer version of Colony."""
        self.durable_index = 0
        """The journal is on stable storage up to this log index (its last flush)."""
        self.flushes = 0
        self.flush_seconds = 0.0
        self._flushed_shape: tuple[int, int, int] | None = None
        self._seed_compaction = False
        """Whether the compaction that removes a seeded log's markers was asked for."""
        self.saved_inode: int | None = None
        """The inode of the compaction snapshot just written under a temporary name, until
        pysyncobj renames it (`_keep_saved`)."""
        self.removed_in_log: frozenset[str] = frozenset()
        """The voters a removal ('rem') entry in the log removes, as of the end of the
        last tick (`_track_log`): replaced whole, so any thread may read it."""
        self.log_entries = 0
        """Entries in the log as of the end of the last tick (read mid-compaction, the
        journal's own length is not: it is rebuilt)."""
        self._removals: dict[int, str] = {}
        self._tracked: tuple[int, int] | None = None
        """(index, term) of the last log entry `_track_log` read."""
        self._link = link
        self._commit_sent = 0
        """The commit index the followers were last sent (the leader)."""
        self._commit_notice = commit_notice
        self._commit_moved_at: float | None = None
        """When the commit index moved past `_commit_sent` (None: it has not)."""
        transport = functools.partial(
            NatsTransport, link=link, screen=self._screen, make_durable=self.flush_journal
        )
        super().__init__(me, peers, conf, nodeClass=Node, transportClass=transport)

    @property
    def journal(self):
        """pysyncobj's log, a FileJournal (the one name-mangled attribute used here)."""
        return self._SyncObj__raftLog

    def flush_journal(self) -> None:
        """Put the journal on stable storage (`sync_journal`), unless nothing changed since the
        last flush. On pysyncobj's thread."""
        journal = self.journal
        # (first, last index, last term) names the log: two logs with the same last entry
        # hold the same entries (log matching); compaction moves the first.
        shape = (journal[0][1], journal[-1][1], journal[-1][2])
        if shape == self._flushed_shape:
            return
        began = time.perf_counter()
        self.sync_journal()
        self.flush_seconds += time.perf_counter() - began
        self.flushes += 1
        self._flushed_shape = shape
        self.durable_index = shape[1]

    def sync_journal(self) -> None:
        """Put the journal on stable storage (`flush_journal` calls it when it changed)."""
        _sync(self.journal)

    def _onTick(self, timeToWait=0.0):
        # pysyncobj counts the leader's own log toward the commit index first thing in a
        # tick: what it appended since the last flush must be on disk before that.
        self.flush_journal()
        self._compact_seed()
        self._send_seed_snapshot()
        super()._onTick(0.0)  # the tick's work, and the frames already there
        self._keep_saved()
        self._track_log()
        self._poller.poll(self._idle_for(timeToWait))

    def _idle_for(self, longest: float) -> float:
        """How long to wait for frames or proposals (both wake the tick thread) before the
        next tick: until its next deadline (a heartbeat to send, an election to call), at
        most `longest`. pysyncobj waits its tick period whatever is due, so an idle voter
        would wake 100 times a second for nothing."""
        if self.raftLastApplied < self.raftCommitIndex:
            return 0.0  # committed entries the last tick left: no idling
        if self._isLeader():
            due = self._SyncObj__newAppendEntriesTime
            if self._commit_moved_at is not None:
                due = min(due, self._commit_moved_at + self._commit_notice)
        else:
            due = self._SyncObj__raftElectionDeadline
        wait = due - time.monotonic()
        # Past, after the tick: it cannot act on it yet (a follower that hears no voter
        # does not campaign), so it looks again at the period, not in a busy loop.
        return min(wait, longest) if wait > 0 else longest

    def _applyCommand(self, command, callback, commandType=None):
        # On the caller's thread (the service's loop): wake the tick thread, so the entry
        # is appended and sent now rather than at the next tick.
        super()._applyCommand(command, callback, commandType)
        self._link.wake()

    def _checkCommandsToApply(self):
        """pysyncobj's step that appends the queued proposals; then the leader sends them to
        the followers at once, one frame each for all of them, and flushes them to its own
        journal while the followers do the same. A commit index that moved goes with them,
        or in a frame of its own once `commit_notice` has passed without new entries.
        pysyncobj, batching, would wait for the next heartbeat (50 ms) to send either: a
        proposal would wait for it, and a follower would apply an entry (and answer a
        client that asked it) that much later."""
        journal = self.journal
        before = journal[-1][1]
        super()._checkCommandsToApply()
        if not self._isLeader():
            return
        grew = journal[-1][1] != before
        now = time.monotonic()
        if self._commit_moved_at is None and self.raftCommitIndex > self._commit_sent:
            self._commit_moved_at = now
        moved = self._commit_moved_at
        if grew or (moved is not None and now >= moved + self._commit_notice):
            self._SyncObj__sendAppendEntries()
            if grew:
                self.flush_journal()

    def _SyncObj__sendAppendEntries(self):
        # what the followers are told of the commit index (pysyncobj's step, which also
        # sends the heartbeats)
        self._commit_sent, self._commit_moved_at = self.raftCommitIndex, None
        SyncObj._SyncObj__sendAppendEntries(self)

    def _send_seed_snapshot(self) -> None:
        """While a seeded leader's log starts with its markers (N-1, N), a follower whose
        next entry is N would be sent marker N, which it drops (`screen_append`): no
        answer, and it campaigns. It is sent the seed snapshot instead (pysyncobj sends
        the snapshot to a follower whose next entry is not after its log's first)."""
        journal = self.journal
        if len(journal) < 2 or journal[1][0] != SEED_COMMAND or not self._isLeader():
            return
        first, seeded = journal[0][1], journal[1][1]
        next_index = self._SyncObj__raftNextIndex
        for node, index in list(next_index.items()):
            if first < index <= seeded:
                next_index[node] = first

    def _keep_saved(self) -> None:
        """Give the compaction snapshot written this tick the second name KEPT, once
        pysyncobj renamed it into place (not before: after a crash between the two, the
        kept file would be ahead of the log)."""
        inode, self.saved_inode = self.saved_inode, None
        if inode is None:
            return
        path = Path(self._getConf().fullDumpFile)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_ino == inode:  # else the rename failed: the old one stays
                _keep(path)

    def _track_log(self) -> None:
        """Bring `removed_in_log` and `log_entries` up to date with the log: read the
        entries appended since the last tick, forget the ones compacted away, and read it
        all again after it was cut or replaced (a conflict, a snapshot installed)."""
        journal = self.journal
        self.log_entries = len(journal)
        if not journal:
            return
        first, last = journal[0][1], journal[-1][1]
        tracked = self._tracked
        if tracked is not None and first <= tracked[0] <= last:
            if journal[tracked[0] - first][2] != tracked[1]:
                tracked = None  # cut and appended again since
        else:
            tracked = None
        if tracked is None:
            self._removals = {}
        scan_from = first if tracked is None else tracked[0] + 1
        removals = {i: node for i, node in self._removals.items() if first <= i <= last}
        for command, index, _term in (journal[i - first] for i in range(scan_from, last + 1)):
            change = membership_change(command)
            if change is not None and change[0] == "rem":
                removals[index] = change[1]
        self._removals = removals
        self._tracked = (last, journal[-1][2])
        self.removed_in_log = frozenset(removals.values())

    def _compact_seed(self) -> None:
        """A seeded log (`seed_log`) is compacted once two entries past its markers are
        applied (a compaction snapshot names the last two applied entries: real ones
        then), so its log holds real entries only."""
        journal = self.journal
        if (
            not self._seed_compaction
            and len(journal) >= 2
            and journal[0][0] == SEED_COMMAND
            and self.raftLastApplied >= journal[1][1] + 2
        ):
            self._seed_compaction = True
            self.forceLogCompaction()

    def _SyncObj__applyLogEntries(self) -> bool:
        """pysyncobj's own (name-mangled) apply step, which applies every committed entry
        in one go: a burst of large entries would keep its thread from Raft (heartbeats,
        acknowledgements, lease renewals) for as long as they take, and a follower whose
        tick ran past its election timeout campaigns before it reads the leader's
        heartbeats. Here it applies them one at a time, in order, and stops once the tick's
        `apply_budget` is spent; the next tick goes on from there. pysyncobj's step is
        reused, shown one more committed entry at a time."""
        commit = self._SyncObj__raftCommitIndex
        began = time.perf_counter()
        send = False
        try:
            while self.raftLastApplied < commit and self.stopped_by is None:
                before = self.raftLastApplied
                self._SyncObj__raftCommitIndex = before + 1
                send = SyncObj._SyncObj__applyLogEntries(self) or send
                if self.raftLastApplied == before:
                    break  # not applied (it is tried again next tick)
                if time.perf_counter() - began >= self._apply_budget:
                    break
        finally:
            self._SyncObj__raftCommitIndex = commit
        return send

    def _screen(self, message: dict) -> dict | None:
        if self.stopped_by is not None:
            return None
        try:
            return screen_append(self.journal, self.raftCommitIndex, self.raftCurrentTerm, message)
        except LogConflict as e:
            self._stop(
                f"the Raft log conflicts with committed entries: {e}",
                "the Raft log conflicts with entries this voter committed",
            )
            return None

    def _stop(self, reason: str, what: str) -> None:
        """Stop this replica for good (until restarted): it applies, votes, leads and
        answers nothing more; its database and journal are left as they are."""
        self.stopped_by = reason
        log.critical(
            f"{what}: stopping this replica (nothing more is applied; its database and "
            "journal are left as they are)",
            extra={"reason": reason},
        )
        self.destroy()  # pysyncobj's thread stops after this tick

    @replicated
    def _apply_entry(self, entry: bytes) -> tuple[int, list[Outcome] | None]:
        index = self.raftLastApplied + 1  # pysyncobj counts it applied after this returns
        journal = self.journal
        term = journal[index - journal[0][1]][2]
        began = time.perf_counter()
        try:
            outcomes = self._machine.apply(index, entry, term)
        except NeedsNewerVersion as e:
            # Raised on: pysyncobj then neither counts the entry applied nor applies the
            # next ones, and its thread stops. Restarted with a version that knows the
            # command, the replica replays its journal and applies from this entry on.
            self._stop(str(e), f"log entry {index} needs a newer version of Colony")
            raise
        except (sqlite3.OperationalError, OSError):
            raise  # this voter's disk (full, failing): pysyncobj tries the entry again
        except Exception as e:
            # A bug: every voter meets it at this entry, and retrying it every tick would
            # hold the log silently. Stop, saying where and what, as for a newer version.
            self._stop(
                f"applying log entry {index} failed: {type(e).__name__}: {e}",
                f"log entry {index} could not be applied (a bug in this version of Colony)",
            )
            raise
        self._on_apply(time.perf_counter() - began)
        return index, outcomes


class Replica:
    """One voter: commit entries, read its state, report the group."""

    def __init__(
        self,
        me: str,
        voters: list[str],
        state_dir: Path,
        link: Link,
        timers: Timers = Timers(),
        on_apply: OnApply = lambda _seconds: None,
        kinds: Registry = REGISTRY,
        cluster: str = "",
        first_term: int = 0,
    ) -> None:
        """`cluster`: the cluster's id ('' : not checked); a database of another cluster
        raises ForeignDatabase (machine.py), a newer Colony's schema.TooNew. `first_term`:
        the least Raft term a log started from the database (`seed_log`) campaigns from
        (after a restore: above every term of the history it replaces)."""
        self.me = me
        self.machine = Machine(state_dir / "management.db", kinds, cluster)
        try:
            self.seeded_at = seed_log(state_dir, self.machine, voters, me, first_term)
            """The log index this replica's log was started at from its database (0: not)."""
        except BaseException:
            self.machine.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._link = link
        self._stopped_leading_at = 0.0
        conf = sync_conf(
            timers, state_dir, self._save_snapshot, self._load_snapshot, self._state_changed
        )
        peers = [v for v in voters if v != me]
        self._initial = list(voters)
        self._raft: _Replica
        _Replica(
            self.machine,
            me,
            peers,
            conf,
            link,
            on_apply,
            timers.apply_budget,
            timers.commit_notice,
            self,
        )

    async def commit(self, entry: bytes, timeout: float) -> tuple[int, list[Outcome] | None]:
        """Append `entry` through the leader; return (log index, outcomes) once applied here."""
        if self._raft.stopped_by is not None:
            raise NotCommitted(f"this voter stopped: {self._raft.stopped_by}")
        future = self._loop.create_future()

        def done(result, error) -> None:  # on pysyncobj's thread
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        self._raft._apply_entry(entry, callback=done)
        deadline = self._loop.time() + timeout
        while not future.done():
            # An entry appended just before the majority was lost waits forever:
            # say so as soon as this voter knows it cannot reach a majority.
            left = deadline - self._loop.time()
            await asyncio.wait({future}, timeout=min(max(left, 0), NO_QUORUM_CHECK))
            if future.done():
                break
            if self._raft.stopped_by is not None:  # it stopped while the entry waited
                future.cancel()
                raise NotCommitted(f"this voter stopped: {self._raft.stopped_by}")
            if not self._raft.hasQuorum:
                future.cancel()
                raise NotCommitted("no quorum: a majority of the voters cannot be reached")
            if left <= 0:
                future.cancel()
                raise NotCommitted(f"not committed within {timeout:g} s; it may still commit")
        return future.result()

    # --- the voters and the leadership (the leader only) ----------------------------

    async def add_voter(self, node: str) -> None:
        """Add `node` to the cluster; returns once the change is committed."""
        await self._membership(self._raft.addNodeToCluster, node)

    async def remove_voter(self, node: str) -> None:
        """Remove `node` from the cluster; returns once the change is committed."""
        await self._membership(self._raft.removeNodeFromCluster, node)

    async def _membership(self, change, node: str) -> None:
        future = self._loop.create_future()

        def done(result, error) -> None:  # on pysyncobj's thread
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        change(Node(node), callback=done)
        await asyncio.wait_for(future, timeout=10.0)

    async def transfer_leadership(self, node: str, patience: float = 1.0) -> bool:
        """Ask voter `node` to campaign now (Raft's TimeoutNow) as soon as it holds the whole
        log, within `patience` seconds; False if it never did (or this is not the leader).
        Whether it won shows in the status afterwards."""
        deadline = self._loop.time() + patience
        answers: list[int] = []  # the callback is called before transferLeadership returns
        while True:
            answers.clear()
            self._raft.transferLeadership(Node(node), callback=lambda _r, e: answers.append(e))
            if answers == [FAIL_REASON.SUCCESS]:
                return True
            if not self.is_leader or self._loop.time() > deadline:
                return False
            await asyncio.sleep(0.01)  # its acknowledgement of the last entries is on the way

    # --- views --------------------------------------------------------------------

    @property
    def voters(self) -> list[str]:
        """Every voter of the cluster as this replica knows it, itself first."""
        return [self.me, *sorted(node.id for node in self._raft.otherNodes)]

    @property
    def stopped_by(self) -> str | None:
        """Why this replica stopped itself (None while it runs)."""
        return self._raft.stopped_by

    @property
    def term(self) -> int:
        return self._raft.raftCurrentTerm

    @property
    def is_leader(self) -> bool:
        """Leads now (a stopped replica never does: its pysyncobj state is frozen)."""
        return self._raft.stopped_by is None and self._raft._isLeader()

    @property
    def log_arrived_by(self) -> float:
        """When (this replica's monotonic clock) every entry it holds from an earlier term
        had arrived: they came in a leader's frames, from its own journal, or it appended
        them while it led."""
        return max(self._link.entries_heard_at, self._stopped_leading_at)

    def _state_changed(self, old: int, _new: int) -> None:  # on pysyncobj's thread
        if old == _LEADER:
            self._stopped_leading_at = time.monotonic()

    def log_length(self) -> int:
        """Entries in this replica's log (after its latest snapshot), as of its last tick."""
        return self._raft.log_entries

    def removed_in_log(self) -> frozenset[str]:
        """The voters that removal entries in this replica's log remove (committed or not),
        as of its last tick: a new voter replaying this log would pass through a set of
        voters without them."""
        return self._raft.removed_in_log

    def compact(self) -> None:
        """Ask pysyncobj to snapshot and cut its log now (done within a tick or two: it
        does not fork here)."""
        self._raft.forceLogCompaction()

    def read_status(self) -> dict | None:
        """`status()`, or None if pysyncobj's thread kept changing it under the read: no
        decision can be taken on it (None is never an empty or zero status)."""
        try:
            return self.status()
        except RuntimeError:
            return None

    def status(self) -> dict:
        """pysyncobj's status, with node objects turned into ids. Raises RuntimeError in
        the rare case its thread changed it under each of STATUS_TRIES reads."""
        for attempt in range(STATUS_TRIES):
            try:
                raw = self._raft.getStatus()
                break
            except RuntimeError:  # a dict changed size under the read: its thread's update
                if attempt == STATUS_TRIES - 1:
                    raise
        leader = raw.get("leader")
        return {
            "role": {0: "follower", 1: "candidate", 2: "leader"}.get(raw["state"], "follower"),
            "leader": leader.id if leader is not None else None,
            "term": raw["raft_term"],
            "commit_index": raw["commit_idx"],
            "applied_index": raw["last_applied"],
            "has_quorum": bool(raw["has_quorum"]),
            "connected": {
                k.removeprefix("partner_node_status_server_"): v == 2
                for k, v in raw.items()
                if k.startswith("partner_node_status_server_")
            },
            "match_index": {
                k.removeprefix("match_idx_server_"): v
                for k, v in raw.items()
                if k.startswith("match_idx_server_")
            },
        }

    def destroy(self) -> None:
        """Stop pysyncobj and wait for its thread, then close the database (in that order:
        the thread applies entries until it stops)."""
        self._raft.destroy_synchronous()
        self.machine.close()

    # --- snapshots (called on pysyncobj's thread) -----------------------------------

    def _save_snapshot(self, path: str, raft_state) -> None:
        """A snapshot of the database, with pysyncobj's own bookkeeping (its last two
        applied entries, the voters) in its header. pysyncobj renames `path` to SNAPSHOT
        once it is written, and then gives it the second name KEPT."""
        last_entry, previous_entry, cluster = raft_state
        voters = sorted(node.id for node in cluster)
        meta = frames.dumps((last_entry, previous_entry, voters))
        self.machine.save(Path(path), made_by=self.me, origin="compaction", voters=voters,
                          raft=meta)  # fmt: skip
        self._raft.saved_inode = os.stat(path).st_ino  # kept once renamed: `_keep_saved`

    def _load_snapshot(self, path: str):
        """pysyncobj's bookkeeping from the snapshot file at `path` (at start, or one a
        leader sent), the database loaded from it if it is ahead of ours. A file that fails
        its checks is refused with nothing loaded (an exception: pysyncobj keeps its log as
        it was), and the last good file is put back in its place. At start nothing is
        loaded yet, and the log cannot go on without it: the file put back is loaded
        instead; if there is none, or it fails too, the replica stops, saying why."""
        path = Path(path)
        at_start = self._raft._SyncObj__needLoadDumpFile  # cleared once this returns
        try:
            return self._load_checked(path)
        except NeedsNewerVersion as e:  # a newer Colony's schema: stop, as for an entry
            _put_back(path)
            self._raft._stop(str(e), "a snapshot needs a newer version of Colony")
            raise
        except _REFUSED as e:
            if not at_start:
                log.error(
                    "refused a Raft snapshot: the database is left as it is",
                    extra={"reason": str(e), "snapshot_file": _put_back(path)},
                )
                raise
            refused = e
        kept = path.with_name(KEPT)
        if not kept.exists() or os.path.samefile(kept, path):
            self._stop_at_start(f"snapshot {path}: {refused}")
            raise refused
        log.error(
            "refused the Raft snapshot at start: loading the one kept before it",
            extra={"reason": str(refused), "snapshot_file": _put_back(path)},
        )
        try:
            return self._load_checked(path)
        except (NeedsNewerVersion, *_REFUSED) as e:
            self._stop_at_start(f"snapshot {path}: {refused}; the one kept before it: {e}")
            raise

    def _stop_at_start(self, reason: str) -> None:
        self._raft._stop(reason, "the Raft snapshot could not be loaded at start")

    def _load_checked(self, path: Path):
        """`_load_snapshot`'s work, for a file that passes its checks (else it raises, and
        nothing was loaded)."""
        meta, index = self._check_snapshot(path)
        if index > self.machine.last_applied:  # else ours is newer: keep it
            self.machine.load(path)
        elif is_snapshot(path):
            snapshot.verify(path)  # not loaded, but kept: it may be sent to a voter
        _keep(path)
        last_entry, previous_entry, *rest = frames.loads(meta)
        cluster = rest[0] if rest else self._initial  # a snapshot from before dynamic voters
        return last_entry, previous_entry, {Node(node) for node in cluster}

    def _check_snapshot(self, path: Path) -> tuple[bytes, int]:
        """(pysyncobj's bookkeeping, the database's applied index) of the snapshot at
        `path`, once its header says it fits this cluster (its checksum is checked as it
        is loaded or verified)."""
        if not is_snapshot(path):  # a bare database: a snapshot of the old kind
            return read_snapshot_meta(path)
        header = snapshot.read_header(path)
        if header.schema > snapshot.SCHEMA:
            raise NeedsNewerVersion(
                f"snapshot {path} has schema version {header.schema}, but this version of "
                f"Colony knows schema versions up to {snapshot.SCHEMA}: a newer Colony "
                "wrote it"
            )
        snapshot.check_fits(header, f"snapshot {path}", self.machine.cluster or None)
        if not header.raft:
            raise snapshot.BadSnapshot(
                f"snapshot {path} holds no Raft bookkeeping (made by {header.origin}, not "
                "by a voter's log compaction): it cannot stand in the Raft log"
            )
        return header.raft, header.index


_REFUSED = (snapshot.BadSnapshot, ForeignDatabase, sqlite3.DatabaseError, frames.BadFrame, OSError)
"""What a snapshot file that fails its checks raises (a newer schema aside)."""


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        future.set_result(result)
    else:
        reason = _REASONS.get(error, f"pysyncobj error {error}")
        future.set_exception(NotCommitted(reason))
