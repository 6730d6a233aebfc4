"""The object kinds of the management database, one module each, and their registry.

To add a kind (say node labels):

1. Its command structs go in colony.shared.messages (tagged, `forbid_unknown_fields`;
   a tag and its meaning never change once released), and into its `Command` union.
2. A module here, `labels.py`, declares `KIND = Kind(...)` (kinds/kind.py): its
   tables' shape (CREATE TABLE IF NOT EXISTS ...) and the schema migration that makes
   them (the next schema version: schema.py), its change kinds (the change stream
   captures the registry's, so nothing else lists them), one `Handles` per
   command (the handler; the ids it records changes for; whether it needs the
   manager's epoch; whether only the consensus service proposes it), and the module's
   reads as plain functions (its `query(reader, id)`, given as `Kind.query`, answers
   the query endpoint for QueryRequest.kind = its name).
3. One line in `KINDS` below.

The machine, the relay and the service need no change: the machine dispatches by
command type through `REGISTRY`, which checks at import that tags and change kinds
are unique and publishable.
"""

from colony.consensus.kinds import (
    instances,
    jobs,
    kv,
    labels,
    leases,
    nodes,
    raft_group,
    retention,
)
from colony.consensus.kinds.kind import Kind, Registry

KINDS: tuple[Kind, ...] = (
    kv.KIND,
    leases.KIND,
    raft_group.KIND,
    retention.KIND,
    labels.KIND,
    nodes.KIND,
    jobs.KIND,
    jobs.VERSIONS,
    instances.KIND,
)

REGISTRY = Registry(KINDS)
"""What this version of the consensus service applies."""
