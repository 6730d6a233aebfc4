"""The management database's schema versions: every file reaches this code's by the same steps.

The version is SQLite's `user_version` (in the file's header: a snapshot, a
SQLite backup, carries it; the SQL dump the digest hashes does not). It counts
the migrations applied: 0 is a file from before versions (or a new, empty one).

When: at open, and when a snapshot is loaded, before anything is applied to
the file. That is deterministic because a migration reads nothing but the file
(no clock, no config), so the same file becomes the same file on every voter
whatever its binary, and it changes the shape of the data, never its meaning:
an entry applied before or after it leaves the same state. (A replicated
"upgrade" command would move every voter at one log index, but it needs every
voter to run the new binary first; with migrations that only reshape, there is
nothing for it to order.) What a new version applies differently (a new
command) is kept apart by its command tag: a voter too old for it stops
(machine.NeedsNewerVersion) instead of diverging.

Every file takes the same path, a new one too: it is created by running
every migration from 0, not from the kinds' current statements, so every
voter's `sqlite_master` holds the same text (the digest dumps it) whether its
file was made yesterday and migrated or made today. The kinds still declare
their tables' current shape (`Kind.tables`), and a test checks the migrations
arrive at exactly it.

A file of a newer version than this code knows is refused (`TooNew`): its
meaning may have changed, and applying to it could corrupt it.

Adding a version: append a `Migration` with the next number, here (the
machine's own tables) or in the kind whose tables it changes
(`Kind.migrations`); never edit one that shipped; and raise
`colony.shared.snapshot.SCHEMA` to it (snapshot headers say it, and a snapshot
of a higher one is refused: a test checks the two agree).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class TooNew(Exception):
    """The file was written by a newer version of Colony than this one."""


class SchemaError(ValueError):
    """The migrations contradict each other (two with one version, a gap)."""


@dataclass(frozen=True)
class Migration:
    version: int
    """The schema version the file is at once this has run (1, 2, 3...)."""
    why: str
    run: Callable[[sqlite3.Connection], None] | str
    """SQL statements, or a function of the connection (inside the migration's
    transaction: it must not commit)."""


def execute(db: sqlite3.Connection, statements: str) -> None:
    """Run `statements` one by one (executescript would commit the open transaction)."""
    pending = ""
    for line in statements.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""
    if pending.strip():
        raise SchemaError(f"an incomplete SQL statement: {pending.strip()[:80]!r}")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


V1_TABLES = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, job TEXT NOT NULL, node TEXT,
    desired TEXT NOT NULL, observed TEXT, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    key TEXT PRIMARY KEY, ciphertext BLOB NOT NULL, version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, ttl REAL NOT NULL,
    granted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    idx INTEGER PRIMARY KEY, log_index INTEGER NOT NULL,
    kind TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, cause TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS proposals (
    id TEXT PRIMARY KEY, log_index INTEGER NOT NULL, outcome BLOB NOT NULL
);
"""
"""The schema as the last code without versions made it (frozen: version 1 is this)."""


def _before_versions(db: sqlite3.Connection) -> None:
    """A file from before versions, whatever its age, to the schema the last of that code
    made (V1_TABLES): what its ad-hoc fixes did at every open, then its statements."""
    if "expires" in _columns(db, "leases"):  # leases before fencing: never written
        db.execute("DROP TABLE leases")
    changes = _columns(db, "changes")
    if changes and "epoch" not in changes:
        db.execute("ALTER TABLE changes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
    if changes and "detail" not in changes:
        db.execute("ALTER TABLE changes ADD COLUMN detail TEXT NOT NULL DEFAULT '{}'")
    execute(db, V1_TABLES)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the schema of the code before versions", _before_versions),
    Migration(
        2,
        "the tables nothing writes go (the issue that writes one creates it again)",
        "DROP TABLE nodes;\nDROP TABLE jobs;\nDROP TABLE instances;\n"
        "DROP TABLE config;\nDROP TABLE secrets;\n",
    ),
    Migration(
        3,
        "each change carries its entry's timestamp (0: recorded before entries had one)",
        "ALTER TABLE changes ADD COLUMN ts REAL NOT NULL DEFAULT 0;\n",
    ),
    Migration(
        4,
        "idempotency records are forgotten by log index (retention.py)",
        "CREATE INDEX proposals_by_log_index ON proposals (log_index);\n",
    ),
)
"""The machine's own migrations; the kinds add theirs (`Kind.migrations`)."""


def migrations(extra: Iterable[Migration] = ()) -> list[Migration]:
    """MIGRATIONS and `extra` (the kinds'), in order; SchemaError unless numbered 1..N."""
    found = sorted([*MIGRATIONS, *extra], key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            taken = [m.why for m in found if m.version == migration.version]
            raise SchemaError(
                f"schema migrations must be numbered 1, 2, 3... without gaps or repeats: "
                f"found {migration.version} ({'; '.join(taken)}) where {expected} belongs"
            )
    return found


def version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def check(db: sqlite3.Connection, where: str, steps: list[Migration]) -> int:
    """The file's version; TooNew if this code does not know it."""
    found, known = version(db), len(steps)
    if found > known:
        raise TooNew(
            f"{where} has schema version {found}, but this version of Colony knows schema "
            f"versions up to {known}: a newer Colony wrote it. Upgrade Colony on this node "
            "to the version the other voters run (the file is left as it is)"
        )
    return found


def migrate(db: sqlite3.Connection, where: str, extra: Iterable[Migration] = ()) -> int:
    """Bring the database on `db` (autocommit mode; `where` names it in errors) to this
    code's schema version, in one transaction; return the version it was at. Raises
    TooNew, with nothing changed, for a file of a newer version."""
    steps = migrations(extra)
    found = check(db, where, steps)
    if found == len(steps):
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in steps[found:]:
            if callable(step.run):
                step.run(db)
            else:
                execute(db, step.run)
        db.execute(f"PRAGMA user_version = {len(steps)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
