"""What an object kind declares, and the registry the machine dispatches through.

A kind (kv, leases, the raft group's events; later nodes, jobs, instances) is
one module of this package holding one `Kind`: its tables (DDL), its change
kinds, and one `Handles` per command type it applies (the command structs
themselves live in colony.shared.messages: the CLI builds them). The machine
knows no kind: it looks each decoded command's type up in a `Registry` and
calls the handler inside the entry's transaction with a `Txn`.

A handler is deterministic: it reads only the database, its kind's memory and
the `Txn` (log index, proposal, the entry's timestamp), never a clock or a
random source, and raises only what every voter would raise the same way (see
machine._DETERMINISTIC) to refuse the proposal. What it writes goes through
`txn.db`; each change it makes to an object is recorded with `txn.changed`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import aiosqlite
import msgspec

from colony.consensus.schema import Migration
from colony.shared import subjects
from colony.shared.messages import Outcome, Proposal, Stored


@dataclass(frozen=True)
class Applied:
    """What an entry did that a watcher times (on its own clock): a lease `granted`,
    `renewed` or `ended`, a leadership `transferred`, or the database `loaded` (at start
    or from a snapshot: every lease's age is unknown)."""

    what: str
    lease: str = ""


class Txn:
    """One proposal being applied: what a handler may read and write.

    `memory` is the handler's kind's in-memory state (what its `Kind.load` built);
    `noted` collects the `Applied` events told to the machine's watchers once the
    entry commits; `changed` appends to the change log (set up by the machine)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        index: int,
        proposal: Proposal,
        ts: float,
        memory: Any,
        noted: list[Applied],
        changed: Callable[..., None],
    ) -> None:
        self.db = db
        self.index = index
        """The log index of the entry."""
        self.proposal = proposal
        self.ts = ts
        """The entry's timestamp (its proposer's wall clock): the same on every voter."""
        self.memory = memory
        self.noted = noted
        self._changed = changed

    def changed(self, kind: str, id: str, version: int, detail: dict | None = None) -> None:
        """Record that object `id` of change kind `kind` is now at `version` (0: deleted).
        Raises ValueError (the proposal is refused) if the change could not be published."""
        self._changed(self, kind, [(id, version, detail or {})])

    def changed_all(self, kind: str, changes: list[tuple[str, int, dict | bytes]]) -> None:
        """`changed` for many objects at once, each (id, version, detail); a detail may be
        its JSON already (bytes: a record encoded once for its row and its change)."""
        self._changed(self, kind, changes)

    def note(self, what: str, lease: str = "") -> None:
        self.noted.append(Applied(what, lease))


def no_ids(_command: Any) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Handles:
    """How a kind applies one command type."""

    command: type[msgspec.Struct]
    """The command struct (tagged, in colony.shared.messages)."""
    apply: Callable[[Txn, Any], Outcome]
    ids: Callable[[Any], Iterable[str]] = no_ids
    """The ids of the objects whose changes it may record: each must be a subject token,
    checked before proposing and again at apply."""
    needs_epoch: bool = False
    """Proposed only on the manager's behalf: refused without the manager's epoch."""
    internal: bool = False
    """Proposed only by the consensus service itself: the public endpoint refuses it."""
    recorded: bool = True
    """Keep its outcome under its proposal id (idempotency). False only for what is
    harmless to apply twice and frequent (lease renewals)."""
    apply_all: Callable[[list[tuple[Txn, Any]]], list[Outcome]] | None = None
    """Applies consecutive proposals of this command in one go (their outcomes, in order):
    exactly what `apply` on each in turn would do, in fewer statements. It must not change
    the kind's memory. If it raises, the machine undoes it and applies them one by one."""

    @property
    def tag(self) -> str:
        return str(self.command.__struct_config__.tag)


@dataclass(frozen=True)
class Select:
    """Which objects a read asks for (the query endpoint checks `where`'s fields against
    the kind's `filters` and sets `limit`)."""

    id: str = ""
    """One object ('' : every object)."""
    where: dict[str, str] = field(default_factory=dict)
    """Only objects whose fields have these values."""
    after: str = ""
    """Only objects whose id sorts after this (paging)."""
    limit: int = 1000
    """At most this many objects, by id."""


Query = Callable[[aiosqlite.Connection, Select], Awaitable[tuple[int, list[Stored]]]]
"""(a reader, what to read) -> (the applied index it read at, the objects in id order),
read from one state of the database."""


