"""The curator as bench/schedule runs it: `python -m colony.curator`, with its proposals
cut to what one log entry may hold.

The curator cuts its writes into proposals of at most `PROPOSAL_BYTES` (400 KiB) and
any number of commands, while the consensus service refuses an entry over
`MAX_ENTRY_BYTES` (256 KiB) or `MAX_BATCH` (512) proposals: placing 10,000 instances at
once, every proposal of placements was refused as invalid and nothing was placed.
Until the curator keeps under both limits itself, this sets its byte limit under the
service's (a no-op once it is) and leaves the rest as it is.

    python -m bench._curator --config FILE
"""

import os
import runpy

from colony.curator import service

MAX_ENTRY_BYTES = 256 * 1024
"""colony.consensus.machine.MAX_ENTRY_BYTES (not imported: the consensus package costs
the curator a slow start)."""
LIMIT = int(os.environ.get("COLONY_BENCH_PROPOSAL_BYTES", MAX_ENTRY_BYTES * 3 // 4))
"""Room for what wraps the commands (each proposal's id and epoch, the entry's fields);
the environment may ask for less, to see what smaller entries do."""

if __name__ == "__main__":
    service.PROPOSAL_BYTES = min(service.PROPOSAL_BYTES, LIMIT)
    runpy.run_module("colony.curator", run_name="__main__", alter_sys=True)
