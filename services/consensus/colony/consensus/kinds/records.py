"""What the nodes, jobs and instances kinds share: each row keeps its object's whole record
as JSON (the record struct of colony.shared.messages), beside the columns a read selects
by, and a `version` that grows by one per change.

The record is JSON rather than one column per field because every read returns it
whole (`Stored.value`) and every change carries it whole (`Change.detail`): one
encode per write, one decode per read. msgspec encodes a struct's fields in their
declared order, so the same record is the same text on every voter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import aiosqlite
import msgspec

from colony.consensus.changelog import APPLIED_INDEX
from colony.consensus.kinds.kind import Select
from colony.shared.messages import Stored
from colony.shared.runner import Refused

R = TypeVar("R", bound=msgspec.Struct)

encode = msgspec.json.encode


def decode(text: str | bytes, record: type[R]) -> R:
    decoder = _decoders.get(record)
    if decoder is None:  # one per record type: msgspec looks the type up once
        decoder = _decoders[record] = msgspec.json.Decoder(record)
    return decoder.decode(text)


_decoders: dict[type, msgspec.json.Decoder] = {}


def detail(record: msgspec.Struct, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a change carries: the record as plain JSON values, less `leave_out`."""
    found = msgspec.to_builtins(record)
    for name in leave_out:
        found.pop(name, None)
    return found


def conditions(
    select: Select, id_column: str, columns: Mapping[str, str]
) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) for `select`'s id, paging and `where`;
    `columns` maps each filter to its column (the service checked the filters' names)."""
    found, params = [f"{id_column} > ?"], [select.after]
    if select.id:
        found.append(f"{id_column} = ?")
        params.append(select.id)
    for field, value in sorted(select.where.items()):
        if field not in columns:  # the service refuses these first: a kind's own bug
            raise Refused(400, f"cannot select by {field!r}: only by {', '.join(columns)}")
        found.append(f"{columns[field]} = ?")
        params.append(value)
    return found, params


async def query(
    reader: aiosqlite.Connection,
    table: str,
    id_column: str,
    columns: Mapping[str, str],
    select: Select,
) -> tuple[int, list[Stored]]:
    """(applied index, the records of `table` that `select` asks for, in id order), read
    from one state of the database. `table` has columns `version` and `record`."""
    where, params = conditions(select, f"t.{id_column}", {f: f"t.{c}" for f, c in columns.items()})
    # LEFT JOIN from one row: the applied index comes back even when nothing matches.
    sql = (
        f"SELECT {APPLIED_INDEX}, t.{id_column}, t.version, t.record FROM (SELECT 1) "
        f"LEFT JOIN {table} t ON {' AND '.join(where)} ORDER BY t.{id_column} LIMIT ?"
    )
    async with reader.execute(sql, (*params, select.limit)) as rows:
        found = await rows.fetchall()
    index = found[0][0] if found else 0
    return index or 0, [
        Stored(id=id, version=version, value=msgspec.json.decode(record))
        for _index, id, version, record in found
        if id is not None
    ]