@dataclass(frozen=True)
class Kind:
    """One object kind: its tables, change kinds, commands, and in-memory state."""

    name: str
    commands: tuple[Handles, ...]
    tables: str = ""
    """Its tables' current shape (CREATE TABLE IF NOT EXISTS ...). Files get them from the
    schema migrations, never from these (schema.py: every voter's schema text is the same);
    a test checks the migrations arrive at exactly these."""
    migrations: tuple[Migration, ...] = ()
    """The schema versions that create or change its tables (numbered after the last one
    anywhere; never edited once released)."""
    query: Query | None = None
    """Its read for the `query` endpoint (QueryRequest.kind = its name), if it has one."""
    filters: tuple[str, ...] = ()
    """The fields its query can select by (`Select.where`)."""
    page: int = 1000
    """Objects one reply holds at most (a reply must stay under the bus's payload limit)."""
    changes: tuple[str, ...] = ()
    """The change kinds its commands record (each a subject token, none reserved: the
    change stream captures exactly the registry's)."""
    load: Callable[[sqlite3.Connection], Any] | None = None
    """Builds the kind's in-memory state from the database (at open and after a snapshot
    is loaded); handlers find it as `txn.memory`."""


class RegistryError(ValueError):
    """The kinds contradict each other or cannot be published."""


@dataclass
class Registry:
    """The kinds a machine applies: every command type to its kind and handler."""

    kinds: tuple[Kind, ...]
    by_type: dict[type, tuple[Kind, Handles]] = field(init=False)
    change_kinds: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.by_type, tags, names, change_kinds = {}, set(), set(), []
        for kind in self.kinds:
            if kind.name in names:
                raise RegistryError(f"two kinds are named {kind.name!r}")
            names.add(kind.name)
            for handles in kind.commands:
                tag = handles.command.__struct_config__.tag
                if not isinstance(tag, str) or tag in tags:
                    raise RegistryError(
                        f"{kind.name}: {handles.command.__name__} needs a tag of its own "
                        f"(it has {tag!r})"
                    )
                tags.add(tag)
                self.by_type[handles.command] = (kind, handles)
            for change in kind.changes:
                if change in change_kinds:
                    raise RegistryError(f"two kinds record changes of kind {change!r}")
                if change in subjects.RESERVED_CHANGE_KINDS:
                    raise RegistryError(
                        f"{kind.name}: change kind {change!r} is reserved "
                        f"(subjects.RESERVED_CHANGE_KINDS {subjects.RESERVED_CHANGE_KINDS})"
                    )
                try:  # it names the subject the relay publishes it on
                    subjects.token(change, "change kind")
                except subjects.SubjectError as e:
                    raise RegistryError(f"{kind.name}: {e}") from None
                change_kinds.append(change)
        self.change_kinds = tuple(change_kinds)

    @property
    def tags(self) -> set[str]:
        return {h.tag for _, h in self.by_type.values()}

    @property
    def tables(self) -> str:
        return "\n".join(kind.tables for kind in self.kinds)

    @property
    def migrations(self) -> list[Migration]:
        """Every kind's schema migrations (schema.py adds the machine's own)."""
        return [migration for kind in self.kinds for migration in kind.migrations]

    def without(self, tag: str) -> Registry:
        """This registry less the command tagged `tag`: what an older voter applies."""
        return Registry(
            tuple(
                replace(k, commands=tuple(h for h in k.commands if h.tag != tag))
                for k in self.kinds
            )
        )

    def named(self, name: str) -> Kind | None:
        return next((kind for kind in self.kinds if kind.name == name), None)

    def handler(self, command: Any) -> tuple[Kind, Handles]:
        return self.by_type[type(command)]

    def refusal(self, proposal: Proposal, ids: bool = True) -> str:
        """Why `proposal` cannot be applied whatever the state ('' if it may be
        proposed): a command this registry does not know, a missing manager's epoch, a
        change id that cannot be a subject token. Checked before proposing and at apply
        (there without `ids`: each change's id is checked as it is recorded)."""
        found = self.by_type.get(type(proposal.command))
        if found is None:
            tag = getattr(type(proposal.command), "__struct_config__", None)
            name = tag.tag if tag else type(proposal.command).__name__
            return f"command {name} is not known to this voter: it needs a newer version"
        _kind, handles = found
        if handles.needs_epoch and not proposal.epoch:
            return (
                f"{handles.tag} is proposed only on the manager's behalf: "
                "it needs the manager's epoch (epoch 0 is refused)"
            )
        for id in handles.ids(proposal.command) if ids else ():
            try:
                subjects.token(id, f"{handles.tag} object id")
            except subjects.SubjectError as e:
                return str(e)
        return ""
