"""The labels kind: labels an operator sets on nodes (`colony node label NODE KEY=VALUE`).

Command: NodeLabel (set some labels of one node, remove others; the rest stay),
open to any client. Table `labels`: one row per node ever labelled, its labels
as a JSON object and a version that grows with every change (a node whose last
label was removed keeps its row, with {}, so its version never goes back).
Change kind `label` (id: the node; version: its labels' version; detail: the
labels after the change). Read: `query` (every node's labels, or one's).
"""

from __future__ import annotations

import json
import sqlite3

import aiosqlite

from colony.consensus.changelog import APPLIED_INDEX
from colony.consensus.kinds.kind import Handles, Kind, Select, Txn
from colony.consensus.schema import Migration
from colony.shared.messages import MAX_NODE_LABELS, NodeLabel, Outcome, Stored

TABLES = """
CREATE TABLE IF NOT EXISTS labels (
    node TEXT PRIMARY KEY, labels TEXT NOT NULL, version INTEGER NOT NULL
);
"""


def read(db: sqlite3.Connection, node: str) -> tuple[dict[str, str], int]:
    """(labels, version) of `node`; ({}, 0) if it was never labelled."""
    row = db.execute("SELECT labels, version FROM labels WHERE node = ?", (node,)).fetchone()
    return (json.loads(row[0]), row[1]) if row else ({}, 0)


async def query(reader: aiosqlite.Connection, select: Select) -> tuple[int, list[Stored]]:
    """(applied index, the labels of node `select.id` or, for '', of every node labelled),
    from one state of the database."""
    async with reader.execute(
        f"SELECT {APPLIED_INDEX}, labels.node, labels.labels, labels.version "
        "FROM (SELECT 1) LEFT JOIN labels ON ? IN ('', labels.node) AND labels.node > ? "
        "ORDER BY labels.node LIMIT ?",
        (select.id, select.after, select.limit),
    ) as rows:
        found = await rows.fetchall()
    index = found[0][0] if found else 0
    return index or 0, [
        Stored(id=id, version=version, value=json.loads(labels))
        for _index, id, labels, version in found
        if id is not None
    ]


def label(txn: Txn, command: NodeLabel) -> Outcome:
    labels, version = read(txn.db, command.node)
    after = dict(labels)
    for key, value in command.labels.items():
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
    if after == labels:
        return Outcome(ok=True, version=version)  # nothing changed: no new version
    if len(after) > MAX_NODE_LABELS:
        return Outcome(
            ok=False,
            version=version,
            error=f"node {command.node} would have {len(after)} labels: "
            f"at most {MAX_NODE_LABELS} are allowed",
        )
    after = dict(sorted(after.items()))
    txn.db.execute(
        "INSERT INTO labels (node, labels, version) VALUES (?, ?, ?) "
        "ON CONFLICT (node) DO UPDATE SET labels = excluded.labels, version = excluded.version",
        (command.node, json.dumps(after), version + 1),
    )
    txn.changed("label", command.node, version + 1, {"labels": after})
    return Outcome(ok=True, version=version + 1)


KIND = Kind(
    name="labels",
    tables=TABLES,
    changes=("label",),
    commands=(Handles(NodeLabel, label, ids=lambda c: (c.node,)),),
    migrations=(Migration(5, "node labels (colony node label)", TABLES),),
    query=query,
)
