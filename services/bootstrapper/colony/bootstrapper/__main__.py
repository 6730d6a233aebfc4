"""``python -m colony.bootstrapper --node-dir DIR``: run one node's supervisor."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from colony.bootstrapper.supervisor import Supervisor
from colony.shared import logs
from colony.shared.config import ConfigError, load
from colony.shared.statedir import PRIVATE_UMASK, NodeDir


def main() -> None:
    # The node's state (database, journal, logs) is its owner's only: every file this
    # supervisor and its children (nats-server, services) create is 0600, folders 0700.
    os.umask(PRIVATE_UMASK)
    parser = argparse.ArgumentParser(
        prog="python -m colony.bootstrapper",
        description="Run a node's supervisor: its nats-server and services, kept running.",
        epilog="Normally started by `colony up`; stop it with SIGTERM (`colony down`).",
    )
    parser.add_argument("--node-dir", required=True, help="the node's state folder")
    args = parser.parse_args()
    node_dir = NodeDir(args.node_dir)
    try:
        config = load(node_dir.config_file)
    except ConfigError as e:
        print(f"colony-bootstrapper: {e}", file=sys.stderr)
        sys.exit(2)
    logs.setup(config.log.level, config.log.format, service="supervisor", node=config.node.id)
    asyncio.run(_run(Supervisor(node_dir, config)))


async def _run(supervisor: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, supervisor.stopping.set)
    await supervisor.run()


if __name__ == "__main__":
    main()
