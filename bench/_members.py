"""A worker process for bench/membership: runs `count` members in one event loop.

    python -m bench._members URL PREFIX COUNT

Each member is a real MembershipService with its own NATS connection; it
runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from colony.membership.service import MembershipService
from colony.shared import logs, runner
from colony.shared.config import Config, NatsSettings, NodeSettings


async def main(url: str, prefix: str, count: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    configs = [
        Config(
            node=NodeSettings(id=f"{prefix}-{i}", dir=f"/tmp/colony-bench-members/{prefix}-{i}"),
            nats=NatsSettings(servers=[url]),
        )
        for i in range(count)
    ]
    await asyncio.gather(*(runner.run(MembershipService(), c, stop=stop) for c in configs))


if __name__ == "__main__":
    logs.setup("error", "json")
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
