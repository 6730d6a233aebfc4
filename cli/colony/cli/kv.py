"""`colony kv`: the management database's debug key-value table, through consensus.

Exercises the whole write path (propose -> Raft commit -> apply on every
voter) and the read path (a barrier-backed linearizable read, or `--stale`
from one voter's copy) from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec

from colony.cli.local.write import voters_of
from colony.cli.output import fail, out, print_json
from colony.shared.bus import Bus, NotConnected, connect
from colony.shared.cluster import Cluster
from colony.shared.config import NatsSettings
from colony.shared.management import Management, ManagementError
from colony.shared.messages import KvDelete, KvPut, ObjectId, to_builtins
from colony.shared.statedir import StateDir


def cmd_kv(args: argparse.Namespace) -> int:
    for what in ("key", "value"):
        if problem := not_utf8(getattr(args, what, None)):
            fail(f"{what} is not valid UTF-8 ({problem}); keys and values are text")
    try:  # the voters would refuse it too, with a message meant for programs
        msgspec.convert(args.key, ObjectId)
    except msgspec.ValidationError:
        pattern = ObjectId.__metadata__[0].pattern
        fail(f"key {args.key!r} is not valid: keys must match {pattern}")
    try:
        result = asyncio.run(_run(args))
    except ManagementError as e:
        hint = "is a majority of the voters up? see `colony status`" if e.retryable else None
        fail(str(e), hint)
    if args.json:
        print_json(to_builtins(result))
    elif args.kv_verb == "get":
        if result.value is None:
            fail(f"{args.key!r} is not set", code=1)
        print(result.value)  # the value as it is: not wrapped, styled or cut by a console
    else:
        [outcome] = result.outcomes
        out.print(f"{args.key}: version {outcome.version} (log index {result.index})")
    return 0


def not_utf8(text: str | None) -> str:
    """What in `text` cannot be sent as UTF-8 (an argument from a non-UTF-8 argv), or ''."""
    try:
        (text or "").encode()
    except UnicodeEncodeError as e:
        char = ord(e.object[e.start])
        # Python carries an argv byte that is not UTF-8 as the surrogate U+DC80..U+DCFF
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"U+{char:04X}"
        return f"{what} at character {e.start}"
    return ""


def servers_of(args: argparse.Namespace) -> list[str]:
    """The NATS URLs of the cluster in args.state_dir (or args.server); the command ends
    saying so if there are none."""
    state = StateDir(args.state_dir)
    servers = args.server or [url for n in state.nodes() if (url := n.nats_url())]
    if not servers:
        fail(f"no cluster in {state.path}/", "start one with `colony up`, or pass --server URL")
    return servers


@contextlib.asynccontextmanager
async def cluster_bus(
    args: argparse.Namespace, name: str, *, reconnect: bool = False, wait: float = 0.0
) -> AsyncIterator[Bus]:
    """A NATS connection to the cluster in args.state_dir (or through args.server);
    `name` names it. With `reconnect` (a command that stays open) the first server must
    answer within `wait` seconds, then the connection is retried by itself whenever
    lost; without, a server must answer at once."""
    servers = servers_of(args)
    settings = NatsSettings(servers=servers, connect_timeout=2.0)
    try:
        # (reconnecting, connect() retries until a server answers: `wait` bounds it)
        async with asyncio.timeout(wait if reconnect else None):
            bus = await connect(settings, name, reconnect=reconnect)
    except (TimeoutError, NotConnected):
        within = f" within {wait:g} s" if reconnect else ""
        fail(
            f"no nats server answers at {', '.join(servers)}{within}",
            "is the cluster running? start it with `colony up`",
        )
    try:
        yield bus
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def management(
    args: argparse.Namespace, name: str, *, reconnect: bool = False
) -> AsyncIterator[Management]:
    """A client of the management database of the cluster in args.state_dir (or through
    args.server), retrying for args.timeout; `name` names the NATS connection, which
    `reconnect` keeps retrying whenever lost (see `cluster_bus`)."""
    async with cluster_bus(args, name, reconnect=reconnect, wait=args.timeout) as bus:
        state = StateDir(args.state_dir)
        voters = voters_of(state) if not args.server else await Cluster(bus).nodes()
        if not voters:
            fail("no Raft voters found", "is consensus running? see `colony status`")
        yield Management(bus, voters, timeout=args.timeout)


async def _run(args: argparse.Namespace):
    async with management(args, "colony-kv") as client:
        if args.kv_verb == "get":
            return await client.get(args.key, stale=args.stale)
        if args.kv_verb == "put":
            return await client.propose(KvPut(args.key, args.value))
        return await client.propose(KvDelete(args.key))
