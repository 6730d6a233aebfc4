"""`colony console`: the operator console (`colony.console`), a terminal app that follows
the cluster's change stream live and acts on its jobs and nodes.

This module only finds the cluster, as the other verbs do: its NATS servers (the state
dir's nodes, or --server), its voters (the state dir's configs, or asked of the cluster
through --server) and its secret (to verify the changes); then it hands the console a
feed that reads the cluster and the actions that write to it. The console package is
imported only here, when the verb runs: it is an optional part (`colony-cli[console]`)
and Textual is slow to import for the other verbs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from colony.cli.args import nats_url, seconds
from colony.cli.events import cluster_secret
from colony.cli.kv import management, servers_of
from colony.cli.output import err, fail
from colony.shared.statedir import StateDir

if TYPE_CHECKING:
    from colony.console.actions import ClusterActions
    from colony.console.feed import BusFeed

EXAMPLES = """examples:
  colony console                     the local cluster of ./.colony
  colony console --state-dir /tmp/c  the local cluster kept in /tmp/c
  colony console --server nats://10.0.0.5:4222   any cluster, through one of its servers
  colony console --history 5000      replay more of the change stream first

Keys: 1 cluster, 2 jobs, 3 events, 4 logs, ? every key, ctrl+p the actions, q quits."""

HISTORY = 1000
"""Changes replayed from the stream before following it live (default of --history)."""


def add_parser(verb) -> None:
    console = verb(
        "console", "Open the operator console: nodes, jobs, events and logs, live; act on them."
    )
    console.epilog = EXAMPLES
    console.add_argument(
        "--server",
        action="append",
        type=nats_url,
        help="connect through this NATS URL instead of the state dir's nodes (repeatable)",
    )
    console.add_argument(
        "--history",
        type=_history,
        default=HISTORY,
        metavar="N",
        help=f"how many past changes to replay before following live (default: {HISTORY})",
    )
    console.add_argument(
        "--timeout",
        type=seconds,
        default=10.0,
        help="seconds to wait for a server at the start, and for the voters to answer an "
        "action (default: 10)",
    )
    console.set_defaults(func=cmd_console)


def _history(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of changes (0 or more), not {text!r}")
    return value


def cmd_console(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("colony.console") is None:  # an optional part of the CLI
        fail("the console is not installed", "install it: pip install 'colony-cli[console]'")
    from colony.console.app import run_console

    async def console() -> None:
        async with opened(args) as (feed, actions):
            await run_console(feed, actions)

    asyncio.run(console())
    return 0


@contextlib.asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[tuple[BusFeed, ClusterActions]]:
    """The console's feed and actions on the cluster args name (state dir, --server,
    --timeout, --history); the command ends saying why if there is none to open."""
    from colony.console.actions import ClusterActions
    from colony.console.feed import BusFeed

    state = StateDir(args.state_dir)
    try:
        secret = cluster_secret(state)
    except ValueError as e:
        fail(str(e))
    servers = servers_of(args)
    if secret is None:  # said before the console takes the screen
        err.print(
            f"warning: changes are not verified: no cluster secret in {state.path}/ "
            "(a forged change would show as a real one)"
        )
    # the actions' connection must answer now, then reconnects by itself while the
    # console stays open (the feed keeps a connection of its own)
    async with management(args, "colony-console-actions", reconnect=True) as client:
        yield BusFeed(servers, client.voters, secret, history=args.history), ClusterActions(client)
